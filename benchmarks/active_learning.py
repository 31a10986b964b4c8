"""Does ``nnUNetv2_semisup_rank_unlabeled`` pick better scans to label than chance?

On the i.i.d. synthetic track (``cohort_iid``: 24 training cases, 30 test cases, labeled sets stratified by scanner),
per seed: labeled-only nnU-Net (``nnUNetTrainer_semisupShort``, the quality benchmark's plans and schedule) on the
first ``--start`` cases; the other training cases are the pool. The pool is ranked with that model; then ``--add``
cases are labeled (their true labels come from the generator) chosen (a) by the ranking, (b) at random (a seeded draw
per seed), (c) the lowest-ranked, and labeled-only nnU-Net is retrained on each enlarged set and evaluated on the
test cases. Reported: mean foreground Dice per strategy and the paired differences ranking − random and
ranking − lowest with their 95 % t-intervals over the seeds.

    python benchmarks/active_learning.py --work ~/al_work --docs docs            # 5 seeds, 3 + 3 cases

The labeled-only model trained without mirroring (the short schedule's), so the ranking uses one view: ``--score``
(default entropy; the command's default ``combined`` then orders by entropy too). Every (seed, strategy) result is
cached in ``<work>/cache/`` so a rerun trains only what is missing. Writes ``active_learning.{json,md}`` to
``--docs``.
"""
import argparse
import csv
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality as q  # noqa: E402

from nnunetv2_semisup import demo  # noqa: E402

STRATEGIES = ("ranking", "random", "lowest")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--start", type=int, default=3, help="labeled cases to start from (default 3: one per scanner)")
    p.add_argument("--add", type=int, default=3, help="cases to label next (default 3)")
    p.add_argument("--score", default="entropy", help="rank_unlabeled's --score (default entropy)")
    p.add_argument("--epochs", type=int, default=None, help="default: the i.i.d. track's")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", required=True)
    p.add_argument("--docs", default="docs")
    return p.parse_args(argv)


