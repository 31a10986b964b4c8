"""``nnUNetv2_semisup_evaluate``: Dice, Jaccard, HD95 and ASD/ASSD per case and label (docs/evaluation.md).

Examples::

    nnUNetv2_semisup_evaluate -ref labelsTs -pred pred                       # mm mode (default)
    nnUNetv2_semisup_evaluate -ref labelsTs -pred pred --preset uamt_lcc --compare-paper LA/8
    nnUNetv2_semisup_evaluate -ref labelsTs -pred pred_whole --preset medpy --compare-paper LA/8/ablation
    nnUNetv2_semisup_evaluate --aggregate-runs s0/summary.json s1/summary.json s666/summary.json

See docs/evaluation.md for every option.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import List, Optional

from nnunetv2_semisup.cli_errors import is_explained, os_error_message
from nnunetv2_semisup.evaluation.aggregate import RunAggregationError, aggregate_runs
from nnunetv2_semisup.evaluation.evaluate import (EvaluationError, nan_to_none, default_output_folder,
                                                  evaluate_folders)
from nnunetv2_semisup.evaluation.published import COMPARISONS
from nnunetv2_semisup.evaluation.settings import EMPTY_POLICIES, MODES, PRESETS, SettingsError, resolve_settings
from nnunetv2_semisup.evaluation.tables import format_comparison, format_runs, format_summary
from nnunetv2_semisup.progress import progress

RUNS_JSON = "summary_runs.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_semisup_evaluate",
        description="Dice, Jaccard, HD95 and ASD/ASSD per case and foreground label, in physical units (mm mode, "
                    "default) or in the voxel conventions of the semi-supervised papers (paper mode). Writes "
                    "metrics_per_case.csv and summary.json and prints a table.",
        epilog="Presets (paper mode): " + "; ".join(f"{k}: {v[2]} (empty policy {v[0]}, LCC "
                                                     f"{'on' if v[1] else 'off'})" for k, v in PRESETS.items()))
    p.add_argument("-ref", metavar="FOLDER", help="folder of reference label maps (e.g. labelsTs)")
    p.add_argument("-pred", metavar="FOLDER", help="folder of predicted label maps; cases matched by file name")
    p.add_argument("-l", metavar="LABEL", type=int, nargs="+", default=None,
                   help="foreground labels to evaluate (default: all labels of dataset.json, found in -ref, -pred "
                        "or the parent of -ref)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="mm (default): mm from the reference header, HD95 = max of directed P95, symmetric ASSD; "
                        "paper: voxels, medpy conventions (pooled HD95, directed ASD pred->ref)")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="paper-mode preset fixing the empty-mask policy and LCC of a family of paper scripts "
                        "(implies --mode paper)")
    p.add_argument("--empty-policy", choices=EMPTY_POLICIES, default=None,
                   help="what empty masks give (docs/evaluation.md §4); mm: penalty (default) or nan; paper without "
                        "preset: default zeros")
    p.add_argument("--lcc", action="store_const", const=True, default=None,
                   help="paper mode: keep only the largest 26-connected component of each predicted label")
    p.add_argument("--hd", action="store_true", help="also report the Hausdorff distance (maximum), column hd")
    p.add_argument("--aggregate-runs", metavar="SUMMARY_JSON", nargs="+", default=None,
                   help="instead of evaluating folders: mean and std (ddof 0) over runs of the foreground means of "
                        "these summary.json files")
    p.add_argument("-np", metavar="N", type=int, default=min(8, os.cpu_count() or 1),
                   help="number of worker processes (default: min(8, CPU count))")
    p.add_argument("-o", metavar="OUT", default=None,
                   help="output folder for metrics_per_case.csv and summary.json (default: "
                        "PRED/semisup_eval_<mode>[_<preset>]); with --aggregate-runs: where summary_runs.json goes")
    p.add_argument("--png", metavar="DIR", default=None,
                   help="also write one PNG per case to DIR: slices through each structure, reference (left) and "
                        "prediction (right) outlined per class (see --images, --png-cases)")
    p.add_argument("--images", metavar="FOLDER", default=None,
                   help="with --png: the images of the cases (e.g. imagesTs; <case>_0000<ending> is drawn); "
                        "without it the outlines are drawn on black")
    p.add_argument("--png-cases", choices=["all", "worst", "best"], default="all",
                   help="with --png: every case (default) or the --png-n worst/best by mean foreground Dice")
    p.add_argument("--png-n", metavar="N", type=int, default=5, help="with --png-cases worst/best: how many (5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (also off when output is not a terminal)")
    p.add_argument("--compare-paper", metavar="DATASET/SETTING[/ablation]", default=None,
                   help="print your numbers beside the published rows (case-insensitive); one of "
                        + ", ".join(COMPARISONS) + ". The '/ablation' keys list the papers' ablation tables "
                        "(M&N and CML Table 4; SKCDF Tables 3-5) with the trainer variant that re-runs each row")
    return p


def _warning_to_stderr(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _warning_to_stderr
    if args.compare_paper is not None and args.compare_paper.lower() not in {k.lower() for k in COMPARISONS}:
        parser.error(f"--compare-paper {args.compare_paper}: unknown setting; available: {', '.join(COMPARISONS)}")
    if args.np < 1:
        parser.error("-np must be at least 1")
    try:
        if args.aggregate_runs is not None:
            if args.ref or args.pred:
                parser.error("--aggregate-runs combines existing summary.json files; do not pass -ref/-pred")
            return _aggregate(args)
        if not args.ref or not args.pred:
            parser.error("-ref and -pred are required (or use --aggregate-runs)")
        try:
            settings = resolve_settings(args.mode, args.preset, args.empty_policy, args.lcc, args.hd)
        except SettingsError as e:
            parser.error(str(e))
        out = args.o or default_output_folder(args.pred, settings)
        if args.images and not args.png:
            parser.error("--images is for the pictures: add --png DIR")
        summary = evaluate_folders(args.ref, args.pred, labels=args.l, mode=args.mode, preset=args.preset,
                                   empty_policy=args.empty_policy, lcc=args.lcc, num_processes=args.np,
                                   output_folder=out, include_hd=args.hd, verbose=True, progress=not args.quiet)
        print(format_summary(summary))
        print(f"written: {os.path.join(out, 'metrics_per_case.csv')}, {os.path.join(out, 'summary.json')}")
        if args.png:
            written = write_case_pictures(summary, args.png, args.images, args.png_cases, args.png_n, args.quiet)
            print(f"written: {len(written)} picture(s) in {args.png}")
        if args.compare_paper:
            print()
            print(format_comparison(summary, args.compare_paper))
        return 0
    except (EvaluationError, RunAggregationError) as e:
        print(f"nnUNetv2_semisup_evaluate: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if not is_explained(e):
            raise
        print(f"nnUNetv2_semisup_evaluate: error: {os_error_message(e)}", file=sys.stderr)
        return 1


def write_case_pictures(summary: dict, out_dir: str, images: Optional[str], which: str = "all", n: int = 5,
                        quiet: bool = False) -> List[str]:
    """One PNG per selected case (``pictures.write_png``): reference | prediction, on the case's first image
    channel from ``images`` if given."""
    import numpy as np
    import SimpleITK as sitk

    from nnunetv2_semisup.evaluation.evaluate import file_ending_from_dataset_json, list_cases
    from nnunetv2_semisup.evaluation.pictures import select_cases, write_png
    ending = file_ending_from_dataset_json(summary.get("dataset_json"))
    refs = list_cases(summary["reference_folder"], ending)
    preds = list_cases(summary["prediction_folder"], ending)
    dice: dict = {}
    for r in summary["rows"]:
        dice.setdefault(r["case"], []).append(r["dice"] if r["dice"] is not None else float("nan"))
    per_case = {c: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for c, v in dice.items()}
    written = []
    for case in progress(select_cases(per_case, which, n), desc="pictures", quiet=quiet):
        ref = sitk.GetArrayFromImage(sitk.ReadImage(refs[case]))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(preds[case])) if case in preds else np.zeros_like(ref)
        image = None
        if images:
            ext = os.path.basename(refs[case])[len(case):]
            path = os.path.join(images, f"{case}_0000{ext}")
            if not os.path.isfile(path):
                raise EvaluationError(f"--images {images}: no image {path} for case {case} (expected "
                                      f"<case>_0000{ext}, nnU-Net's naming)")
            image = sitk.GetArrayFromImage(sitk.ReadImage(path))
            if image.shape != ref.shape:
                raise EvaluationError(f"--images: {path} has shape {image.shape}, the reference {refs[case]} "
                                      f"{ref.shape}")
        if ref.ndim == 2:
            ref, pred, image = ref[None], pred[None], None if image is None else image[None]
        written.append(write_png(os.path.join(out_dir, f"{case}.png"), image, [ref, pred]))
    return written


def _aggregate(args) -> int:
    agg = aggregate_runs(args.aggregate_runs)
    print(format_runs(agg))
    if args.o:
        os.makedirs(args.o, exist_ok=True)
        path = os.path.join(args.o, RUNS_JSON)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(nan_to_none(agg), f, indent=2, allow_nan=False)
        print(f"written: {path}")
    if args.compare_paper:
        with open(args.aggregate_runs[0], encoding="utf-8") as f:
            first = json.load(f)
        print()
        print(format_comparison(first, args.compare_paper, runs=agg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
