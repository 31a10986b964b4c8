"""NIH Pancreas-CT (TCIA) → nnU-Net raw dataset with the published splits.

Variants:
- ``pancreas_tcia_dicom``: ``Pancreas-CT/PANCREAS_0001/<study>/<series>/*.dcm`` + labels
  ``TCIA_pancreas_labels-02-05-2017/label0001.nii.gz`` (or ``Labels/``, ``Pancreas-CT-Label/``). Slices are ordered
  by position along the slice normal (SimpleITK/GDCM), never by InstanceNumber.
- ``pancreas_tcia_nifti``: the same with the images as NIfTI (``PANCREAS_0001.nii.gz``, ``image0001.nii.gz``, ...).
- ``pancreas_mcnet_h5``: MC-Net's ``Pancreas_h5/image0001_norm.h5`` (x, y, z); 1 mm resampled, x/y GT-cropped.
- ``pancreas_coranet_h5``: CoraNet/BCP ``0001.h5`` (x, y, z); 3D GT-cropped, slice spacing unreliable.

Raw labels are placed on the image grid by physical coordinates and then checked: >= 95 % of label voxels must have
image intensity > -500 HU. If not, the label with its in-plane axes swapped and/or its slice axis flipped is tried;
exactly one variant must pass (the repair is recorded in dataset.json), otherwise the case is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .common import (CaseData, DatasetInfo, SourceCase, add_common_options, check_variant, cli, common_split,
                     converter_record, detect_variant, h5_source_case, label_to_uint8, make_plan, parse_spacing,
                     read_dicom_series, read_image, require_dir, run_conversion, same_grid)
from .errors import ConversionError
from .splits import PANCREAS_SPLITS, normalise_numeric_id, pancreas_split

VARIANTS = ("pancreas_tcia_dicom", "pancreas_tcia_nifti", "pancreas_mcnet_h5", "pancreas_coranet_h5")
LABELS = {"background": 0, "pancreas": 1}
BODY_HU = -500.0
BODY_FRACTION = 0.95
HINTS = ("  pancreas_tcia_dicom: 'Pancreas-CT/PANCREAS_0001/.../*.dcm' + 'TCIA_pancreas_labels-02-05-2017/"
         "label0001.nii.gz'\n"
         "  pancreas_tcia_nifti: 'Pancreas-CT/PANCREAS_0001.nii.gz' (or image0001.nii.gz) + label0001.nii.gz\n"
         "  pancreas_mcnet_h5:   'Pancreas_h5/image0001_norm.h5' (MC-Net)\n"
         "  pancreas_coranet_h5: '0001.h5' (CoraNet / BCP)")

RE_DICOM_DIR = re.compile(r"^PANCREAS_(\d{4})$", re.IGNORECASE)
RE_NIFTI_IMAGE = re.compile(r"^(?:PANCREAS_|image|img)?(\d{4})\.nii(?:\.gz)?$", re.IGNORECASE)
RE_LABEL = re.compile(r"^label(\d{4})\.nii(?:\.gz)?$", re.IGNORECASE)
RE_MCNET = re.compile(r"^image(\d{4})_norm\.h5$")
RE_CORANET = re.compile(r"^(\d{4})\.h5$")
MAX_DEPTH = 4


# --------------------------------------------------------------------------------------------------- discovery
class Scan:
    """What the input folder holds (one walk, not descending into the per-patient DICOM folders)."""

    def __init__(self, root: str):
        self.dicom: Dict[str, str] = {}
        self.nifti: Dict[str, str] = {}
        self.labels: Dict[str, str] = {}
        self.mcnet: Dict[str, str] = {}
        self.coranet: Dict[str, str] = {}
        self.msd = False
        for d, dirs, files in os.walk(root):
            depth = os.path.relpath(d, root).count(os.sep) + (0 if d == root else 1)
            for sub in list(dirs):
                m = RE_DICOM_DIR.match(sub)
                if m:
                    self.dicom.setdefault(m.group(1), os.path.join(d, sub))
            dirs[:] = sorted(x for x in dirs if not RE_DICOM_DIR.match(x)) if depth < MAX_DEPTH else []
            for f in sorted(files):
                full = os.path.join(d, f)
                if (m := RE_LABEL.match(f)):
                    self.labels.setdefault(m.group(1), full)
                elif (m := RE_MCNET.match(f)):
                    self.mcnet.setdefault(m.group(1), full)
                elif (m := RE_CORANET.match(f)):
                    self.coranet.setdefault(m.group(1), full)
                elif (m := RE_NIFTI_IMAGE.match(f)):
                    self.nifti.setdefault(m.group(1), full)
                elif re.match(r"^pancreas_\d{3}\.nii\.gz$", f):
                    self.msd = True   # Decathlon Task07 names (3 digits, no channel suffix)
                elif f == "dataset.json":
                    self.msd = self.msd or _is_msd_json(full)


def _is_msd_json(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            dj = json.load(fh)
    except (OSError, ValueError):
        return False
    labels = dj.get("labels", {})
    return "pancreas" in str(dj.get("name", "")).lower() and any(
        str(v).lower() in ("cancer", "tumour", "tumor") for v in labels.values()) if isinstance(labels, dict) else False


def _refuse_msd(scan: Scan, root: str) -> None:
    if scan.msd:
        raise ConversionError(
            f"{root} looks like the Medical Segmentation Decathlon Task07_Pancreas (files pancreas_XXX.nii.gz): "
            f"different patients and labels (pancreas + tumour). This converter handles NIH Pancreas-CT (TCIA) and "
            f"its MC-Net/CoraNet h5 releases only; for Task07 use nnU-Net's own Task07 conversion.")


DETECTORS = {
    "pancreas_tcia_dicom": lambda s: bool(s.dicom),
    "pancreas_tcia_nifti": lambda s: bool(s.nifti) and not s.dicom,
    "pancreas_mcnet_h5": lambda s: bool(s.mcnet),
    "pancreas_coranet_h5": lambda s: bool(s.coranet),
}


# --------------------------------------------------------------------------------------------------- geometry
def _inside_fraction(body: np.ndarray, lab: np.ndarray, n_expected: int) -> float:
    """Fraction of the label's voxels that lie inside the body. Voxels lost by resampling count as outside, so a
    label that lands outside the image grid cannot pass as an empty label."""
    fg = lab > 0
    if n_expected == 0:
        return 1.0
    return float(body[fg].sum()) / float(max(n_expected, int(fg.sum())))


def place_label(case: str, image: sitk.Image, label: sitk.Image) -> Tuple[sitk.Image, Dict[str, object]]:
    """Put a raw TCIA label on the image grid and verify it overlays the body; try the documented repairs."""
    if image.GetSize() != label.GetSize():
        raise ConversionError(f"case {case}: image and label sizes differ: image {image.GetSize()}, label "
                              f"{label.GetSize()} (x, y, z); expected identical sizes")
    label = label_to_uint8(case, label, allowed=tuple(LABELS.values()))
    body = sitk.GetArrayViewFromImage(image) > BODY_HU
    raw = sitk.GetArrayFromImage(label)
    if same_grid(image, label):
        primary, how = raw, "geometry copied (grids agree)"
    else:
        res = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        primary, how = sitk.GetArrayFromImage(res), "resampled onto the image grid by physical coordinates"
    n_fg = int((raw > 0).sum())
    frac = _inside_fraction(body, primary, n_fg)
    notes: Dict[str, object] = {}
    if frac < BODY_FRACTION:
        candidates = {}
        if not same_grid(image, label):
            candidates["index_order_as_stored"] = raw
        if raw.shape[1] == raw.shape[2]:
            candidates["swap_xy"] = np.transpose(raw, (0, 2, 1))
            candidates["swap_xy+flip_z"] = np.transpose(raw, (0, 2, 1))[::-1]
        candidates["flip_z"] = raw[::-1]
        passing = {k: v for k, v in candidates.items() if _inside_fraction(body, v, n_fg) >= BODY_FRACTION}
        if len(passing) != 1:
            detail = ("none of the repairs (" + ", ".join(candidates) + ") brings it there") if not passing else \
                f"several repairs pass ({', '.join(passing)}), so the right one is ambiguous"
            raise ConversionError(
                f"case {case}: the label does not overlay the image: only {100 * frac:.1f}% of the label voxels have "
                f"image intensity > {BODY_HU:g} HU (expected >= {100 * BODY_FRACTION:g}%), and {detail}. Check that "
                f"the label file belongs to this scan.")
        name, primary = next(iter(passing.items()))
        notes = {"label_repair": name, "inside_body_before": round(frac, 4)}
        how = f"repaired ({name})"
    out = sitk.GetImageFromArray(np.ascontiguousarray(primary).astype(np.uint8))
    out.CopyInformation(image)
    notes.setdefault("label_placement", how)
    return out, notes


DUPLICATE_CASES = ("0025", "0070")  # duplicate scans of other patients, removed from later TCIA releases


def _raw_case(source_id: str, image_path: str, label_path: Optional[str], fmt: str, state: dict) -> SourceCase:
    case = f"pancreas_{source_id}"

    def load(with_label: bool) -> CaseData:
        img = read_dicom_series(image_path, case) if fmt == "dicom" else read_image(image_path, f"image of case {case}")
        if img.GetDimension() != 3:
            raise ConversionError(f"case {case}: expected a 3D image, got {img.GetDimension()}D ({image_path})")
        label, notes = None, {}
        if label_path is not None and (with_label or state["write_unlabeled_labels"]):
            label, notes = place_label(case, img, read_image(label_path, f"label of case {case}"))
            if "label_repair" not in notes:
                notes = {}
        elif with_label:
            raise ConversionError(f"case {case}: label missing; expected label{source_id}.nii.gz in the labels folder")
        return CaseData([img], label, notes)

    name = os.path.basename(image_path.rstrip(os.sep))
    return SourceCase(source_id, name, load, label_path is not None,
                      label_path or f"label{source_id}.nii.gz in the labels folder")


# --------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_semisup_convert_Pancreas", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, PANCREAS_SPLITS, "mcnet_pancreas82", VARIANTS, "PancreasCT")
    return p


def run(argv: Optional[Sequence[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    check_variant(args.variant, VARIANTS)
    input_dir = require_dir(args.input)
    scan = Scan(input_dir)
    _refuse_msd(scan, input_dir)
    variant = args.variant
    if variant == "auto":
        variant = detect_variant(input_dir, {k: (lambda _d, f=f: f(scan)) for k, f in DETECTORS.items()},
                                 "Pancreas-CT", HINTS)
    assumed = parse_spacing(args.assume_spacing)
    state = {"write_unlabeled_labels": args.write_unlabeled_labels}
    cases: Dict[str, SourceCase] = {}
    if variant in ("pancreas_tcia_dicom", "pancreas_tcia_nifti"):
        if assumed is not None:
            raise ConversionError("--assume-spacing is for sources without geometry; the TCIA images carry their "
                                  "spacing")
        images = scan.dicom if variant == "pancreas_tcia_dicom" else scan.nifti
        if not images:
            raise ConversionError(f"{input_dir}: no {variant} images found. Expected:\n{HINTS}")
        if not scan.labels:
            raise ConversionError(f"{input_dir}: no label files labelXXXX.nii.gz found (TCIA_pancreas_labels-"
                                  f"02-05-2017/ or Labels/)")
        orphans = sorted(set(scan.labels) - set(images))
        # the label archive TCIA_pancreas_labels-02-05-2017 still has label0025/label0070, while later image
        # releases removed those duplicate scans: an 80-image download with 82 labels is the normal case
        ignored = [o for o in orphans if o in DUPLICATE_CASES]
        if ignored:
            print(f"NOTE: ignoring {', '.join('label' + o + '.nii.gz' for o in ignored)}: the image release has no "
                  f"such case (duplicate scans removed by TCIA).")
        orphans = [o for o in orphans if o not in DUPLICATE_CASES]
        if orphans:
            raise ConversionError(f"labels without an image: {', '.join('label' + o for o in orphans)}; expected "
                                  f"images for cases {', '.join('pancreas_' + o for o in orphans)}")
        fmt = "dicom" if variant == "pancreas_tcia_dicom" else "nifti"
        for sid, path in sorted(images.items()):
            cases[sid] = _raw_case(sid, path, scan.labels.get(sid), fmt, state)
        record = {"gt_cropped": False, "resized": False, "spacing_source": "header", "intensity": "raw HU",
                  "label_check": f">= {100 * BODY_FRACTION:g}% of label voxels above {BODY_HU:g} HU"}
        channel = "CT"
    else:
        files = scan.mcnet if variant == "pancreas_mcnet_h5" else scan.coranet
        if not files:
            raise ConversionError(f"{input_dir}: no {variant} files found. Expected:\n{HINTS}")
        spacing = assumed or (1.0, 1.0, 1.0)
        for sid, path in sorted(files.items()):
            cases[sid] = h5_source_case("pancreas", sid, os.path.basename(path), path, spacing, allowed=(0, 1),
                                        state=state)
        channel = "noNorm"
        if variant == "pancreas_mcnet_h5":
            record = {"gt_cropped": True, "resized": False, "spacing_source": "assumed",
                      "assumed_spacing": list(spacing),
                      "intensity": "HU window [-125, 275] -> [0, 1], then z-scored per volume (MC-Net)",
                      "crop": "x/y cropped to the label box +- 25 voxels (padded to >= 96), z kept (test cases too)"}
        else:
            record = {"gt_cropped": True, "resized": False, "spacing_source": "assumed",
                      "assumed_spacing": list(spacing),
                      "intensity": "[0,1] after HU window [-125,275] (min-max)",
                      "spacing_note": "slice axis was not truly resampled by CoraNet's preprocessing: z spacing "
                                      "unreliable",
                      "crop": "3D crop to the label box +- 25 voxels (minimum 96^3), test cases too"}
    record["num_source_cases"] = len(cases)
    record["release"] = ("82 cases (duplicates 0025 and 0070 present)" if set(DUPLICATE_CASES) <= set(cases)
                         else "80 cases (duplicates 0025/0070 removed)" if not (set(DUPLICATE_CASES) & set(cases))
                         else "partial")
    split = common_split(args, pancreas_split, list(cases), normalise_numeric_id)
    plan = make_plan(args, split, cases, normalise_numeric_id)
    info = DatasetInfo("Pancreas-CT", variant, "pancreas", dict(LABELS), {"0": channel},
                       description="NIH Pancreas-CT (TCIA), converted by nnunetv2_semisup",
                       reference="Roth et al., Data From Pancreas-CT, The Cancer Imaging Archive, "
                                 "doi:10.7937/K9/TCIA.2016.tNB1kqBU",
                       licence="CC BY 3.0 (TCIA Pancreas-CT)", record=record)
    return run_conversion(args, info, cases, plan, split.name,
                          converter_record(argv, "nnUNetv2_semisup_convert_Pancreas"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
