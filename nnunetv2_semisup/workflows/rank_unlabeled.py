"""``nnUNetv2_semisup_rank_unlabeled``: which unlabeled scan to label next.

A trained model (stock nnU-Net or any trainer of this package; one fold or several) predicts every scan of
``imagesUnlabeled/`` through several *views* and the scans are ranked by how unsure those views are:

- views: the folds, when several are given; otherwise the model's own views where it has two (Mean Teacher's student
  and teacher, CML's two subnets, SKCDF's two decoders, M&N's 3D and 2D models: each trainer's ``inference_views``)
  plus the mirrored predictions of its first view (test-time augmentation: the image flipped along each axis the
  model was trained to mirror, predicted, flipped back); a model with a single view gets the mirrored ones only;
- scores per scan (the prediction is the argmax of the views' mean softmax, as ``nnUNetv2_ensemble`` averages; all in
  the network's preprocessed grid): ``entropy`` (mean normalised entropy over the predicted foreground), ``disagreement``
  (share of voxels in the union of the views' foregrounds where their labels differ), ``view_dice`` (mean pairwise
  foreground Dice between the views' label maps, averaged over the classes either map holds; lower = more
  informative), ``confidence``;
- ``combined`` (the default order): the mean of the scan's percentile ranks by entropy and by disagreement, so a scan
  on which the model is both uncertain and inconsistent comes first; a scan with an empty prediction comes first of
  all (the model found nothing: either a failure worth labeling or an empty scan worth knowing about);
- spread (``--diversity R``): walking down the order, a scan whose thumbnail (16³ z-scored image) correlates at
  Pearson r ≥ R with a scan already placed above it is moved to the end, marked as a near duplicate.

Outputs in ``-o``: ``ranking.csv`` (every scan: rank, scores, views, near duplicate of), ``png/`` (the top
``--top-k`` scans: image, prediction, per-voxel disagreement of the views on the slice where they disagree most) and
``index.md`` (the ranking with the pictures).
"""
import argparse
import csv
import math
import os
import shutil
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from nnunetv2_semisup.cli_errors import is_explained, os_error_message
from nnunetv2_semisup.workflows import reliability

SCORES = {"combined": True, "entropy": True, "disagreement": True, "view_dice": False, "confidence": False}
# name -> True when larger values mean more informative (ranked first)


class RankError(RuntimeError):
    """Bad input; the message names it and what to do."""


# ------------------------------------------------------------------------------------------------- scores
def view_dice(label_maps: Sequence[np.ndarray]) -> float:
    """Mean over pairs of views of the mean Dice over the foreground classes either map holds (NaN: nothing)."""
    vals = []
    for i in range(len(label_maps)):
        for j in range(i + 1, len(label_maps)):
            a, b = np.asarray(label_maps[i]), np.asarray(label_maps[j])
            classes = [c for c in np.union1d(np.unique(a), np.unique(b)) if c > 0]
            per = [2 * np.count_nonzero((a == c) & (b == c)) / (np.count_nonzero(a == c) + np.count_nonzero(b == c))
                   for c in classes]
            if per:
                vals.append(float(np.mean(per)))
    return float(np.mean(vals)) if vals else math.nan


def scan_scores(view_probabilities: Sequence[np.ndarray]) -> Dict[str, float]:
    """Scores of one scan from its views' softmax probabilities (C, ...)."""
    s = reliability.case_scores(view_probabilities)
    labels = [reliability.hard_labels(p) for p in view_probabilities]
    s["view_dice"] = view_dice(labels) if len(labels) > 1 else math.nan
    s["views"] = len(labels)
    return s


def percentile_ranks(values: Sequence[float]) -> np.ndarray:
    """Rank of each value among the finite ones scaled to [0, 1] (ties share their mean rank); NaN stays NaN."""
    from scipy.stats import rankdata
    v = np.asarray(values, float)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    if ok.sum() == 1:
        out[ok] = 1.0
    elif ok.any():
        out[ok] = (rankdata(v[ok]) - 1) / (ok.sum() - 1)
    return out


def add_combined(scores: Dict[str, Dict[str, float]]) -> None:
    """``combined`` = mean of the percentile ranks by entropy and by disagreement (the ones a scan has)."""
    cases = list(scores)
    ranks = [percentile_ranks([scores[c].get(k, math.nan) for c in cases]) for k in ("entropy", "disagreement")]
    for i, c in enumerate(cases):
        vals = [r[i] for r in ranks if np.isfinite(r[i])]
        scores[c]["combined"] = float(np.mean(vals)) if vals else math.nan