def make_raw(out: str, truth: str, labeled, unlabeled, test_cases) -> None:
    """A raw dataset from the fully labeled truth dataset: ``labeled`` with labels, ``unlabeled`` in
    imagesUnlabeled, the test cases as they are (written to a temporary folder, then moved)."""
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(tmp, sub))
    for c in labeled:
        shutil.copy(os.path.join(truth, "imagesTr", f"{c}_0000.nii.gz"), os.path.join(tmp, "imagesTr"))
        shutil.copy(os.path.join(truth, "labelsTr", f"{c}.nii.gz"), os.path.join(tmp, "labelsTr"))
    for c in unlabeled:
        shutil.copy(os.path.join(truth, "imagesTr", f"{c}_0000.nii.gz"), os.path.join(tmp, "imagesUnlabeled"))
    for c in test_cases:
        shutil.copy(os.path.join(truth, "imagesTs", f"{c}_0000.nii.gz"), os.path.join(tmp, "imagesTs"))
        shutil.copy(os.path.join(truth, "labelsTs", f"{c}.nii.gz"), os.path.join(tmp, "labelsTs"))
    with open(os.path.join(truth, "dataset.json")) as f:
        ds = json.load(f)
    ds["numTraining"] = len(labeled)
    ds["semisup"] = dict(ds["semisup"], num_labeled=len(labeled), num_unlabeled=len(unlabeled))
    with open(os.path.join(tmp, "dataset.json"), "w") as f:
        json.dump(ds, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def train_and_evaluate(cfg: demo.DemoConfig, log) -> dict:
    """Plan (plans shrunk as in the quality benchmark), train labeled-only, predict and evaluate the test cases."""
    steps = demo.dataset_steps(cfg)[1:2]   # plan and preprocess (the dataset itself is already written)
    results = []
    steps += demo.method_steps(cfg, demo.BASELINE, results)
    progress = demo.Progress(len(steps), log)
    for what, fn in steps:
        progress.step(what, fn)
    r = results[0]
    return {"dice": r.dice, "hd95": r.hd95, "train_seconds": r.train_seconds}


def run_seed(args, seed: int, log=sys.stdout) -> dict:
    qa = q.parse_args(["--track", "iid", "--seeds", str(seed), "--budgets", str(args.start), "--work", args.work,
                       "--iterations", str(args.iterations), "--device", args.device]
                      + (["--epochs", str(args.epochs)] if args.epochs else []))
    cache = os.path.join(args.work, "cache", f"seed{seed}_L{args.start}+{args.add}_{qa.epochs}x{args.iterations}"
                                             f"_{args.score}.json")
    if os.path.isfile(cache):
        with open(cache) as f:
            return json.load(f)
    from nnunetv2_semisup.synthetic import make_synthetic_dataset
    base = os.path.join(args.work, f"seed{seed}")
    truth = os.path.join(base, "truth")
    if not os.path.isfile(os.path.join(truth, "dataset.json")):
        shutil.rmtree(truth, ignore_errors=True)
        make_synthetic_dataset(truth, qa.train_cases, 0, qa.test, seed, tuple(qa.shape), preset=qa.preset)
    train = [f"syn_{i:03d}" for i in range(qa.train_cases)]
    test = [f"syn_{i:03d}" for i in range(qa.train_cases, qa.train_cases + qa.test)]
    start, pool = train[:args.start], train[args.start:]
    partial = cache + ".partial"  # the stages done so far: an interrupted seed resumes after its last finished stage
    if os.path.isfile(partial):
        with open(partial) as f:
            out = json.load(f)
    else:
        out = {"seed": seed, "start": start}

    def save(path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(path + ".tmp", path)

    def config(tag: str, dataset_id: int, n_labeled: int) -> demo.DemoConfig:
        return demo.DemoConfig(out=os.path.join(base, tag), device=args.device, methods=[demo.BASELINE],
                               epochs=qa.epochs, iterations=args.iterations, seed=seed, labeled=n_labeled,
                               unlabeled=qa.train_cases - n_labeled, test=qa.test, shape=tuple(qa.shape),
                               features=qa.features, patch_size=qa.patch, preset=qa.preset, dataset_id=dataset_id,
                               dataset_name=f"Dataset{dataset_id}_AL{tag}")

    cfg0 = config("start", 901, args.start)
    if "start_result" not in out:
        demo.prepare_out_folder(cfg0.out)
        make_raw(cfg0.raw_dataset, truth, start, pool, test)
        out["start_result"] = train_and_evaluate(cfg0, log)
        save(partial)
    if "order" not in out:
        rank_dir = os.path.join(base, "rank_unlabeled")  # not a strategy's folder name
        t0 = time.time()
        demo.run_command(["nnUNetv2_semisup_rank_unlabeled", "-d", cfg0.dataset_id, "-tr", demo.BASELINE, "-o",
                          rank_dir, "--score", args.score, "-device", args.device, "--overwrite", "--quiet"],
                         demo.build_env(cfg0), os.path.join(base, "rank.log"))
        out["rank_seconds"] = time.time() - t0
        with open(os.path.join(rank_dir, "ranking.csv")) as f:
            out["order"] = [r["case"] for r in csv.DictReader(f)]
        save(partial)
    order = out["order"]
    picks = {"ranking": order[:args.add], "lowest": order[-args.add:],
             "random": list(np.random.default_rng(1000 + seed).choice(pool, args.add, replace=False))}
    out["picks"] = picks
    for k, strategy in enumerate(STRATEGIES):
        if strategy in out:
            continue
        labeled = start + picks[strategy]
        cfg = config(strategy, 902 + k, len(labeled))
        demo.prepare_out_folder(cfg.out)
        make_raw(cfg.raw_dataset, truth, labeled, [c for c in pool if c not in labeled], test)
        out[strategy] = train_and_evaluate(cfg, log)
        save(partial)
    save(cache)
    os.remove(partial)
    return out


def summarize(results) -> dict:
    by = {s: {r["seed"]: r[s] for r in results} for s in STRATEGIES}
    summary = {s: q.t_interval([r[s]["dice"] for r in results]) for s in STRATEGIES}
    summary["start"] = q.t_interval([r["start_result"]["dice"] for r in results])
    summary["ranking_minus_random"] = q.paired(by["ranking"], by["random"])
    summary["ranking_minus_lowest"] = q.paired(by["ranking"], by["lowest"])
    return summary


def markdown(args, results, summary) -> str:
    lines = [f"| seed | start ({args.start} labeled) | + {args.add} by the ranking | + {args.add} at random | "
             f"+ {args.add} lowest-ranked | picked by the ranking |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['seed']} | {r['start_result']['dice']:.3f} | {r['ranking']['dice']:.3f} | "
                     f"{r['random']['dice']:.3f} | {r['lowest']['dice']:.3f} | {', '.join(r['picks']['ranking'])} |")
    lines.append(f"| **mean** | {summary['start']['mean']:.3f} | {summary['ranking']['mean']:.3f} | "
                 f"{summary['random']['mean']:.3f} | {summary['lowest']['mean']:.3f} | |")
    for k, what in (("ranking_minus_random", "ranking − random"), ("ranking_minus_lowest", "ranking − lowest")):
        d = summary[k]
        lines.append(f"\n{what}: {q._ci(d)} (wins {d['wins']}/{d['n']})")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    results = [run_seed(args, s) for s in args.seeds]
    summary = summarize(results)
    text = markdown(args, results, summary)
    os.makedirs(args.docs, exist_ok=True)
    with open(os.path.join(args.docs, "active_learning.json"), "w") as f:
        json.dump({"command": "python benchmarks/active_learning.py " + " ".join(sys.argv[1:] if argv is None
                                                                                  else argv),
                   "results": results, "summary": summary}, f, indent=1)
    with open(os.path.join(args.docs, "active_learning.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
