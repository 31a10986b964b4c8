"""How good is each trainer's model on its own *unlabeled* training cases, over training?

The pseudo-labels of Mean Teacher (the EMA teacher), SKCDF (the labeled decoder on unlabeled input), CML (each subnet
for the other) and M&N's 3D model (for the 2D one) are that model's predictions on the unlabeled stream. A
semi-supervised loss can only help where they are better than chance and can only mislead where they are wrong, so
their Dice against the true labels (the synthetic generator knows them: it writes the seed's dataset once more with every training case
labeled) tells why a method does or does not beat labeled-only nnU-Net. It is measured per scanner, split into the
scanners the labeled cases came from ("seen") and the others ("unseen").

Reads the runs of ``benchmarks/quality.py`` (same ``--work``, ``--epochs``, ``--iterations``, ``--budget``), which keep
``checkpoint_epoch<N>.pth`` every epochs/8 epochs. Per run and checkpoint, whole-volume predictions of the unlabeled
training cases with nnU-Net's predictor (in a subprocess with the run's nnU-Net folders; mirroring off as in the
benchmark). Mean Teacher is predicted with its teacher's weights (its pseudo-label source); every other trainer with
the network ``nnUNetv2_predict`` uses. M&N's 2D model is not measured (its pseudo-masks are slice-wise SegFormer
outputs; the 3D model's row is the other direction).

    python benchmarks/pseudo_label_quality.py --work /work/qwork --seeds 0 1 2 --docs docs

Writes ``<name>.json`` and ``<name>.png`` (``--name``, default ``pseudo_label_quality``) to ``--docs`` and prints a
table.
"""
import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality as q  # noqa: E402  (the benchmark whose runs are read)

from nnunetv2_semisup import demo  # noqa: E402
from nnunetv2_semisup.synthetic import cohort_scanners, make_synthetic_dataset  # noqa: E402