def informative_order(scores: Dict[str, Dict[str, float]], score: str) -> List[str]:
    """Most informative first: empty predictions, then by ``score`` (its direction in SCORES), ties by name."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {sorted(SCORES)}")

    def key(c):
        s = scores[c]
        if not s.get("foreground_voxels"):
            return (0, 0.0, c)
        v = s.get(score, math.nan)
        if v is None or not np.isfinite(v):
            return (2, 0.0, c)
        return (1, -v if SCORES[score] else v, c)
    return sorted(scores, key=key)


def thumbnail(image: np.ndarray, size: int = 16) -> np.ndarray:
    """The first channel resampled to size³ (linear), z-scored: what near-duplicate detection compares."""
    from scipy.ndimage import zoom
    x = np.asarray(image[0], np.float32)
    t = zoom(x, [size / s for s in x.shape], order=1)
    sd = t.std()
    return (t - t.mean()) / sd if sd > 0 else t - t.mean()


def spread(order: List[str], thumbs: Dict[str, np.ndarray], threshold: Optional[float]) -> (List[str], dict):
    """Move a scan whose thumbnail correlates ≥ ``threshold`` with one placed above it to the end; returns the new
    order and {moved case: the case it duplicates}."""
    if threshold is None:
        return list(order), {}
    kept, moved = [], {}
    for c in order:
        twin = next((k for k in kept if float(np.mean(thumbs[c] * thumbs[k])) >= threshold), None)
        if twin is None:
            kept.append(c)
        else:
            moved[c] = twin
    return kept + [c for c in order if c in moved], moved


# ------------------------------------------------------------------------------------------------- model
def load_model(model_folder: str, fold: str, checkpoint: str, device: torch.device):
    """(views {name: module}, plans_manager, configuration_manager, dataset_json, mirror axes) of one fold, built
    the way nnU-Net restores a trainer (its class and constructor arguments from the checkpoint)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    import contextlib
    import io
    path = os.path.join(model_folder, f"fold_{fold}", checkpoint)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    with contextlib.redirect_stdout(io.StringIO()):
        cls = recursive_find_trainer_class_by_name(ckpt["trainer_name"])
    if cls is None:
        raise RankError(f"trainer {ckpt['trainer_name']} of {path} not found; export nnUNet_extTrainer="
                        f"$(nnUNetv2_semisup_trainer_dir) for this package's trainers")
    args = dict(ckpt["init_args"])
    args["plans"] = dict(args["plans"], continue_training=False)
    args["device"] = device
    import tempfile
    saved = os.environ.get("nnUNet_results")
    # reading a model must not add a training log to its folder: nnU-Net's trainer opens one in its output folder,
    # which it derives from nnUNet_results (read lazily), so the trainer is built with a temporary one
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        os.environ["nnUNet_results"] = tmp
        try:
            trainer = cls(**args)
            trainer.load_checkpoint(path)   # initialises the trainer first, as nnU-Net's --c does
        finally:
            if saved is None:
                os.environ.pop("nnUNet_results", None)
            else:
                os.environ["nnUNet_results"] = saved
    views = trainer.inference_views() if hasattr(trainer, "inference_views") else {"network": trainer.network}
    for v in views.values():
        v.eval()
    if hasattr(trainer, "set_deep_supervision_enabled"):
        trainer.set_deep_supervision_enabled(False)
    return (views, trainer.plans_manager, trainer.configuration_manager, trainer.dataset_json,
            ckpt.get("inference_allowed_mirroring_axes"))


