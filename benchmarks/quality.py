"""Label-limited synthetic quality benchmark: do the semi-supervised trainers beat nnU-Net on the labeled cases alone?

Data: ``nnunetv2_semisup.synthetic`` preset ``cohort`` (three "scanners" with different tissue contrasts, noise, bias
and blur; anatomy varying in position, size, orientation and topology; organ, organ2 and a small lesion; anisotropic
1 x 1 x 3 mm). Per seed: N training cases and a test set; for each label budget L the first L training cases are
labeled and the other N - L unlabeled; the fully supervised reference trains stock nnU-Net on all N with labels.
Rows: nnU-Net labeled-only, nnU-Net fully supervised, and each semi-supervised trainer, with its share of the gap
closed = (method - labeled-only) / (fully supervised - labeled-only), per seed, then mean ± std. The pipeline is the
demo's (:mod:`nnunetv2_semisup.demo`: real nnU-Net CLI, ``*_short`` trainers with the schedule given here, stock
``nnUNetv2_predict --disable_tta``, mm-mode evaluation).

Every (method, budget, seed, schedule) run is cached in ``--cache`` (default ``<work>/runs``) as one JSON file with its
settings: a rerun trains only what is missing (or whose settings changed), so the table can be filled over several
sittings; the published table's files are in ``benchmarks/quality_runs``. ``--convergence``
also trains labeled-only and fully supervised at twice the epochs (seeds ``--convergence-seeds``, labeled-only at
``--convergence-budgets``), to show that the schedule is long enough.

    python benchmarks/quality.py --work ~/quality_work                       # the CPU table (see docs/benchmarks.md)
    python benchmarks/quality.py --device cuda --epochs 1000 --iterations 250 --features 0 --patch 0 0 0

Without ``nnUNet_semisup_segformer`` M&N uses a tiny randomly initialised SegFormer (offline; labelled so in every
output). Writes ``quality_<track>.md`` and ``quality_<track>.png`` per track and ``quality_synthetic.json`` (every
track's runs) to ``--docs``.
"""
import argparse
import json
import math
import os
import platform
import sys
from typing import Optional

import numpy as np

from nnunetv2_semisup import demo

FULL = "fully supervised"
COMPUTE_MATCHED = "labeled-only compute-matched"
SELFTRAIN = "self-training"
NAMES = {demo.BASELINE: "nnU-Net (labeled only)", FULL: "nnU-Net (fully supervised)",
         COMPUTE_MATCHED: "nnU-Net (labeled only, compute-matched)", SELFTRAIN: "self-training (nnU-Net)"}
REFERENCES = (demo.BASELINE, FULL, COMPUTE_MATCHED)   # rows that are baselines, not candidates
DEFAULT_METHODS = ["nnUNetTrainerMeanTeacher_short", "nnUNetTrainerMN_short", "nnUNetTrainerSKCDF_short",
                   "nnUNetTrainerCML_short"]
