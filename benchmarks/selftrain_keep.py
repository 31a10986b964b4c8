"""Which share of pseudo-labeled cases should ``nnUNetv2_semisup_selftrain`` keep by default, and which score should
order them? Measured on the *validation* seeds of the i.i.d. track (100, 101: never the benchmark's seeds 0-4).

Per seed: the i.i.d. synthetic dataset (``cohort_iid``, 3 labeled + 21 unlabeled, 30 test cases), the labeled-only
teacher (``nnUNetTrainer_semisupShort``, the benchmark's schedule), then one ``nnUNetv2_semisup_selftrain`` run per
``--keep`` value (student ids 978, 979, ...; same teacher, same schedule), each student predicted on the test cases.
Also, from the teacher's pseudo-labels (``round_1/pseudo_labels/``) and the generator's true labels of the unlabeled
cases: each case's pseudo-label Dice and the Spearman correlation of every reliability score with it.

    python benchmarks/selftrain_keep.py --work ~/keep_work --docs docs

Writes ``selftrain_keep.json`` and ``selftrain_keep.md`` to ``--docs``.
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality as q  # noqa: E402

from nnunetv2_semisup import demo  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    p.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    p.add_argument("--budget", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="default: the i.i.d. track's")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--work", required=True)
    p.add_argument("--docs", default="docs")
    return p.parse_args(argv)


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float("nan") if s == 0 else 2 * float((a & b).sum()) / s


def case_dice(ref, pred, labels=(1, 2, 3)):
    """Mean over the labels present in the reference or the prediction (the benchmark's convention)."""
    vals = [dice(ref == k, pred == k) for k in labels if (ref == k).any() or (pred == k).any()]
    return float(np.mean(vals)) if vals else float("nan")


def spearman(x, y):
    from scipy.stats import spearmanr
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    return float(spearmanr(x[ok], y[ok]).correlation) if ok.sum() > 2 else float("nan")


def run_seed(args, seed, log=sys.stdout) -> dict:
    import SimpleITK as sitk
    qa = q.parse_args(["--track", "iid", "--seeds", str(seed), "--budgets", str(args.budget), "--work", args.work,
                       "--iterations", str(args.iterations)] + (["--epochs", str(args.epochs)] if args.epochs else []))
    cfg = q.dataset_config(qa, seed, args.budget, qa.epochs)
    cfg.methods = [demo.BASELINE]
    progress = demo.Progress(0, log)
    marker = os.path.join(cfg.out, "prepared.json")
    if not os.path.isfile(marker):
        demo.prepare_out_folder(cfg.out)
        for what, fn in demo.dataset_steps(cfg):
            progress.step(what, fn)
        with open(marker, "w") as f:
            json.dump({"seed": seed}, f)
    teacher_final = os.path.join(cfg.results, cfg.dataset_name, f"{demo.BASELINE}__nnUNetPlans__3d_fullres",
                                 "fold_all", "checkpoint_final.pth")
    results = []
    if not os.path.isfile(os.path.join(cfg.out, "teacher_result.json")):
        for what, fn in demo.method_steps(cfg, demo.BASELINE, results):
            progress.step(what, fn)
        with open(os.path.join(cfg.out, "teacher_result.json"), "w") as f:
            json.dump({"dice": results[0].dice, "hd95": results[0].hd95}, f)
    assert os.path.isfile(teacher_final)
    with open(os.path.join(cfg.out, "teacher_result.json")) as f:
        out = {"seed": seed, "teacher": json.load(f), "students": {}}
    # the true labels of the unlabeled cases: the same seed written with every training case labeled
    truth = os.path.join(cfg.out, "truth")
    if not os.path.isdir(truth):
        from nnunetv2_semisup.synthetic import make_synthetic_dataset
        make_synthetic_dataset(truth, qa.train_cases, 0, 0, seed, tuple(qa.shape), preset=qa.preset)
    env = demo.build_env(cfg)
    for i, keep in enumerate(args.keeps):
        sid = cfg.dataset_id + 1 + i
        name = f"selftrain_keep{keep:g}"
        t0 = time.time()
        progress.step(f"seed {seed}: nnUNetv2_semisup_selftrain --keep {keep:g} -o {sid}", lambda: demo.run_command(
            ["nnUNetv2_semisup_selftrain", "-d", cfg.dataset_id, "-o", sid, "-tr", demo.BASELINE, "--student-trainer",
             demo.BASELINE, "--keep", keep, "-device", cfg.device, "-np", 1, "--quiet"], env,
            os.path.join(cfg.logs, f"{name}.log")))
        pred = cfg.predictions(name)
        progress.step("predict with the student", lambda: demo.run_command(
            ["nnUNetv2_predict", "-i", os.path.join(cfg.raw_dataset, "imagesTs"), "-o", pred, "-d", sid, "-c",
             demo.CONFIGURATION, "-f", "all", "-tr", demo.BASELINE, "-device", cfg.device, "--disable_tta", "-npp", 1,
             "-nps", 1], env, os.path.join(cfg.logs, f"predict_{name}.log")))
        r = demo.evaluate_method(cfg, name, name, time.time() - t0, time.time() - t0)
        out["students"][f"{keep:g}"] = {"dice": r.dice, "hd95": r.hd95, "seconds": time.time() - t0}
    # pseudo-label quality against the scores (the first run's round 1: every run has the same teacher)
    work = os.path.join(cfg.results, cfg.dataset_name, f"selftrain_{cfg.dataset_id + 1:03d}", "round_1")
    with open(os.path.join(work, "pseudo_labels.csv")) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(truth, "labelsTr", r["case"] + ".nii.gz")))
        pl = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(work, "pseudo_labels", r["case"] + ".nii.gz")))
        r["true_dice"] = case_dice(ref, pl)
    true = [r["true_dice"] for r in rows]
    out["pseudo_labels"] = {
        "per_case": [{k: r[k] for k in ("case", "rank", "confidence", "entropy", "true_dice")} for r in rows],
        "mean_true_dice": float(np.nanmean(true)),
        "spearman": {s: spearman([float(r[s]) if r[s] else np.nan for r in rows], true)
                     for s in ("confidence", "entropy")},
        "true_dice_by_keep": {f"{k:g}": float(np.nanmean(true[:max(1, int(round(k * len(true))))]))
                              for k in args.keeps},
    }
    return out


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    results = [run_seed(args, s) for s in args.seeds]
    lines = ["| seed | teacher (labeled only) | " + " | ".join(f"student, keep {k:g}" for k in args.keeps)
             + " | pseudo-label Dice of the kept cases (" + " / ".join(f"{k:g}" for k in args.keeps)
             + ") | Spearman(confidence, true Dice) | Spearman(entropy, true Dice) |",
             "|" + "---|" * (4 + len(args.keeps))]
    for r in results:
        p = r["pseudo_labels"]
        lines.append(f"| {r['seed']} | {r['teacher']['dice']:.3f} | "
                     + " | ".join(f"{r['students'][f'{k:g}']['dice']:.3f}" for k in args.keeps)
                     + " | " + " / ".join(f"{p['true_dice_by_keep'][f'{k:g}']:.3f}" for k in args.keeps)
                     + f" | {p['spearman']['confidence']:+.2f} | {p['spearman']['entropy']:+.2f} |")
    mean = {f"{k:g}": float(np.mean([r["students"][f"{k:g}"]["dice"] - r["teacher"]["dice"] for r in results]))
            for k in args.keeps}
    lines.append("")
    lines.append("Mean student − teacher: " + ", ".join(f"keep {k}: {v:+.3f}" for k, v in mean.items()))
    os.makedirs(args.docs, exist_ok=True)
    with open(os.path.join(args.docs, "selftrain_keep.json"), "w") as f:
        json.dump({"command": "python benchmarks/selftrain_keep.py " + " ".join(sys.argv[1:] if argv is None
                                                                                  else argv),
                   "results": results, "mean_student_minus_teacher": mean}, f, indent=1)
    with open(os.path.join(args.docs, "selftrain_keep.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