class _First(torch.nn.Module):
    """A view's full-resolution logits (index 0 under deep supervision)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        out = self.module(x)
        return out[0] if isinstance(out, (list, tuple)) else out


# ------------------------------------------------------------------------------------------------- the command
def check_inputs(args, raw_dataset: str, model_folder: str, dataset_name: str) -> dict:
    """Everything refused before anything is written; returns the unlabeled cases."""
    import json
    from nnunetv2_semisup.data.unlabeled_raw import UnlabeledDataError, find_unlabeled_cases
    if not os.path.isdir(model_folder):
        raise RankError(f"No trained model in {model_folder}: train it first (nnUNetv2_train {args.d} {args.c} FOLD "
                        f"-tr {args.tr} -p {args.p}) or check -tr/-p/-c.")
    for fold in args.f:
        ckpt = os.path.join(model_folder, f"fold_{fold}", args.chk)
        if not os.path.isfile(ckpt):
            found = sorted(d[5:] for d in os.listdir(model_folder) if d.startswith("fold_") and os.path.isfile(
                os.path.join(model_folder, d, args.chk)))
            raise RankError(f"Fold {fold} has no {args.chk} ({ckpt}); folds with one: {found or 'none'}.")
    with open(os.path.join(model_folder, "plans.json")) as f:
        trained_on = json.load(f).get("dataset_name")
    if trained_on != dataset_name:
        raise RankError(f"The model in {model_folder} was trained on {trained_on}, not on {dataset_name}: its "
                        f"uncertainty would not be about this dataset's labels. Rank with a model of {dataset_name}.")
    with open(os.path.join(raw_dataset, "dataset.json")) as f:
        dataset_json = json.load(f)
    try:
        cases = find_unlabeled_cases(raw_dataset, dataset_json)
    except UnlabeledDataError as e:
        raise RankError(str(e)) from e
    if os.path.isdir(args.o) and os.listdir(args.o) and not args.overwrite:
        raise RankError(f"-o {args.o} exists and is not empty; choose another folder or add --overwrite.")
    return cases


def rank(args, stream=None) -> List[dict]:
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunetv2_semisup.progress import progress
    from nnunetv2_semisup.workflows.selftrain import source_dataset_name
    stream = stream or sys.stdout
    dataset_name = source_dataset_name(args.d)
    raw_dataset = os.path.join(os.environ["nnUNet_raw"], dataset_name)
    model_folder = get_output_folder(dataset_name, args.tr, args.p, args.c)
    cases = check_inputs(args, raw_dataset, model_folder, dataset_name)
    device = torch.device(args.device)
    folds = [load_model(model_folder, f, args.chk, device) for f in args.f]
    views0, pm, cm, dataset_json, mirror_axes = folds[0]
    if len(folds) > 1:
        views = [(f"fold_{f}", _First(next(iter(v[0].values()))), None) for f, v in zip(args.f, folds)]
    else:
        views = [(name, _First(m), None) for name, m in views0.items()]
        if not args.no_tta:
            first_name, first = views[0][0], views[0][1]
            axes = args.mirror_axes if args.mirror_axes is not None else (mirror_axes or ())
            views += [(f"{first_name}_mirror{a}", first, a) for a in axes]
    if len(views) < 2:
        print("NOTE: one view only (a single network trained without mirroring, or --no-tta): disagreement and view "
              "Dice are not available and 'combined' orders by entropy alone. Several folds (-f 0 1 2 3 4) or "
              "--mirror-axes give more views.", file=stream, flush=True)
    print(f"Ranking {len(cases)} unlabeled scans of {dataset_name} with {args.tr} ({', '.join(args.f)}): views "
          f"{', '.join(v[0] for v in views)}", file=stream, flush=True)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(views[0][1], pm, cm, None, dataset_json, args.tr, None)
    preprocessor = cm.preprocessor_class(verbose=False)
    scores, thumbs, pictures = {}, {}, {}
    for case in progress(sorted(cases), desc="rank", quiet=args.quiet):
        data, _, _ = preprocessor.run_case(cases[case], None, pm, cm, dataset_json)
        x = torch.from_numpy(np.asarray(data, np.float32))
        probs = []
        for _, module, axis in views:
            predictor.network = module
            xin = x if axis is None else torch.flip(x, (axis + 1,))
            with torch.no_grad():
                logits = predictor.predict_sliding_window_return_logits(xin).float().cpu()
            if axis is not None:
                logits = torch.flip(logits, (axis + 1,))
            probs.append(torch.softmax(logits, 0).numpy())
        scores[case] = scan_scores(probs)
        thumbs[case] = thumbnail(data)
        mean_probs = np.mean(probs, 0)
        pictures[case] = (np.asarray(data[0]), reliability.hard_labels(mean_probs), heat_map(probs))
    add_combined(scores)
    order = informative_order(scores, args.score)
    order, duplicates = spread(order, thumbs, args.diversity)
    if os.path.isdir(args.o) and args.overwrite:
        shutil.rmtree(args.o)
    os.makedirs(os.path.join(args.o, "png"), exist_ok=True)
    rows = []
    for i, c in enumerate(order, 1):
        s = scores[c]
        rows.append({"rank": i, "case": c, "score": _fmt(s.get(args.score)), "combined": _fmt(s["combined"]),
                     "entropy": _fmt(s["entropy"]), "disagreement": _fmt(s["disagreement"]),
                     "view_dice": _fmt(s["view_dice"]), "confidence": _fmt(s["confidence"]),
                     "foreground_voxels": int(s["foreground_voxels"]), "views": s["views"],
                     "near_duplicate_of": duplicates.get(c, "")})
    with open(os.path.join(args.o, "ranking.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"# Unlabeled scans of {dataset_name}, most informative first", "",
             f"Model: `{args.tr}` / `{args.p}` / `{args.c}`, fold(s) {', '.join(args.f)}; views: "
             f"{', '.join(v[0] for v in views)}; order: `{args.score}`"
             + (f"; near duplicates (thumbnail r ≥ {args.diversity}) moved to the end" if args.diversity else ""), "",
             "| rank | scan | score | entropy | disagreement | view Dice | near duplicate of | picture |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        png = ""
        if r["rank"] <= args.top_k:
            png_name = f"rank{r['rank']:03d}_{r['case']}.png"
            write_disagreement_png(os.path.join(args.o, "png", png_name), *pictures[r["case"]])
            png = f"![{r['case']}](png/{png_name})"
        lines.append(f"| {r['rank']} | {r['case']} | {r['score']} | {r['entropy']} | {r['disagreement']} | "
                     f"{r['view_dice']} | {r['near_duplicate_of']} | {png} |")
    with open(os.path.join(args.o, "index.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"Wrote {os.path.join(args.o, 'ranking.csv')}, index.md and {min(args.top_k, len(rows))} picture(s); "
          f"label first: {', '.join(r['case'] for r in rows[:min(5, len(rows))])}", file=stream, flush=True)
    return rows


def heat_map(view_probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """Where a scan is unsure, per voxel in [0, 1]: with several views 1 where their labels differ (disagreement);
    with one view the entropy of its softmax divided by log C (1 = uniform over the C classes)."""
    if len(view_probabilities) > 1:
        labels = np.stack([reliability.hard_labels(p) for p in view_probabilities])
        return (labels != labels[0:1]).any(0).astype(np.float32)
    p = np.clip(np.asarray(view_probabilities[0], np.float64), 1e-12, 1.0)
    return (-(p * np.log(p)).sum(0) / math.log(p.shape[0])).astype(np.float32)


def write_disagreement_png(path: str, image: np.ndarray, labels: np.ndarray, heat: np.ndarray) -> str:
    """One row on the slice (first array axis) where the heat map (``heat_map``: the views' disagreement, or the
    entropy of a single view) sums highest: image | prediction outlined | heat map (white = unsure)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    from nnunetv2_semisup.evaluation.pictures import SEPARATOR, _grey, class_color, outline
    z = int(np.argmax(heat.reshape(heat.shape[0], -1).sum(1)))
    finite = image[np.isfinite(image)]
    window = tuple(np.percentile(finite, (1, 99))) if finite.size else (0.0, 1.0)
    shape = image.shape[1:]
    plain = _grey(image[z], shape, window)
    pred = plain.copy()
    for c in sorted(int(v) for v in np.unique(labels[z]) if v > 0):
        pred[outline(labels[z] == c)] = class_color(c)
    sep = np.full((shape[0], SEPARATOR, 3), 255, np.uint8)
    row = np.concatenate((plain, sep, pred, sep, _grey(heat[z], shape, (0.0, 1.0))), axis=1)
    k = max(1, int(np.ceil(192 / max(shape))))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plt.imsave(path, np.repeat(np.repeat(row, k, 0), k, 1))
    return path


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="nnUNetv2_semisup_rank_unlabeled",
                                description="Rank the unlabeled scans of a dataset by how unsure a trained model is "
                                            "about them (most informative first), with pictures.")
    p.add_argument("-d", required=True, help="dataset (id or DatasetXXX_Name) with imagesUnlabeled/")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer of the model (default nnUNetTrainer)")
    p.add_argument("-p", default="nnUNetPlans", help="plans (default nnUNetPlans)")
    p.add_argument("-f", nargs="+", default=["all"], help="fold(s) (default all); several: the folds are the views")
    p.add_argument("-o", required=True, help="output folder (ranking.csv, index.md, png/)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint (default checkpoint_final.pth)")
    p.add_argument("--score", default="combined", choices=sorted(SCORES), help="order (default combined)")
    p.add_argument("--top-k", type=int, default=5, help="pictures of the first K scans (default 5)")
    p.add_argument("--diversity", type=float, default=None, metavar="R",
                   help="move a scan whose 16³ thumbnail correlates at r >= R with a higher-ranked one to the end "
                        "(e.g. 0.98; default off)")
    p.add_argument("--no-tta", action="store_true", help="no mirrored views (faster; needs another view)")
    p.add_argument("--mirror-axes", type=int, nargs="+", default=None,
                   help="mirrored views along these array axes instead of the ones the model was trained with "
                        "(e.g. for a model trained without mirroring; its mirrored predictions then also show that)")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"], help="default cuda")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty -o")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    args.f = [str(f) for f in args.f]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from nnunetv2_semisup.workflows.selftrain import SelfTrainError
    try:
        rank(args)
    except (RankError, SelfTrainError) as e:
        print(f"nnUNetv2_semisup_rank_unlabeled: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if not is_explained(e):
            raise
        print(f"nnUNetv2_semisup_rank_unlabeled: {os_error_message(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