# Tracks (docs/benchmarks.md): "iid" is the primary one (labeled, unlabeled and test cases from one balanced scanner
# mixture, labeled sets stratified by scanner); "unseen_X" the controlled mixed-domain one (no labeled case from
# scanner X); "random" the issue-14 table (each case's scanner at random; its cache files sit in the cache's root).
TRACKS = {
    # 80 × 50 = 4000 iterations: 2000 failed the doubling criterion (docs/benchmarks.md, i.i.d. calibration)
    "iid": {"preset": "cohort_iid", "unseen": None, "seeds": [0, 1, 2, 3, 4], "budgets": [3], "train_cases": 24,
            "test": 30, "epochs": 80},
    "unseen_A": {"preset": "cohort", "unseen": "A", "seeds": [0, 1, 2], "budgets": [4], "train_cases": 24,
                 "test": 30, "epochs": 80},
    "unseen_C": {"preset": "cohort", "unseen": "C", "seeds": [0, 1, 2], "budgets": [4], "train_cases": 24,
                 "test": 30, "epochs": 80},
    "random": {"preset": "cohort", "unseen": None, "seeds": [0, 1, 2], "budgets": [2], "train_cases": 20, "test": 12,
               "epochs": 80},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--track", choices=list(TRACKS), default="iid",
                   help="iid (default: the primary track), unseen_A / unseen_C (mixed-domain, controlled unseen "
                        "scanner) or random (the first mixed-domain table); sets the defaults of the next five options")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="dataset/run seeds (iid: 0-4)")
    p.add_argument("--budgets", type=int, nargs="+", default=None, help="labeled training cases (iid: 3)")
    p.add_argument("--train-cases", type=int, default=None, help="training cases per seed, labeled + unlabeled "
                                                                 "(iid: 24)")
    p.add_argument("--test", type=int, default=None, help="test cases per seed (iid: 30)")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help=f"candidate rows: trainers, or '{SELFTRAIN}' for nnUNetv2_semisup_selftrain with the "
                        f"labeled-only run as teacher (default: the four methods' *_short trainers)")
    p.add_argument("--shape", type=int, nargs=3, default=None, help="volume shape (default: the preset's)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every row (× --iterations; iid and random: "
                   "80 × 50 = 4000 iterations)")
    p.add_argument("--iterations", type=int, default=50, help="iterations per epoch (default 50)")
    p.add_argument("--features", type=int, nargs="+", default=list(demo.DEFAULT_FEATURES),
                   help="feature cap per stage (0: nnU-Net's plans)")
    p.add_argument("--patch", type=int, nargs=3, default=list(demo.DEFAULT_PATCH),
                   help="patch size cap (0 0 0: nnU-Net's plans)")
    p.add_argument("--convergence", action="store_true",
                   help="also train labeled-only and fully supervised with twice the epochs")
    p.add_argument("--convergence-seeds", "--convergence-seed", dest="convergence_seeds", type=int, nargs="+",
                   default=None, help="seeds of the convergence runs (default: the first of --seeds); with several, "
                                      "the table also gives the mean change per reference")
    p.add_argument("--convergence-budgets", type=int, nargs="+", default=None,
                   help="label budgets of the labeled-only convergence runs (default: the first of --budgets)")
    p.add_argument("--compute-factor", type=int, default=0,
                   help="add the compute-matched labeled-only row: labeled-only with this many times the iterations "
                        "(0: no such row)")
    p.add_argument("--doubling-seeds", type=int, nargs="+", default=[],
                   help="also train every candidate row with twice the epochs on these seeds")
    p.add_argument("--selftrain-args", nargs=argparse.REMAINDER, default=[],
                   help=f"extra arguments of nnUNetv2_semisup_selftrain for the '{SELFTRAIN}' row (last option)")
    p.add_argument("--only-references", action="store_true", help="train labeled-only and fully supervised only")
    p.add_argument("--report-only", action="store_true", help="write the outputs from the cache, train nothing")
    p.add_argument("--work", default="quality_work", help="work folder with the datasets and nnU-Net runs")
    p.add_argument("--cache", default=None, help="folder of the per-run result files (default <work>/runs; the "
                                                 "repository keeps the published table's in benchmarks/quality_runs)")
    p.add_argument("--docs", default="docs", help="where the table, JSON and plot go (default docs/)")
    args = p.parse_args(argv)
    track = TRACKS[args.track]
    for key in ("seeds", "budgets", "train_cases", "test", "epochs"):
        if getattr(args, key) is None:
            setattr(args, key, track[key])
    args.preset, args.unseen = track["preset"], track["unseen"]
    args.features = None if args.features == [0] else args.features
    args.patch = None if args.patch == [0, 0, 0] else args.patch
    if args.shape is None:
        from nnunetv2_semisup.synthetic import PRESETS
        args.shape = list(PRESETS[args.preset][0])
    if any(not 1 <= b < args.train_cases for b in args.budgets):
        p.error(f"--budgets must lie between 1 and --train-cases - 1 ({args.train_cases - 1})")
    args.convergence_seeds = args.convergence_seeds or args.seeds[:1]
    args.convergence_budgets = args.convergence_budgets or args.budgets[:1]
    if any(b not in args.budgets for b in args.convergence_budgets):
        p.error(f"--convergence-budgets {args.convergence_budgets} must be among --budgets {args.budgets}")
    args.cache = args.cache or os.path.join(args.work, "runs")
    # the random track's files sit in the cache's root (its layout predates the tracks), every other track in a sub-folder of its name
    args.cache_dir = args.cache if args.track == "random" else os.path.join(args.cache, args.track)
    return args


# ------------------------------------------------------------------------------------------------- runs and cache
def data_settings(args, seed: int) -> dict:
    from nnunetv2_semisup.synthetic import COHORT_VERSION
    settings = {"preset": args.preset, "generator": COHORT_VERSION, "shape": list(args.shape),
                "train_cases": args.train_cases, "test": args.test, "seed": seed, "features": args.features,
                "patch": args.patch, "device": args.device}
    if args.track != "random":   # (the random track's cached settings predate tracks)
        settings.update(track=args.track, unseen=args.unseen)
    return settings


def run_key(method: str, budget, seed: int, epochs: int, iterations: int) -> str:
    return f"{method}__{'full' if budget is None else f'L{budget}'}__seed{seed}__{epochs}x{iterations}"


