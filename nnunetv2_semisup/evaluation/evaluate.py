"""Folder evaluation: match cases, read label maps, check them, compute and aggregate metrics (docs/evaluation.md).

The Python API behind ``nnUNetv2_semisup_evaluate``:

>>> from nnunetv2_semisup.evaluation.evaluate import evaluate_folders
>>> summary = evaluate_folders("labelsTs", "pred", mode="paper", preset="uamt_lcc")   # doctest: +SKIP

Reading is done with SimpleITK (any format it reads; ``.nii.gz`` by default). Cases are matched by file name
(§1); bad input fails with an :class:`EvaluationError` naming the case and what was expected.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunetv2_semisup.progress import progress as progress_bar
from nnunetv2_semisup.evaluation.aggregate import aggregate_rows
from nnunetv2_semisup.evaluation.metrics import EmptyMaskError, label_map_metrics
from nnunetv2_semisup.evaluation.settings import PRESETS, EvalSettings, resolve_settings

#: File endings recognised when no dataset.json gives one (longest first so ``.nii.gz`` wins over ``.gz``).
KNOWN_ENDINGS = (".seg.nrrd", ".gipl.gz", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".tiff",
                 ".tif", ".png", ".bmp", ".hdr", ".vtk")

#: Relative tolerance of the geometry check of mm mode (docs/evaluation.md §1).
GEOMETRY_RTOL = 1e-4

PER_CASE_CSV = "metrics_per_case.csv"
SUMMARY_JSON = "summary.json"

#: summary.json keys written in addition to those of docs/evaluation.md §6 (listed in docs/evaluation.md, "Output files").
SUMMARY_EXTENSION_KEYS = ("metrics", "dataset_json", "std_ddof", "missing_predictions", "unmatched_predictions",
                          "empty_cases", "notes")
#: Keys of each ``mean``/``std``/``median`` label entry beyond §6 (``hd`` only with ``--hd``).
LABEL_ENTRY_EXTENSION_KEYS = ("n_nan_per_metric", "hd")
#: metrics_per_case.csv columns beyond §6 (``hd`` only with ``--hd``); the §6 columns keep docs/evaluation.md's order.
CSV_EXTENSION_COLUMNS = ("hd", "prediction_missing")


class EvaluationError(ValueError):
    """Bad input for the evaluation (which case, what was expected)."""


# ----------------------------------------------------------------------------------------------------- discovery
def find_dataset_json(ref_folder: str, pred_folder: str) -> Optional[str]:
    """First existing dataset.json among ``ref/``, ``pred/`` (nnUNetv2_predict copies it there), ``ref/..``."""
    for folder in (ref_folder, pred_folder, os.path.dirname(os.path.abspath(ref_folder))):
        candidate = os.path.join(folder, "dataset.json")
        if os.path.isfile(candidate):
            return candidate
    return None


def list_cases(folder: str, file_ending: Optional[str] = None) -> Dict[str, str]:
    """Map case ID -> file path for the label maps in ``folder`` (docs/evaluation.md §1: cases matched by name).

    With ``file_ending`` only files with that ending count; otherwise any of :data:`KNOWN_ENDINGS` (other files
    such as ``dataset.json``, ``plans.json`` or ``.npz`` probabilities are ignored). Two files with the same case
    ID (e.g. ``a.nii`` and ``a.nii.gz``) are an error.
    """
    if not os.path.isdir(folder):
        raise EvaluationError(f"folder not found: {folder}")
    endings = (file_ending,) if file_ending else KNOWN_ENDINGS
    cases: Dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        ending = next((e for e in endings if name.endswith(e) and len(name) > len(e)), None)
        if ending is None:
            continue
        case = name[: -len(ending)]
        if case in cases:
            raise EvaluationError(f"case {case!r} appears twice in {folder}: {os.path.basename(cases[case])} and "
                                  f"{name}; keep one file per case")
        cases[case] = path
    return cases


def load_labels(dataset_json: Optional[str], labels: Optional[Sequence[int]]
                ) -> Tuple[List[int], Dict[int, str], set]:
    """(labels to evaluate, label names, allowed label values) from dataset.json and/or ``-l`` (docs/evaluation.md §1).

    dataset.json's ``labels`` (``{"background": 0, "left_atrium": 1}``) give names and the allowed value set; ``-l``
    selects which foreground labels to evaluate (defaults to all). Region-based and ignore labels are out of
    scope and raise.
    """
    names: Dict[int, str] = {}
    allowed = None
    if dataset_json is not None:
        with open(dataset_json, encoding="utf-8") as f:
            dj = json.load(f)
        for name, value in dj.get("labels", {}).items():
            if isinstance(value, (list, tuple)):
                raise EvaluationError(f"{dataset_json}: label {name!r} is region-based ({value}); region-based "
                                      f"evaluation is out of scope (docs/evaluation.md §1)")
            if name == "ignore":
                raise EvaluationError(f"{dataset_json}: ignore labels are not supported by nnUNetv2_semisup_evaluate;"
                                      f" use nnUNetv2_evaluate_folder for datasets with an ignore label")
            names[int(value)] = name
        if names:
            allowed = set(names)
    if labels is None:
        if not names:
            raise EvaluationError("no labels: no dataset.json was found in the reference folder, the prediction "
                                  "folder or the reference folder's parent; pass the foreground labels with -l 1 2 …")
        labels = sorted(k for k in names if k != 0)
    labels = [int(k) for k in labels]
    if any(k <= 0 for k in labels):
        raise EvaluationError(f"-l takes foreground labels (positive integers), got {labels}")
    if len(set(labels)) != len(labels):
        raise EvaluationError(f"-l lists a label twice: {labels}")
    if allowed is None:
        allowed = {0, *labels}
    else:
        missing = [k for k in labels if k not in allowed]
        if missing:
            raise EvaluationError(f"labels {missing} given with -l are not in {dataset_json} (labels {sorted(allowed)})")
    for k in labels:
        names.setdefault(k, f"label_{k}")
    return labels, {k: names[k] for k in labels}, allowed


def file_ending_from_dataset_json(dataset_json: Optional[str]) -> Optional[str]:
    if dataset_json is None:
        return None
    with open(dataset_json, encoding="utf-8") as f:
        return json.load(f).get("file_ending")


# ----------------------------------------------------------------------------------------------------- reading
def read_label_map(path: str) -> Tuple[np.ndarray, dict]:
    """Read a label map with SimpleITK; return (integer array in z,y,x order, geometry in SimpleITK x,y,z order)."""
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        raise EvaluationError(f"cannot read {path} with SimpleITK: {str(e).strip().splitlines()[-1]}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise EvaluationError(f"{path}: expected a single-channel label map, got "
                              f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.round(array)
        if not np.array_equal(rounded, array):
            raise EvaluationError(f"{path}: label maps must hold integer values, found non-integer voxel values")
        array = rounded.astype(np.int64)
    geometry = {"size": tuple(image.GetSize()), "spacing": tuple(image.GetSpacing()),
                "origin": tuple(image.GetOrigin()), "direction": tuple(image.GetDirection())}
    return array, geometry


def _close(a: Sequence[float], b: Sequence[float], rtol: float = GEOMETRY_RTOL) -> bool:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= rtol * np.maximum(1.0, np.maximum(np.abs(a),
                                                                                                 np.abs(b)))))


def check_geometry(case: str, ref_geo: dict, pred_geo: dict, mode: str) -> Optional[str]:
    """Fail unless the prediction has the reference's size (both modes) and spacing, origin, direction (mm mode).

    Tolerance: |a − b| ≤ 1e-4 · max(1, |a|, |b|) per component (docs/evaluation.md §1). In paper mode a spacing / origin /
    direction difference only returns a warning (distances are in voxels of the grid).
    """
    if tuple(ref_geo["size"]) != tuple(pred_geo["size"]):
        raise EvaluationError(f"case {case!r}: prediction size {pred_geo['size']} differs from reference size "
                              f"{ref_geo['size']} (x, y, z); predictions must be on the reference grid")
    bad = [k for k in ("spacing", "origin", "direction") if not _close(ref_geo[k], pred_geo[k])]
    if not bad:
        return None
    detail = "; ".join(f"{k}: prediction {tuple(round(v, 6) for v in pred_geo[k])} vs reference "
                       f"{tuple(round(v, 6) for v in ref_geo[k])}" for k in bad)
    if mode == "mm":
        raise EvaluationError(f"case {case!r}: prediction geometry differs from the reference ({detail}); mm mode "
                              f"needs identical geometry (relative tolerance {GEOMETRY_RTOL}, docs/evaluation.md §1)")
    return f"case {case!r}: geometry differs from the reference ({detail}); paper mode evaluates the voxel grid anyway"


def check_label_values(case: str, which: str, array: np.ndarray, allowed: set) -> None:
    """Fail if ``array`` holds a value outside ``allowed`` (the label set), naming the case and the values."""
    lo, hi = int(array.min()), int(array.max())
    if lo >= 0 and hi < 65536:
        present = np.flatnonzero(np.bincount(array.ravel().astype(np.intp, copy=False), minlength=1))
    else:
        present = np.unique(array)
    bad = sorted(int(v) for v in present if int(v) not in allowed)
    if bad:
        raise EvaluationError(f"case {case!r}: {which} contains label values {bad} outside the label set "
                              f"{sorted(allowed)}")


# ----------------------------------------------------------------------------------------------------- one case
def evaluate_case(case: str, ref_file: str, pred_file: Optional[str], labels: Sequence[int], allowed: set,
                  settings: EvalSettings, crop: bool = True) -> List[dict]:
    """Rows (one per label) of one case (docs/evaluation.md §6). ``pred_file=None`` = missing prediction, evaluated as an
    empty prediction under the empty-mask policy and flagged ``prediction_missing``."""
    ref, ref_geo = read_label_map(ref_file)
    check_label_values(case, "reference", ref, allowed)
    notes = []
    if pred_file is None:
        pred = np.zeros_like(ref)
    else:
        pred, pred_geo = read_label_map(pred_file)
        note = check_geometry(case, ref_geo, pred_geo, settings.mode)
        if note:
            notes.append(note)
        check_label_values(case, "prediction", pred, allowed)
    spacing_zyx = tuple(reversed(ref_geo["spacing"])) if settings.mode == "mm" else None
    try:
        rows = label_map_metrics(pred, ref, labels, spacing_zyx, settings, crop)
    except EmptyMaskError as e:
        raise EvaluationError(f"case {case!r}, {e}") from None
    spacing_txt = ";".join(format(s, ".6g") for s in ref_geo["spacing"]) if settings.mode == "mm" else \
        ";".join("1" for _ in ref_geo["spacing"])
    for row in rows:
        row.update(case=case, prediction_missing=pred_file is None, spacing=spacing_txt)
        if row["warning"]:
            notes.append(f"case {case!r}, label {row['label']}: {row['warning']}")
        row["warning"] = " | ".join(notes) if notes else None
    return rows


def _evaluate_case_star(args):
    return evaluate_case(*args)


# ----------------------------------------------------------------------------------------------------- folders
def evaluate_folders(ref_folder: str, pred_folder: str, labels: Optional[Sequence[int]] = None, mode: Optional[str] = None,
                     preset: Optional[str] = None, empty_policy: Optional[str] = None, lcc: Optional[bool] = None,
                     num_processes: int = 1, output_folder: Optional[str] = None, include_hd: bool = False,
                     crop: bool = True, dataset_json: Optional[str] = None, verbose: bool = False,
                     progress: bool = False) -> dict:
    """Evaluate every reference case of ``ref_folder`` against ``pred_folder`` (docs/evaluation.md §1-§6).

    Returns the summary dict (§6) with an extra key ``"rows"`` (the per-case rows, not written to summary.json).
    If ``output_folder`` is given, writes ``metrics_per_case.csv`` and ``summary.json`` there.
    Settings follow :func:`nnunetv2_semisup.evaluation.settings.resolve_settings`. Predictions missing for a
    reference case are listed in ``summary["missing_predictions"]``, warned about, and counted as empty predictions
    under the empty-mask policy (so the ``raise`` policy fails on them); predictions without a reference are listed
    in ``summary["unmatched_predictions"]`` and not evaluated.
    """
    settings = resolve_settings(mode, preset, empty_policy, lcc, include_hd)
    for what, folder in (("reference", ref_folder), ("prediction", pred_folder)):
        if not os.path.isdir(folder):
            raise EvaluationError(f"{what} folder {folder} not found")
    dataset_json = dataset_json or find_dataset_json(ref_folder, pred_folder)
    eval_labels, names, allowed = load_labels(dataset_json, labels)
    ending = file_ending_from_dataset_json(dataset_json)
    refs = list_cases(ref_folder, ending)
    if not refs:
        raise EvaluationError(f"no reference label maps found in {ref_folder}"
                              + (f" with file ending {ending!r} (from {dataset_json})" if ending else ""))
    preds = list_cases(pred_folder, ending)
    if not preds and ending:
        other = sorted(f for f in os.listdir(pred_folder) if any(f.endswith(e) for e in KNOWN_ENDINGS))
        if other:
            # every prediction would count as empty: a run with another file ending is refused, not scored 0
            raise EvaluationError(
                f"no prediction in {pred_folder} has the dataset's file ending {ending!r} (from {dataset_json}), but "
                f"{len(other)} label map(s) with another ending are there (e.g. {', '.join(other[:3])}). Predict "
                f"with the dataset's ending (nnUNetv2_predict writes it), or convert the files.")
    missing = sorted(c for c in refs if c not in preds)
    unmatched = sorted(c for c in preds if c not in refs)
    if missing:
        warnings.warn(f"{len(missing)} of {len(refs)} reference cases have no prediction in {pred_folder} and are "
                      f"counted as empty predictions (policy {settings.empty_policy!r}): {', '.join(missing)}",
                      stacklevel=2)
    if unmatched:
        warnings.warn(f"{len(unmatched)} predictions have no reference in {ref_folder} and are not evaluated: "
                      f"{', '.join(unmatched)}", stacklevel=2)
    jobs = [(c, refs[c], preds.get(c), eval_labels, allowed, settings, crop) for c in sorted(refs)]
    bar = progress_bar(total=len(jobs), desc="evaluating", quiet=not progress)
    if num_processes > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            per_case = []
            for result in pool.imap(_evaluate_case_star, jobs):  # in order, so the rows keep the case order
                per_case.append(result)
                bar.update()
    else:
        per_case = []
        for j in jobs:
            per_case.append(_evaluate_case_star(j))
            bar.update()
    bar.close()
    rows = [r for case_rows in per_case for r in case_rows]
    printed = set()
    for r in rows:
        r["label_name"] = names[r["label"]]
        if verbose and r["warning"] and r["warning"] not in printed:
            printed.add(r["warning"])
            print(f"warning: {r['warning']}", file=sys.stderr)
    summary = build_summary(rows, settings, names, ref_folder, pred_folder, missing, unmatched, dataset_json)
    if output_folder is not None:
        write_outputs(output_folder, rows, summary, settings)
        summary["output_folder"] = os.path.abspath(output_folder)
    summary["rows"] = rows
    return summary


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("nnunetv2_semisup")
    except Exception:  # not installed (source checkout)
        from nnunetv2_semisup import __version__
        return __version__


def policy_notes(settings: EvalSettings) -> List[str]:
    """Human-readable notes stating what the empty-mask policy does (docs/evaluation.md §4: every output states it)."""
    notes = {
        "penalty": "both empty -> all NaN (excluded from means, counted); one empty -> Dice 0, Jaccard 0, distances "
                   "= diagonal of the reference image extent",
        "nan": "both empty -> all NaN; one empty -> Dice 0, Jaccard 0, distances NaN (excluded, counted)",
        "zeros": "empty prediction -> Dice, Jaccard, HD95, ASD all 0 (optimistic, reproduced for parity with the "
                 "UA-MT/MC-Net/BCP/CML scripts); empty reference with non-empty prediction -> Dice 0, Jaccard 0, "
                 "distances NaN",
        "dhc": "both empty -> Dice 0.01 and Jaccard 0.01 (the DHC/SKCDF scripts store 1 on a 0-100 scale; a bug "
               "reproduced exactly), distances 0; one empty -> Dice 0, Jaccard 0, distances 128",
        "raise": "any empty mask is an error (plain medpy)",
    }
    out = [f"empty-mask policy {settings.empty_policy!r}: {notes[settings.empty_policy]}"]
    if settings.preset:
        out.append(f"preset {settings.preset!r} reproduces {PRESETS[settings.preset][2]}")
    if settings.mode == "paper":
        out.append("paper mode: distances in voxels of the evaluated grid; comparable to a paper only on the "
                   "paper's grid")
    return out


def build_summary(rows: List[dict], settings: EvalSettings, names: Dict[int, str], ref_folder: str,
                  pred_folder: str, missing: Sequence[str] = (), unmatched: Sequence[str] = (),
                  dataset_json: Optional[str] = None) -> dict:
    """The summary.json dict of docs/evaluation.md §6 (NaN written as null).

    Every §6 key is present; the extra keys are :data:`SUMMARY_EXTENSION_KEYS`. Per label, ``n_nan`` is the number
    of cases with at least one NaN metric and ``n_nan_per_metric`` the count per metric. The distance key of the
    label entries and of ``foreground_mean`` is ``asd`` in paper mode and ``assd`` in mm mode (as the CSV column;
    ``asd_definition`` states which).
    """
    agg = aggregate_rows(rows, list(names), settings.metric_keys)
    empty_counts = {k: sum(1 for r in rows if r["empty_case"] == k) for k in ("pred_empty", "ref_empty",
                                                                             "both_empty")}
    return {
        "generator": "nnunetv2_semisup", "version": _version(),
        "mode": settings.mode, "preset": settings.preset, "units": settings.units,
        "empty_policy": settings.empty_policy, "lcc": settings.lcc,
        "hd95_definition": settings.hd95_definition, "asd_definition": settings.asd_definition,
        "metrics": list(settings.metric_keys),
        "reference_folder": os.path.abspath(ref_folder), "prediction_folder": os.path.abspath(pred_folder),
        "dataset_json": os.path.abspath(dataset_json) if dataset_json else None,
        "n_cases": len({r["case"] for r in rows}),
        "labels": {str(k): v for k, v in names.items()},
        "mean": agg["mean"], "std": agg["std"], "median": agg["median"],
        "foreground_mean": agg["foreground_mean"],
        "std_ddof": 0,
        "missing_predictions": list(missing), "unmatched_predictions": list(unmatched),
        "empty_cases": empty_counts,
        "notes": policy_notes(settings),
        "per_case_csv": PER_CASE_CSV,
    }


def csv_columns(settings: EvalSettings) -> List[str]:
    """Columns of metrics_per_case.csv (docs/evaluation.md §6; ``hd`` only with include_hd, ``prediction_missing`` added)."""
    return (["case", "label", "label_name", "mode", "preset", "empty_policy"] + list(settings.metric_keys)
            + ["n_ref", "n_pred", "n_ref_surface", "n_pred_surface", "empty_case", "prediction_missing",
               "lcc_applied", "spacing"])


def _csv_value(v):
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else repr(float(v))
    return "" if v is None else v


def write_outputs(output_folder: str, rows: List[dict], summary: dict, settings: EvalSettings) -> None:
    """Write metrics_per_case.csv and summary.json (docs/evaluation.md §6) into ``output_folder``."""
    os.makedirs(output_folder, exist_ok=True)
    columns = csv_columns(settings)
    with open(os.path.join(output_folder, PER_CASE_CSV), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            full = dict(r, mode=settings.mode, preset=settings.preset or "", empty_policy=settings.empty_policy)
            writer.writerow([_csv_value(full[c]) for c in columns])
    clean = {k: v for k, v in summary.items() if k != "rows"}
    with open(os.path.join(output_folder, SUMMARY_JSON), "w", encoding="utf-8") as f:
        json.dump(nan_to_none(clean), f, indent=2, allow_nan=False)


def nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def default_output_folder(pred_folder: str, settings: EvalSettings) -> str:
    """``<pred>/semisup_eval_mm`` or ``<pred>/semisup_eval_paper[_<preset>]`` — never nnU-Net's own summary.json."""
    suffix = settings.mode + (f"_{settings.preset}" if settings.preset else "")
    return os.path.join(pred_folder, f"semisup_eval_{suffix}")
