"""Left Atrium 2018 (Atrial Segmentation Challenge, LGE-MRI) → nnU-Net raw dataset with the published splits.

Variants:
- ``la_raw_nrrd``: the challenge download, ``Training Set/<ID>/lgemri.nrrd`` + ``laendo.nrrd`` (values {0, 255} →
  {0, 1}); read with SimpleITK; header spacing, or 0.625³ mm when the header has the unit default.
- ``la_uamt_h5``: UA-MT's ``2018LA_Seg_Training Set/<ID>/mri_norm2.h5`` (or flat ``<ID>.h5``), keys ``image``
  (float32, z-scored) and ``label`` (uint8), arrays (x, y, z) → transposed to SimpleITK (z, y, x); spacing 0.625³
  assumed; x/y cropped around each case's ground truth (also test cases: ``gt_cropped``).
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .common import (CaseData, DatasetInfo, SourceCase, add_common_options, check_variant, cli, common_split,
                     converter_record, detect_variant, h5_source_case, label_to_uint8, make_plan, parse_spacing,
                     put_label_on_image_grid, read_image, require_dir, run_conversion, warn)
from .errors import ConversionError
from .splits import LA_SPLITS, la_split, normalise_la_id

VARIANTS = ("la_raw_nrrd", "la_uamt_h5")
LA_SPACING = (0.625, 0.625, 0.625)
LABELS = {"background": 0, "left_atrium": 1}
H5_DIR = "2018LA_Seg_Training Set"
HINTS = ("  la_raw_nrrd: 'Training Set/<ID>/lgemri.nrrd' + 'laendo.nrrd' (the challenge download), or the ID folders "
         "themselves\n"
         "  la_uamt_h5:  '2018LA_Seg_Training Set/<ID>/mri_norm2.h5' (UA-MT data), '<ID>/mri_norm2.h5' or '<ID>.h5'")


# --------------------------------------------------------------------------------------------------- discovery
def _id_dirs_with(folder: str, file_name: str) -> Dict[str, str]:
    out = {}
    if os.path.isdir(folder):
        for d in sorted(os.listdir(folder)):
            if os.path.isfile(os.path.join(folder, d, file_name)):
                out[d] = os.path.join(folder, d)
    return out


def raw_training_dir(input_dir: str) -> Optional[str]:
    if os.path.isdir(os.path.join(input_dir, "Training Set")):
        return os.path.join(input_dir, "Training Set")
    if _id_dirs_with(input_dir, "lgemri.nrrd"):
        return input_dir
    return None


def h5_files(input_dir: str) -> Dict[str, str]:
    base = os.path.join(input_dir, H5_DIR) if os.path.isdir(os.path.join(input_dir, H5_DIR)) else input_dir
    out = {k: os.path.join(v, "mri_norm2.h5") for k, v in _id_dirs_with(base, "mri_norm2.h5").items()}
    for f in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if f.endswith(".h5") and os.path.isfile(os.path.join(base, f)):
            out.setdefault(f[:-3], os.path.join(base, f))
    return out


DETECTORS = {
    "la_raw_nrrd": lambda d: raw_training_dir(d) is not None,
    "la_uamt_h5": lambda d: bool(h5_files(d)),
}


# --------------------------------------------------------------------------------------------------- loaders
def _raw_case(case_dir: str, source_id: str, state: dict, assumed: Sequence[float]) -> SourceCase:
    img_path = os.path.join(case_dir, "lgemri.nrrd")
    lab_path = os.path.join(case_dir, "laendo.nrrd")
    case = f"la_{source_id}"

    def load(with_label: bool) -> CaseData:
        img = read_image(img_path, f"image of case {case}")
        unit = np.allclose(img.GetSpacing(), 1.0)
        if unit:
            img.SetSpacing(tuple(assumed))
            state["assumed_cases"].append(case)
        label = None
        if os.path.isfile(lab_path) and (with_label or state["write_unlabeled_labels"]):
            lab = read_image(lab_path, f"label of case {case}")
            if unit and np.allclose(lab.GetSpacing(), 1.0):
                lab.SetSpacing(tuple(assumed))
            lab = label_to_uint8(case, lab, allowed=(0, 1), remap={255: 1})
            label = put_label_on_image_grid(case, img, lab)
        elif with_label:
            raise ConversionError(f"case {case}: label missing; expected {lab_path}")
        return CaseData([img], label)

    return SourceCase(source_id, source_id, load, os.path.isfile(lab_path), lab_path)


def _h5_case(path: str, source_id: str, spacing: Sequence[float], state: dict) -> SourceCase:
    name = os.path.relpath(path, os.path.dirname(os.path.dirname(path))) if path.endswith("mri_norm2.h5") \
        else os.path.basename(path)
    return h5_source_case("la", source_id, name, path, spacing, allowed=(0, 1), remap={255: 1}, state=state)


# --------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_semisup_convert_LA", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, LA_SPLITS, "uamt_la", VARIANTS, "LA")
    p.add_argument("--la-testing-set", choices=("ignore", "test", "unlabeled"), default="ignore",
                   help="raw download only: what to do with the 'Testing Set' folder: ignore (default; not part of "
                        "the UA-MT split), test (imagesTs/labelsTs, needs laendo.nrrd), unlabeled (imagesUnlabeled)")
    return p


def run(argv: Optional[Sequence[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    check_variant(args.variant, VARIANTS)
    input_dir = require_dir(args.input)
    variant = args.variant if args.variant != "auto" else detect_variant(input_dir, DETECTORS, "Left Atrium", HINTS)
    assumed = parse_spacing(args.assume_spacing) or LA_SPACING
    cases: Dict[str, SourceCase] = {}
    extra_test: List[str] = []
    extra_unlabeled: List[str] = []
    state = {"assumed_cases": [], "write_unlabeled_labels": args.write_unlabeled_labels}

    if variant == "la_raw_nrrd":
        train_dir = raw_training_dir(input_dir)
        if train_dir is None:
            raise ConversionError(f"{input_dir}: no 'Training Set/<ID>/lgemri.nrrd' found (variant la_raw_nrrd)")
        for d in sorted(os.listdir(train_dir)):
            full = os.path.join(train_dir, d)
            if not os.path.isdir(full):
                continue
            if not os.path.isfile(os.path.join(full, "lgemri.nrrd")):
                raise ConversionError(f"case la_{d}: image missing; expected {os.path.join(full, 'lgemri.nrrd')}")
            cases[d] = _raw_case(full, d, state, assumed)
        training_ids = list(cases)
        test_dir = os.path.join(os.path.dirname(train_dir), "Testing Set")
        if args.la_testing_set != "ignore":
            if not os.path.isdir(test_dir):
                raise ConversionError(f"--la-testing-set {args.la_testing_set}: folder not found: {test_dir}")
            for d, full in _id_dirs_with(test_dir, "lgemri.nrrd").items():
                if d in cases:
                    raise ConversionError(f"case la_{d} is in both the Training Set and the Testing Set")
                cases[d] = _raw_case(full, d, state, assumed)
                (extra_test if args.la_testing_set == "test" else extra_unlabeled).append(d)
        channel = "MRI"
        record = {"gt_cropped": False, "resized": False, "spacing_source": "header",
                  "intensity": "raw LGE-MRI intensities (nnU-Net z-score normalisation)"}
    else:
        if args.la_testing_set != "ignore":
            raise ConversionError("--la-testing-set needs the raw challenge download (la_raw_nrrd); the UA-MT h5 "
                                  "release has no Testing Set")
        files = h5_files(input_dir)
        if not files:
            raise ConversionError(f"{input_dir}: no UA-MT h5 files found (variant la_uamt_h5). Expected:\n{HINTS}")
        for sid, path in files.items():
            cases[normalise_la_id(sid)] = _h5_case(path, normalise_la_id(sid), assumed, state)
        training_ids = list(cases)
        channel = "noNorm"
        record = {"gt_cropped": True, "resized": False, "spacing_source": "assumed", "assumed_spacing": list(assumed),
                  "intensity": "z-scored per volume (UA-MT), mean/std of the uncropped volume",
                  "crop": "x/y cropped around each case's own ground truth with a random 10-20 voxel margin; all "
                          "slices kept (test cases too)"}
    split = common_split(args, la_split, training_ids, normalise_la_id)
    plan = make_plan(args, split, cases, normalise_la_id, extra_test, extra_unlabeled, available=training_ids)
    info = DatasetInfo("LA2018", variant, "la", dict(LABELS), {"0": channel},
                       description="Left Atrium 2018 Atrial Segmentation Challenge (LGE-MRI), converted by "
                                   "nnunetv2_semisup",
                       reference="Xiong et al., A global benchmark of algorithms for segmenting the left atrium from "
                                 "late gadolinium-enhanced cardiac MRI, MedIA 2021",
                       licence="see the 2018 Atrial Segmentation Challenge data terms", record=record)
    if variant == "la_raw_nrrd" and args.la_testing_set != "ignore":
        info.record["la_testing_set"] = args.la_testing_set

    def finalise() -> None:
        if variant == "la_raw_nrrd" and state["assumed_cases"]:
            info.record["spacing_source"] = "assumed"
            info.record["assumed_spacing"] = list(assumed)
            if len(state["assumed_cases"]) < len(plan.labeled) + len(plan.unlabeled) + len(plan.validation) + \
                    len(plan.test) + len(plan.extra_unlabeled):
                info.record["assumed_spacing_cases"] = list(state["assumed_cases"])
            warn(f"{len(state['assumed_cases'])} LA case(s) have the unit default spacing in their header; "
                 f"spacing {list(assumed)} mm assumed")

    return run_conversion(args, info, cases, plan, split.name, converter_record(argv, "nnUNetv2_semisup_convert_LA"),
                          finalise=finalise)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