def dataset_config(args, seed: int, budget, epochs: int) -> demo.DemoConfig:
    """``budget`` None = all training cases labeled. Longer schedules get their own folder (trainer names repeat)."""
    # every schedule its own folder (trainer names repeat): the tracks name the epochs always, the random track (issue
    # 14, read by benchmarks/pseudo_label_quality.py) only when they differ from --epochs
    tag = ("full" if budget is None else f"L{budget}") + (
        "" if args.track == "random" and epochs == args.epochs else f"_e{epochs}")
    n_l = args.train_cases if budget is None else budget
    root = args.work if args.track == "random" else os.path.join(args.work, args.track)
    return demo.DemoConfig(
        out=os.path.abspath(os.path.join(root, f"seed{seed}_{tag}")), device=args.device, methods=[],
        epochs=epochs, iterations=args.iterations, seed=seed, labeled=n_l, unlabeled=args.train_cases - n_l,
        test=args.test, shape=tuple(args.shape), features=args.features, patch_size=args.patch, preset=args.preset,
        unseen=args.unseen, keep_checkpoint_every=max(1, epochs // 8))   # for benchmarks/pseudo_label_quality.py


def cache_path(args, key: str) -> str:
    return os.path.join(args.cache_dir, key + ".json")


def load_cached(args, key: str, settings: dict):
    try:
        with open(cache_path(args, key)) as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    return entry if entry.get("settings") == settings else None


def save_cached(args, key: str, entry: dict) -> None:
    os.makedirs(args.cache_dir, exist_ok=True)
    tmp = cache_path(args, key) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(entry, f, indent=1)
    os.replace(tmp, cache_path(args, key))


def planned_jobs(args) -> list:
    """(method, budget, seed, epochs) in the order that makes partial tables useful: references first."""
    jobs = []
    for seed in args.seeds:
        jobs.append((FULL, None, seed, args.epochs))
        for budget in args.budgets:
            jobs.append((demo.BASELINE, budget, seed, args.epochs))
    if args.convergence:
        for seed in args.convergence_seeds:
            jobs += [(FULL, None, seed, 2 * args.epochs)]
            jobs += [(demo.BASELINE, b, seed, 2 * args.epochs) for b in args.convergence_budgets]
    if not args.only_references:
        for seed in args.seeds:
            for budget in args.budgets:
                jobs += [(m, budget, seed, args.epochs) for m in args.methods]
    if args.compute_factor > 0:
        jobs += [(COMPUTE_MATCHED, b, seed, args.epochs) for seed in args.seeds for b in args.budgets]
    if not args.only_references:
        for seed in args.doubling_seeds:
            for budget in args.budgets:
                jobs += [(m, budget, seed, 2 * args.epochs) for m in args.methods]
    return jobs


def job_settings(args, job) -> dict:
    method, budget, seed, epochs = job
    settings = {**data_settings(args, seed), "method": method, "budget": budget, "epochs": epochs,
                "iterations": args.iterations}
    if method == COMPUTE_MATCHED:
        settings["compute_factor"] = args.compute_factor
    if method == SELFTRAIN:
        from nnunetv2_semisup.workflows.selftrain_cli import DEFAULT_KEEP, DEFAULT_SCORE
        # the command's defaults are part of the row: a changed default retrains it
        settings["selftrain_args"] = list(args.selftrain_args)
        settings["selftrain_defaults"] = {"keep": DEFAULT_KEEP, "score": DEFAULT_SCORE}
    return settings


def run_job(args, job, prepared: set, log=sys.stdout) -> dict:
    method, budget, seed, epochs = job
    trainer = demo.BASELINE if method in (FULL, COMPUTE_MATCHED, SELFTRAIN) else method
    run_epochs = epochs * args.compute_factor if method == COMPUTE_MATCHED else epochs
    cfg = dataset_config(args, seed, budget, run_epochs)
    cfg.methods = [trainer]
    marker = os.path.join(cfg.out, "prepared.json")
    settings = {**data_settings(args, seed), "labeled": cfg.labeled}
    progress = demo.Progress(3 + 3, log)
    if cfg.out not in prepared:
        try:
            with open(marker) as f:
                ready = json.load(f) == settings
        except (OSError, ValueError):
            ready = False
        if not ready:
            demo.prepare_out_folder(cfg.out)
            for what, fn in demo.dataset_steps(cfg, all_labeled=budget is None):
                progress.step(what, fn)
            with open(marker, "w") as f:
                json.dump(settings, f)
        prepared.add(cfg.out)
    note = demo.segformer_setup(cfg)
    if note:
        print(note, file=log, flush=True)
    results = []
    key = run_key(method, budget, seed, epochs, args.iterations)
    steps = (selftrain_steps(args, cfg, budget, seed, results) if method == SELFTRAIN
             else demo.method_steps(cfg, trainer, results, display_name=NAMES.get(method)))
    for what, fn in steps:
        progress.step(f"{what} [{key}]", fn)
    r = results[0]
    scanners = scanner_breakdown(cfg.evaluation(r.method if method == SELFTRAIN else trainer), cfg.raw)
    segformer = os.environ.get("nnUNet_semisup_segformer") if "MN" in trainer else None
    return {"method": method, "trainer": trainer, "track": args.track, "budget": budget, "seed": seed,
            "epochs": epochs, "iterations_per_epoch": args.iterations, "iterations": run_epochs * args.iterations,
            **({"compute_factor": args.compute_factor} if method == COMPUTE_MATCHED else {}), "dice": r.dice,
            "hd95": r.hd95, "per_label_dice": r.per_label_dice, "per_label_hd95": r.per_label_hd95,
            "train_seconds": r.train_seconds, "seconds": r.seconds, **scanners,
            "segformer": "tiny random (offline)" if segformer and "tiny_segformer" in segformer else segformer}


def selftrain_steps(args, cfg: demo.DemoConfig, budget, seed, results: list) -> list:
    """The self-training row: ``nnUNetv2_semisup_selftrain`` in the budget's dataset folder, whose labeled-only run
    (same seed, same schedule) is the teacher, then stock prediction of the test cases with the student. Its
    training time = the teacher's (from the labeled-only row when that model is reused) + the command's."""
    import time
    state = {}
    student_id = cfg.dataset_id + 1
    name = "selftrain"
    teacher_final = os.path.join(cfg.results, cfg.dataset_name, f"{demo.BASELINE}__nnUNetPlans__3d_fullres",
                                 "fold_all", "checkpoint_final.pth")

    def train():
        reused = os.path.isfile(teacher_final)
        t0 = time.time()
        demo.run_command(["nnUNetv2_semisup_selftrain", "-d", cfg.dataset_id, "-o", student_id, "-tr", demo.BASELINE,
                          "--student-trainer", demo.BASELINE, "-device", cfg.device, "-np", 1, "--quiet"]
                         + list(args.selftrain_args), demo.build_env(cfg), os.path.join(cfg.logs, "selftrain.log"))
        teacher = 0.0
        if reused:
            cached = load_cached(args, run_key(demo.BASELINE, budget, seed, cfg.epochs, args.iterations),
                                 job_settings(args, (demo.BASELINE, budget, seed, cfg.epochs)))
            teacher = cached["result"]["train_seconds"] if cached else math.nan
        state["train"], state["t0"] = time.time() - t0 + teacher, t0

    def predict():
        pred = cfg.predictions(name)
        import shutil
        shutil.rmtree(pred, ignore_errors=True)
        demo.run_command(["nnUNetv2_predict", "-i", os.path.join(cfg.raw_dataset, "imagesTs"), "-o", pred,
                          "-d", student_id, "-c", demo.CONFIGURATION, "-f", "all", "-tr", demo.BASELINE,
                          "-device", cfg.device, "--disable_tta", "-npp", 1, "-nps", 1],
                         demo.build_env(cfg), os.path.join(cfg.logs, "predict_selftrain.log"))

    def evaluate():
        r = demo.evaluate_method(cfg, name, name, state["train"], time.time() - state["t0"])
        r.display_name = NAMES[SELFTRAIN]
        results.append(r)

    return [(f"self-training: nnUNetv2_semisup_selftrain -d {cfg.dataset_id} -o {student_id} -tr {demo.BASELINE} "
             f"--student-trainer {demo.BASELINE} {' '.join(args.selftrain_args)}", train),
            (f"predict the {cfg.test} test cases with the student (-d {student_id})", predict),
            ("evaluate self-training", evaluate)]


def scanner_breakdown(evaluation_folder: str, raw_folder: str) -> dict:
    """Dice per "scanner" of the cohort preset, to tell appearance the labeled cases saw from appearance they did not:
    ``per_scanner_dice`` {scanner: {"dice": mean over the test (case, label) pairs with a Dice, "n": their number}}
    and ``train_case_scanners`` (the scanner of each training case, in case order: the first L are a budget's labeled
    ones). Empty for datasets without scanners."""
    import csv
    import glob
    from nnunetv2_semisup.synthetic import cohort_scanners
    names = [p["name"] for p in cohort_scanners()]
    found = glob.glob(os.path.join(raw_folder, "*", "dataset.json"))
    if not found:
        return {}
    with open(found[0]) as f:
        case_scanner = json.load(f).get("semisup", {}).get("case_scanner")
    if not case_scanner:
        return {}
    with open(os.path.join(evaluation_folder, "metrics_per_case.csv")) as f:
        rows = list(csv.DictReader(f))
    test_cases = {r["case"] for r in rows}
    per = {}
    for r in rows:
        dice = float(r["dice"])
        if not math.isnan(dice):
            per.setdefault(names[case_scanner[r["case"]]], []).append(dice)
    train = sorted(c for c in case_scanner if c not in test_cases)
    return {"per_scanner_dice": {k: {"dice": float(np.mean(v)), "n": len(v)} for k, v in sorted(per.items())},
            "train_case_scanners": [names[case_scanner[c]] for c in train]}


def seen_unseen_dice(run: dict, labeled_scanners) -> tuple:
    """(Dice on test cases of scanners among ``labeled_scanners``, Dice on the others), pooled over (case, label)
    pairs; NaN where a run has no breakdown or a side has no test case."""
    per = run.get("per_scanner_dice") or {}
    out = []
    for seen in (True, False):
        parts = [v for k, v in per.items() if (k in labeled_scanners) == seen]
        n = sum(v["n"] for v in parts)
        out.append(sum(v["dice"] * v["n"] for v in parts) / n if n else math.nan)
    return tuple(out)


# ------------------------------------------------------------------------------------------------- summary
def _ms(values):
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
    return (float(v.mean()), float(v.std())) if len(v) else (math.nan, math.nan)


def summarize(args, rows: list) -> dict:
    """Per budget: one entry per method with mean ± std (over seeds, ddof 0) of Dice, HD95, per-class Dice and the
    gap share (computed per seed against that seed's references)."""
    main = [r for r in rows if r["epochs"] == args.epochs]
    full = {r["seed"]: r for r in main if r["method"] == FULL}
    out = {}
    for budget in args.budgets:
        base = {r["seed"]: r for r in main if r["method"] == demo.BASELINE and r["budget"] == budget}
        entries = []
        # the compute-matched baseline is a row of the table too: how much of the gap more compute alone closes
        for method in [demo.BASELINE, COMPUTE_MATCHED, FULL] + list(args.methods):
            runs = [r for r in main if r["method"] == method and (method == FULL or r["budget"] == budget)]
            if not runs:
                continue
            shares = []
            for r in runs:
                s = r["seed"]
                if s in base and s in full and full[s]["dice"] - base[s]["dice"] > 1e-6:
                    shares.append((r["dice"] - base[s]["dice"]) / (full[s]["dice"] - base[s]["dice"]))
            labels = list(dict.fromkeys(k for r in runs for k in r["per_label_dice"]))
            # test cases of the scanners this budget's labeled cases come from vs the others (same images per seed)
            split = [seen_unseen_dice(r, set(r.get("train_case_scanners", [])[:budget])) for r in runs]
            name = NAMES.get(method, demo.METHOD_NAMES.get(method, method))
            if method == COMPUTE_MATCHED:
                name = f"nnU-Net (labeled only, {args.compute_factor}x iterations: compute-matched)"
            entries.append({
                "method": method, "name": name, "n": len(runs),
                "seeds": sorted(r["seed"] for r in runs), "dice": _ms(r["dice"] for r in runs),
                "hd95": _ms(r["hd95"] for r in runs), "gap_share": _ms(shares), "gap_share_per_seed": shares,
                "dice_seen_scanners": _ms(x[0] for x in split), "dice_unseen_scanners": _ms(x[1] for x in split),
                "per_label_dice": {k: _ms(r["per_label_dice"].get(k) for r in runs) for k in labels},
                "per_label_hd95": {k: _ms(r["per_label_hd95"].get(k) for r in runs) for k in labels},
                "train_seconds": _ms(r["train_seconds"] for r in runs),
                "segformer": next((r["segformer"] for r in runs if r.get("segformer")), None)})
        out[str(budget)] = entries
    return out


def convergence(args, rows: list) -> list:
    out = []
    for r2 in (r for r in rows if r["epochs"] == 2 * args.epochs):
        r1 = next((r for r in rows if r["epochs"] == args.epochs and r["method"] == r2["method"]
                   and r["budget"] == r2["budget"] and r["seed"] == r2["seed"]), None)
        if r1 is not None:
            out.append({"method": r2["method"], "budget": r2["budget"], "seed": r2["seed"],
                        "iterations": [r1["iterations"], r2["iterations"]], "dice": [r1["dice"], r2["dice"]],
                        "change": r2["dice"] - r1["dice"]})
    return out


# ------------------------------------------------------------------------------------------------- decision rule
# docs/benchmarks.md: a row with fewer seeds than its track's protocol (i.i.d. 5; mixed-domain 3) gets no verdict
def min_seeds_for_verdict(args) -> int:
    return len(TRACKS[args.track]["seeds"])


def t_interval(values) -> dict:
    """Mean and 95 % t-interval mean ± t(0.975, n − 1) · sd / √n (sd with ddof 1); NaN bounds for n < 2."""
    from scipy import stats
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
    n = len(v)
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    if n < 2:
        return {"mean": float(v[0]), "low": math.nan, "high": math.nan, "n": 1}
    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return {"mean": float(v.mean()), "low": float(v.mean()) - half, "high": float(v.mean()) + half, "n": n}


def paired(rows_by_seed: dict, base_by_seed: dict, key: str = "dice") -> dict:
    """Paired differences row − baseline on the seeds both have: t-interval, wins, the per-seed values."""
    seeds = sorted(set(rows_by_seed) & set(base_by_seed))
    deltas = [rows_by_seed[s][key] - base_by_seed[s][key] for s in seeds]
    return {**t_interval(deltas), "seeds": seeds, "per_seed": deltas,
            "wins": int(sum(d > 0 for d in deltas))}


def verdicts(args, rows: list) -> dict:
    """Per budget, per candidate row: the paired comparisons of the decision rule and the verdict."""
    main = [r for r in rows if r["epochs"] == args.epochs]
    by = lambda method, budget: {r["seed"]: r for r in main if r["method"] == method  # noqa: E731
                                 and (method == FULL or r["budget"] == budget) and r["seed"] in args.seeds}
    out, min_seeds = {}, min_seeds_for_verdict(args)
    for budget in args.budgets:
        lo, cm, st, full = (by(demo.BASELINE, budget), by(COMPUTE_MATCHED, budget), by(SELFTRAIN, budget),
                            by(FULL, None))
        entries = []
        for method in ([SELFTRAIN] if SELFTRAIN not in args.methods else []) + list(args.methods):
            runs = by(method, budget)
            if not runs:
                continue
            shares = [(runs[s]["dice"] - lo[s]["dice"]) / (full[s]["dice"] - lo[s]["dice"])
                      for s in sorted(runs) if s in lo and s in full and full[s]["dice"] - lo[s]["dice"] > 1e-6]
            e = {"method": method, "name": NAMES.get(method, demo.METHOD_NAMES.get(method, method)),
                 "seeds": sorted(runs), "vs_labeled_only": paired(runs, lo), "vs_compute_matched": paired(runs, cm),
                 "vs_selftrain": paired(runs, st) if method != SELFTRAIN else None,
                 "gap_share": t_interval(shares),
                 "hd95": float(np.mean([runs[s]["hd95"] for s in runs])),
                 "hd95_labeled_only": float(np.mean([lo[s]["hd95"] for s in runs if s in lo])) if lo else math.nan}
            complete = (len(runs) >= min_seeds and e["vs_compute_matched"]["n"] == len(runs)
                        and (method == SELFTRAIN or e["vs_selftrain"]["n"] == len(runs)))
            # the rule needs every condition: one that already fails on all of the row's seeds (>= min_seeds) decides it,
            # whatever the baseline that is still missing will show
            failing = []
            if len(runs) >= min_seeds:
                for key, why in (("vs_compute_matched", "interval vs compute-matched labeled-only not above 0"),
                                 ("vs_selftrain", "interval vs self-training not above 0")):
                    d = e[key]
                    if d is not None and d["n"] == len(runs) and not d["low"] > 0:
                        failing.append(why)
                if e["hd95"] > e["hd95_labeled_only"]:
                    failing.append("mean HD95 worse than labeled-only")
            if not complete and failing:
                e["beats_nnunet"] = False
                e["verdict"] = ("does not beat nnU-Net: " + "; ".join(failing)
                                + " (decided before every baseline has its seeds: no missing run can change it)")
            elif not complete:
                e["verdict"] = f"no verdict (fewer than {min_seeds} seeds with both baselines)"
                e["beats_nnunet"] = None
            else:
                c1 = e["vs_compute_matched"]["low"] > 0
                c2 = method == SELFTRAIN or e["vs_selftrain"]["low"] > 0
                c3 = not e["hd95"] > e["hd95_labeled_only"]
                e["beats_nnunet"] = bool(c1 and c2 and c3)
                failed = [why for ok, why in ((c1, "interval vs compute-matched labeled-only not above 0"),
                                              (c2, "interval vs self-training not above 0"),
                                              (c3, "mean HD95 worse than labeled-only")) if not ok]
                e["verdict"] = "beats nnU-Net" if e["beats_nnunet"] else "does not beat nnU-Net: " + "; ".join(failed)
            entries.append(e)
        out[str(budget)] = entries
    return out


def _ci(d: Optional[dict], digits: int = 3) -> str:
    if not d or d["n"] == 0:
        return "—"
    if math.isnan(d["low"]):
        return f"{d['mean']:+.{digits}f} (n = {d['n']})"
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def verdict_markdown(args, verdict: dict) -> str:
    parts = []
    for budget, entries in verdict.items():
        if not entries:
            continue
        lines = [f"**Decision rule, {budget} labeled** (paired on the seed; mean Δ Dice [95 % t-interval]; wins = seeds "
                 f"with Δ > 0)", "",
                 "| row | Δ vs compute-matched labeled-only | wins | Δ vs self-training | wins | Δ vs labeled-only | "
                 "gap share | HD95 mm (labeled-only) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for e in entries:
            cm, st = e["vs_compute_matched"], e["vs_selftrain"]
            lines.append(" | ".join([
                f"| {e['name']}", _ci(cm), f"{cm['wins']}/{cm['n']}" if cm["n"] else "—",
                _ci(st) if st else "(is the baseline)", f"{st['wins']}/{st['n']}" if st and st["n"] else "—",
                _ci(e["vs_labeled_only"]), _ci(e["gap_share"], 2),
                f"{e['hd95']:.1f} ({e['hd95_labeled_only']:.1f})", f"{e['verdict']} |"]))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


CONVERGED = 0.02  # doubling the iterations moves a converged reference by less than this


def convergence_means(conv: list) -> list:
    """Per reference (method, budget): mean ± std (ddof 0) of the doubling change over the seeds that have it."""
    out = {}
    for c in conv:
        out.setdefault((c["method"], c["budget"]), []).append(c)
    return [{"method": m, "budget": b, "seeds": [c["seed"] for c in cs], "change": _ms(c["change"] for c in cs),
             "converged": abs(float(np.mean([c["change"] for c in cs]))) < CONVERGED} for (m, b), cs in out.items()]


def _pm(ms, digits=3):
    return "n/a" if math.isnan(ms[0]) else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def markdown(args, summary: dict, conv: list) -> str:
    parts = []
    for budget, entries in summary.items():
        labels = list(dict.fromkeys(k for e in entries for k in e["per_label_dice"]))
        head = (["method", "Dice (mean fg)", "gap closed", "Dice seen / unseen scanners", "HD95 mm (mean fg)"]
                + [f"Dice {k}" for k in labels]
                + [f"HD95 {k}" for k in labels] + ["train time", "seeds"])
        lines = [f"**{budget} labeled + {args.train_cases - int(budget)} unlabeled training cases** (fully "
                 f"supervised: all {args.train_cases} labeled)", "", "| " + " | ".join(head) + " |",
                 "|" + "---|" * len(head)]
        for e in entries:
            name = e["name"] + (" (tiny random SegFormer)" if e.get("segformer") == "tiny random (offline)" else "")
            share = "—" if e["method"] in (demo.BASELINE, FULL) else _pm(e["gap_share"], 2)
            seen_unseen = " / ".join("n/a" if math.isnan(e[k][0]) else f"{e[k][0]:.3f}"
                                     for k in ("dice_seen_scanners", "dice_unseen_scanners"))
            cells = [name, _pm(e["dice"]), share, seen_unseen, _pm(e["hd95"], 1)]
            cells += [_pm(e["per_label_dice"][k]) for k in labels] + [_pm(e["per_label_hd95"][k], 1) for k in labels]
            cells += [demo.format_seconds(e["train_seconds"][0]), ",".join(map(str, e["seeds"]))]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    if conv:
        lines = ["**Convergence** (same seed, twice the epochs)", "", "| run | iterations | Dice | change |",
                 "|---|---|---|---|"]
        for c in conv:
            name = NAMES.get(c["method"], c["method"]) + ("" if c["budget"] is None else f", {c['budget']} labeled")
            lines.append(f"| {name}, seed {c['seed']} | {c['iterations'][0]} → {c['iterations'][1]} | "
                         f"{c['dice'][0]:.3f} → {c['dice'][1]:.3f} | {c['change']:+.3f} |")
        for m in (m for m in convergence_means(conv) if len(m["seeds"]) > 1):
            name = NAMES.get(m["method"], m["method"]) + ("" if m["budget"] is None else f", {m['budget']} labeled")
            verdict = "< 0.02" if m["converged"] else "≥ 0.02: not converged"
            lines.append(f"| **{name}, mean of seeds {','.join(map(str, m['seeds']))}** | × 2 | | "
                         f"**{m['change'][0]:+.3f} ± {m['change'][1]:.3f}** ({verdict}) |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot(summary: dict, rows: list, epochs: int, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    budgets = list(summary)
    fig, axes = plt.subplots(1, 2 * len(budgets), figsize=(7 * len(budgets) * 2, 4.8), squeeze=False)
    for b, budget in enumerate(budgets):
        entries = summary[budget]
        ax = axes[0, 2 * b]
        x = np.arange(len(entries))
        ax.bar(x, [e["dice"][0] for e in entries], yerr=[e["dice"][1] for e in entries], capsize=4, color="#8fb3d9")
        for i, e in enumerate(entries):
            pts = [r["dice"] for r in rows if r["method"] == e["method"] and r["seed"] in e["seeds"]
                   and (e["method"] == FULL or r["budget"] == int(budget)) and r["epochs"] == epochs]
            ax.scatter([i] * len(pts), pts, color="k", s=12, zorder=3)
        ax.set_xticks(x, [e["name"] for e in entries], rotation=25, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice (mean over organ, organ2, lesion)")
        ax.set_title(f"{budget} labeled: Dice (bars mean ± std, dots seeds)")
        ax = axes[0, 2 * b + 1]
        methods = [e for e in entries if e["method"] not in (demo.BASELINE, FULL)]
        x = np.arange(len(methods))
        ax.bar(x, [e["gap_share"][0] for e in methods], yerr=[e["gap_share"][1] for e in methods], capsize=4,
               color="#d9a38f")
        for i, e in enumerate(methods):
            ax.scatter([i] * len(e["gap_share_per_seed"]), e["gap_share_per_seed"], color="k", s=12, zorder=3)
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(1, color="k", lw=0.8, ls="--")
        ax.set_xticks(x, [e["name"] for e in methods], rotation=25, ha="right")
        ax.set_ylabel("share of the gap closed")
        ax.set_title(f"{budget} labeled: (method − labeled-only) / (fully sup. − labeled-only)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(args, rows: list, seconds: float, complete: bool, argv=None) -> str:
    summary = summarize(args, rows)
    conv = convergence(args, rows)
    verdict = verdicts(args, rows)
    os.makedirs(args.docs, exist_ok=True)
    command = "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    settings = (f"preset {args.preset}, shape {'x'.join(map(str, args.shape))}; seeds {args.seeds}; "
                f"{args.train_cases} training cases per seed (label budgets {args.budgets}), {args.test} test cases; "
                f"plans' features capped at {args.features}, patch at {args.patch}; `*_short` trainers, {args.epochs} "
                f"epochs x {args.iterations} iterations, fold `all`, device {args.device}; mm-mode evaluation.")
    text = (f"# Quality (synthetic, label-limited), track {args.track}\n\nCommand: `{command}`\n\n{settings}\n\n"
            + ("" if complete else "**Incomplete: rows missing below have not been trained yet.**\n\n")
            + f"Machine: {platform.platform()}, {os.cpu_count()} CPU(s); training time in the cache "
              f"{demo.format_seconds(seconds)}.\n\n{markdown(args, summary, conv)}\n\n"
            + (f"{verdict_markdown(args, verdict)}\n\n" if any(verdict.values()) else "")
            + f"![Dice and gap share](quality_{args.track}.png)\n")
    with open(os.path.join(args.docs, f"quality_{args.track}.md"), "w") as f:
        f.write(text)
    write_track_json(os.path.join(args.docs, "quality_synthetic.json"), args.track, {
        "command": command, "settings": settings, "complete": complete, "summary": summary, "convergence": conv,
        "convergence_mean": convergence_means(conv), "verdicts": verdict, "runs": rows})
    if any(summary.values()):
        plot(summary, rows, args.epochs, os.path.join(args.docs, f"quality_{args.track}.png"))
    return text


def write_track_json(path: str, track: str, entry: dict) -> None:
    """``{"tracks": {track: entry}}``: one file for every track; writing one track keeps the others."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {}
    if "tracks" not in data:   # the single-track layout (before the tracks) held the random track
        data = {"tracks": {"random": data} if data else {}}
    data["tracks"][track] = entry
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def lock_work_folder(work: str):
    """One benchmark process per work folder: two would train into the same nnU-Net folders."""
    import fcntl
    os.makedirs(work, exist_ok=True)
    handle = open(os.path.join(work, ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(f"ERROR: another benchmarks/quality.py process is using --work {work}; wait for it or choose "
                 f"another folder")
    return handle


def main(argv=None) -> int:
    args = parse_args(argv)
    args.lock = lock_work_folder(args.work)  # held until the process exits
    jobs = planned_jobs(args)
    rows, prepared, failed = [], set(), []
    for k, job in enumerate(jobs, 1):
        method, budget, seed, epochs = job
        key = run_key(method, budget, seed, epochs, args.iterations)
        settings = job_settings(args, job)
        cached = load_cached(args, key, settings)
        if cached is None and not args.report_only:
            print(f"=== run {k}/{len(jobs)}: {key}", flush=True)
            try:
                cached = {"settings": settings, "result": run_job(args, job, prepared)}
            except demo.DemoStepError as e:
                print(f"FAILED {key}: {e}", flush=True)
                failed.append(key)
                continue
            save_cached(args, key, cached)
        if cached is not None:
            rows.append(cached["result"])
            write_outputs(args, rows, sum(r["train_seconds"] for r in rows), False, argv)
    complete = len(rows) == len(jobs)
    print("\n" + write_outputs(args, rows, sum(r["train_seconds"] for r in rows), complete, argv))
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