TEACHER_KEYS = {"nnUNetTrainerMeanTeacher_short": "mt_teacher_weights"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="benchmarks/quality.py's --work folder")
    p.add_argument("--track", default="random", help="quality.py's --track (default random: the issue-14 runs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=2, help="label budget of the runs to read (default 2)")
    p.add_argument("--methods", nargs="+", default=[demo.BASELINE] + q.DEFAULT_METHODS)
    p.add_argument("--epochs", type=int, default=None, help="quality.py's --epochs (default: its default)")
    p.add_argument("--iterations", type=int, default=None, help="quality.py's --iterations (default: its default)")
    p.add_argument("--docs", default="docs")
    p.add_argument("--name", default="pseudo_label_quality",
                   help="file stem of the outputs in --docs (default pseudo_label_quality: .json and .png)")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def quality_args(args):
    argv = ["--track", args.track, "--work", args.work, "--seeds", *map(str, args.seeds), "--budgets",
            str(args.budget)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.iterations is not None:
        argv += ["--iterations", str(args.iterations)]
    return q.parse_args(argv)


def checkpoints(fold_dir: str, epochs: int) -> list:
    """[(epochs trained, path)] of the kept checkpoints, the final one as ``epochs``."""
    found = {}
    for path in glob.glob(os.path.join(fold_dir, "checkpoint_epoch*.pth")):
        m = re.fullmatch(r"checkpoint_epoch(\d+)\.pth", os.path.basename(path))
        if m:
            found[int(m.group(1))] = path
    final = os.path.join(fold_dir, "checkpoint_final.pth")
    if os.path.isfile(final):
        found[epochs] = final
    return sorted(found.items())


def worker(fold_dir: str, images: str, out: str, names: list, teacher_key: str) -> None:
    """In the run's nnU-Net environment: predict ``images`` with every checkpoint in ``names``, into out/<name>/."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    for name in names:
        use = name
        if teacher_key:     # the pseudo-label source is the teacher: a copy of the checkpoint with its weights
            ckpt = torch.load(os.path.join(fold_dir, name), map_location="cpu", weights_only=False)
            ckpt["network_weights"] = ckpt[teacher_key]
            use = "pseudo_label_source_" + name
            torch.save(ckpt, os.path.join(fold_dir, use))
        predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                                    device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(os.path.dirname(fold_dir), ("all",), use)
        os.makedirs(os.path.join(out, name), exist_ok=True)
        predictor.predict_from_files_sequential(images, os.path.join(out, name), save_probabilities=False,
                                                overwrite=True)
        if teacher_key:
            os.remove(os.path.join(fold_dir, use))


def read(path: str) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    """NaN where the label is absent from both (a case without a lesion)."""
    p, t = pred == label, truth == label
    denom = int(p.sum()) + int(t.sum())
    return math.nan if denom == 0 else 2.0 * int((p & t).sum()) / denom


def score(pred_folder: str, truth_folder: str, labels: dict, case_scanner: dict, seen: set) -> dict:
    """Dice of every predicted case (``pred_folder``/<case>.nii.gz) against ``truth_folder``/<case>.nii.gz, per label
    ({name: value}), pooled over (case, label) pairs with a Dice: all, cases of a ``seen`` scanner, the others."""
    per = {"seen": [], "unseen": []}
    per_label = {k: [] for k in labels}
    for pred_path in sorted(glob.glob(os.path.join(pred_folder, "*.nii.gz"))):
        case = os.path.basename(pred_path)[:-len(".nii.gz")]
        truth, pred = read(os.path.join(truth_folder, case + ".nii.gz")), read(pred_path)
        side = "seen" if case_scanner[case] in seen else "unseen"
        for name, value in labels.items():
            d = dice(pred, truth, value)
            if not math.isnan(d):
                per[side].append(d)
                per_label[name].append(d)
    mean = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
    return {"dice": mean(per["seen"] + per["unseen"]), "dice_seen": mean(per["seen"]),
            "dice_unseen": mean(per["unseen"]), "per_label_dice": {k: mean(v) for k, v in per_label.items()},
            "cases": len(glob.glob(os.path.join(pred_folder, "*.nii.gz")))}


def truth_labels(args, qargs, seed: int) -> str:
    """labelsTr of the seed's dataset with every training case labeled: the same images as the budget's dataset
    (same generator order), generated once into the work folder."""
    folder = os.path.join(args.work, "pseudo_label_truth", f"seed{seed}")
    if not os.path.isdir(folder):
        make_synthetic_dataset(folder, qargs.train_cases, 0, qargs.test, seed=seed, shape=tuple(qargs.shape),
                               preset=qargs.preset)
    return os.path.join(folder, "labelsTr")


def measure_run(args, qargs, seed: int, method: str) -> dict:
    cfg = q.dataset_config(qargs, seed, args.budget, qargs.epochs)
    fold_dir = os.path.join(cfg.results, cfg.dataset_name, f"{method}__nnUNetPlans__3d_fullres", "fold_all")
    kept = checkpoints(fold_dir, qargs.epochs)
    if not kept:
        raise FileNotFoundError(f"no checkpoints in {fold_dir}: train it with benchmarks/quality.py first (same "
                                f"--work, --epochs, --iterations)")
    with open(os.path.join(cfg.raw_dataset, "dataset.json")) as f:
        dataset = json.load(f)
    labels = {k: v for k, v in dataset["labels"].items() if v != 0}
    case_scanner = dataset["semisup"]["case_scanner"]
    scanner_names = [s["name"] for s in cohort_scanners()]
    labeled = sorted(os.path.basename(p)[:-7] for p in glob.glob(os.path.join(cfg.raw_dataset, "labelsTr", "*.nii.gz")))
    seen = {scanner_names[case_scanner[c]] for c in labeled}
    images = os.path.join(cfg.raw_dataset, "imagesUnlabeled")
    with tempfile.TemporaryDirectory() as out:
        env = demo.build_env(cfg, for_training=False)
        cmd = [sys.executable, os.path.abspath(__file__), "--work", args.work, "--worker", fold_dir, images, out,
               TEACHER_KEYS.get(method, ""), *[os.path.basename(p) for _, p in kept]]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        curve = [{"epoch": epoch, "iterations": epoch * qargs.iterations,
                  **score(os.path.join(out, os.path.basename(path)), truth_labels(args, qargs, seed),
                          labels, {c: scanner_names[s] for c, s in case_scanner.items()}, seen)}
                 for epoch, path in kept]
    return {"method": method, "seed": seed, "budget": args.budget, "seen_scanners": sorted(seen),
            "unlabeled_cases": len(glob.glob(os.path.join(images, "*_0000.nii.gz"))), "curve": curve}


def plot(runs: list, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(dict.fromkeys(r["method"] for r in runs))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, side in zip(axes, ("dice_seen", "dice_unseen")):
        for m in methods:
            mine = [r for r in runs if r["method"] == m]
            its = sorted({p["iterations"] for r in mine for p in r["curve"]})
            mean = [np.nanmean([p[side] for r in mine for p in r["curve"] if p["iterations"] == i]) for i in its]
            ax.plot(its, mean, marker="o", label=f"{demo.METHOD_NAMES.get(m, q.NAMES.get(m, m))} ({len(mine)} seeds)")
        ax.set_xlabel("training iterations")
        ax.set_title(f"unlabeled training cases, {'seen' if side == 'dice_seen' else 'unseen'} scanners")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("Dice of the pseudo-label source vs truth (mean fg)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        fold_dir, images, out, teacher_key, *names = args.worker
        worker(fold_dir, images, out, names, teacher_key)
        return 0
    qargs = quality_args(args)
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            try:
                run = measure_run(args, qargs, seed, method)
            except FileNotFoundError as e:
                print(f"skipped: {e}", file=sys.stderr)
                continue
            runs.append(run)
            last = run["curve"][-1]
            print(f"seed {seed} {method}: " + ", ".join(f"{p['iterations']}: {p['dice_seen']:.3f}/{p['dice_unseen']:.3f}"
                                                       for p in run["curve"])
                  + f"  (seen/unseen scanners; final {last['dice']:.3f})", flush=True)
    if not runs:
        return 1
    os.makedirs(args.docs, exist_ok=True)
    with open(os.path.join(args.docs, args.name + ".json"), "w") as f:
        json.dump({"command": "python benchmarks/pseudo_label_quality.py " + " ".join(sys.argv[1:] if argv is None
                                                                                       else argv), "runs": runs}, f,
                  indent=1)
    plot(runs, os.path.join(args.docs, args.name + ".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
