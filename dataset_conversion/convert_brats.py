"""BraTS 2019 (brain tumour MRI) → nnU-Net raw dataset with the SSL4MIS / URPC split of CML Table 3.

Variants:
- ``brats_raw``: the official training release ``MICCAI_BraTS_2019_Data_Training/{HGG,LGG}/<ID>/<ID>_{flair,t1,t1ce,
  t2,seg}.nii[.gz]`` (or the subject folders directly below the input). Native geometry (1 mm, 240 × 240 × 155).
  Subjects below a folder whose name contains "Validation" (no seg) are the 125 validation-set subjects, used only with
  ``--brats-validation-set unlabeled``.
- ``brats_ssl4mis_h5``: the SSL4MIS h5 release ``BraTS2019/data/<ID>.h5`` (FLAIR cropped to the brain box, z-scored;
  label whole tumour {0, 1}; arrays in SimpleITK (z, y, x) order; no geometry). 1 mm spacing; with ``--raw-dir`` the
  brain box is recomputed on the raw FLAIR (exclusive upper bound, as the h5 writer did) and the origin and direction
  are taken from the raw header at the box corner.

Split ``urpc_brats``: train 250 / val 25 (validation fold) / test 60; labeled = the first 25 (default) or 50 of train.
Target ``wt`` (default): whole tumour = seg > 0; ``subregions``: 1 oedema, 2 necrotic/non-enhancing, 3 enhancing.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .common import (CaseData, DatasetInfo, SourceCase, add_common_options, assumed_geometry, check_variant, cli,
                     common_split, converter_record, detect_variant, image_from_array_zyx, label_to_uint8, make_plan,
                     parse_spacing, put_label_on_image_grid, read_h5_arrays, read_image, require_dir, run_conversion)
from .errors import ConversionError
from .splits import BRATS_SPLITS, brats_split, normalise_brats_id

VARIANTS = ("brats_raw", "brats_ssl4mis_h5")
HINTS = ("  brats_raw:        'MICCAI_BraTS_2019_Data_Training/HGG/<ID>/<ID>_flair.nii.gz' (+ _t1, _t1ce, _t2, _seg)\n"
         "  brats_ssl4mis_h5: 'BraTS2019/data/<ID>.h5' with keys image, label (SSL4MIS release)")
RE_SUBJECT = re.compile(r"^BraTS19_[A-Za-z0-9]+_[A-Za-z0-9]+_\d+$")
MODALITIES = {"flair": ("flair",), "all": ("t1", "t1ce", "t2", "flair")}   # nnU-Net's BraTS channel order
TARGETS = {"wt": {"background": 0, "whole_tumor": 1},
           "subregions": {"background": 0, "edema": 1, "non_enhancing_and_necrosis": 2, "enhancing_tumor": 3}}
RAW_SEG_VALUES = (0, 1, 2, 4)
SEG_REMAP = {"wt": {1: 1, 2: 1, 4: 1}, "subregions": {2: 1, 1: 2, 4: 3}}


# --------------------------------------------------------------------------------------------------- discovery
def _nii(folder: str, stem: str) -> Optional[str]:
    for e in (".nii.gz", ".nii"):
        p = os.path.join(folder, stem + e)
        if os.path.isfile(p):
            return p
    return None


def find_raw(root: str) -> Dict[str, tuple]:
    """{subject ID: (folder, is_validation_set)} for every subject folder with a FLAIR file (up to 4 levels deep)."""
    out: Dict[str, tuple] = {}
    for d, dirs, _ in os.walk(root):
        rel = os.path.relpath(d, root)
        if rel.count(os.sep) >= 3:
            dirs[:] = []
        name = os.path.basename(d)
        if RE_SUBJECT.match(name) and _nii(d, f"{name}_flair"):
            sid = normalise_brats_id(name)
            if sid in out:
                raise ConversionError(f"subject {sid} found twice: {out[sid][0]} and {d}")
            out[sid] = (d, "validation" in rel.lower())
            dirs[:] = []
    return out


def h5_dir(root: str) -> Optional[str]:
    for d in (os.path.join(root, "data"), os.path.join(root, "BraTS2019", "data"), root):
        if os.path.isdir(d) and any(f.endswith(".h5") and RE_SUBJECT.match(f[:-3]) for f in os.listdir(d)):
            return d
    return None


# --------------------------------------------------------------------------------------------------- loaders
def brats_label(case: str, seg: sitk.Image, target: str) -> sitk.Image:
    """Raw seg {0, 1, 2, 4} → the target's labels; any other raw value is an error."""
    checked = label_to_uint8(case, seg, allowed=RAW_SEG_VALUES, what="seg")
    return label_to_uint8(case, checked, allowed=tuple(TARGETS[target].values()), remap=SEG_REMAP[target])


def _raw_case(sid: str, folder: str, modalities: Sequence[str], target: str, state: dict) -> SourceCase:
    seg = _nii(folder, f"{sid}_seg")

    def load(with_label: bool) -> CaseData:
        images = []
        for m in modalities:
            path = _nii(folder, f"{sid}_{m}")
            if path is None:
                raise ConversionError(f"case {sid}: {m} image missing; expected {os.path.join(folder, sid + '_' + m)}"
                                      f".nii.gz")
            images.append(read_image(path, f"{m} image of case {sid}"))
        lab = None
        if seg is not None and (with_label or state["write_unlabeled_labels"]):
            lab = put_label_on_image_grid(sid, images[0], brats_label(sid, read_image(seg, f"seg of {sid}"), target))
        elif with_label:
            raise ConversionError(f"case {sid}: label missing; expected {os.path.join(folder, sid + '_seg.nii.gz')}")
        return CaseData(images, lab)

    return SourceCase(sid, os.path.relpath(folder, os.path.dirname(os.path.dirname(folder))), load, seg is not None,
                      os.path.join(folder, f"{sid}_seg.nii.gz"))


def brain_box(flair: np.ndarray) -> tuple:
    """(start, stop) per (z, y, x) axis of FLAIR != 0, with the SSL4MIS writer's *exclusive* upper bound (the last
    brain slice/row/column is dropped)."""
    nz = np.nonzero(flair)
    if not nz[0].size:
        return None
    return tuple((int(a.min()), int(a.max())) for a in nz)


def _h5_case(sid: str, path: str, geometry, state: dict) -> SourceCase:
    def load(with_label: bool) -> CaseData:
        want = with_label or state["write_unlabeled_labels"]
        image, label = read_h5_arrays(sid, path, want, "z, y, x")
        spacing, origin, direction = geometry(sid, image.shape)
        img = image_from_array_zyx(image.astype(np.float32), spacing, origin, direction)
        lab = None
        if label is not None:
            lab = label_to_uint8(sid, image_from_array_zyx(label, spacing, origin, direction), allowed=(0, 1))
        return CaseData([img], lab)

    return SourceCase(sid, os.path.basename(path), load, True, f"key 'label' in {path}")


def raw_box_geometry(raw: Dict[str, tuple], boxes: Dict[str, List[int]]):
    """geometry(sid, h5 shape) from the raw FLAIR: spacing and direction of the header, origin at the brain-box corner;
    the recomputed box must have the h5 shape."""

    def geometry(sid, shape):
        if sid not in raw:
            raise ConversionError(f"case {sid}: --raw-dir has no subject folder {sid} with a FLAIR image")
        flair = read_image(_nii(raw[sid][0], f"{sid}_flair"), f"raw FLAIR of case {sid}")
        box = brain_box(sitk.GetArrayViewFromImage(flair))
        size = tuple(b - a for a, b in box) if box else None
        if size != tuple(shape):
            raise ConversionError(f"case {sid}: the brain box of the raw FLAIR (exclusive upper bound, (z, y, x)) has "
                                  f"size {size}, the h5 image has shape {tuple(shape)}; expected equal - is --raw-dir "
                                  f"the BraTS 2019 training release?")
        corner_xyz = (box[2][0], box[1][0], box[0][0])
        boxes[sid] = [a for a, _ in box]
        return flair.GetSpacing(), flair.TransformIndexToPhysicalPoint(corner_xyz), flair.GetDirection()

    return geometry


# --------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_semisup_convert_BraTS2019", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, BRATS_SPLITS, "urpc_brats", VARIANTS, "BraTS2019")
    p.add_argument("--brats-modalities", choices=tuple(MODALITIES), default="flair",
                   help="flair (default, the paper: one channel) or all (T1, T1ce, T2, FLAIR); raw variant only for all")
    p.add_argument("--brats-target", choices=tuple(TARGETS), default="wt",
                   help="wt (default, the paper: whole tumour = seg > 0) or subregions (1 oedema, 2 necrotic/"
                        "non-enhancing, 3 enhancing; raw variant only)")
    p.add_argument("--brats-validation-set", choices=("ignore", "unlabeled"), default="ignore",
                   help="raw variant: add the BraTS 2019 Validation subjects (no labels) to imagesUnlabeled (outside "
                        "the protocol)")
    p.add_argument("--raw-dir", default=None, help="h5 variant: the raw training release, to recover each case's "
                                                     "position (brain box) and header geometry")
    return p


def run(argv: Optional[Sequence[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    check_variant(args.variant, VARIANTS)
    input_dir = require_dir(args.input)
    detectors = {"brats_raw": lambda d: bool(find_raw(d)), "brats_ssl4mis_h5": lambda d: h5_dir(d) is not None}
    variant = args.variant if args.variant != "auto" else detect_variant(input_dir, detectors, "BraTS 2019", HINTS)
    state = {"write_unlabeled_labels": args.write_unlabeled_labels}
    cases: Dict[str, SourceCase] = {}
    extra_unlabeled: List[str] = []
    extra: Dict[str, object] = {}
    modalities = MODALITIES[args.brats_modalities]

    if variant == "brats_raw":
        if args.assume_spacing or args.raw_dir:
            raise ConversionError("--assume-spacing / --raw-dir are for the h5 variant; the raw NIfTIs carry their "
                                  "geometry")
        subjects = find_raw(input_dir)
        if not subjects:
            raise ConversionError(f"{input_dir}: no BraTS 2019 subject folders found. Expected:\n{HINTS}")
        for sid, (folder, _) in subjects.items():
            cases[sid] = _raw_case(sid, folder, modalities, args.brats_target, state)
        training_ids = [s for s, (_, val) in subjects.items() if not val]
        if args.brats_validation_set == "unlabeled":
            extra_unlabeled = [s for s, (_, val) in subjects.items() if val]
            if not extra_unlabeled:
                raise ConversionError(f"--brats-validation-set unlabeled: no subject folders below a "
                                      f"'*Validation*' folder in {input_dir}")
            extra["brats_validation_set"] = "unlabeled"
        record = {"gt_cropped": False, "resized": False, "spacing_source": "header", "intensity": "raw MRI"}
        channels = {str(c): "MRI" for c in range(len(modalities))}
    else:
        for opt, bad in (("--brats-modalities all", args.brats_modalities != "flair"),
                         ("--brats-target subregions", args.brats_target != "wt"),
                         ("--brats-validation-set unlabeled", args.brats_validation_set != "ignore")):
            if bad:
                raise ConversionError(f"{opt} needs the raw BraTS 2019 release (brats_raw); the SSL4MIS h5 files hold "
                                      f"the training subjects' FLAIR and whole-tumour label only")
        folder = h5_dir(input_dir)
        files = {normalise_brats_id(f): os.path.join(folder, f) for f in sorted(os.listdir(folder))
                 if f.endswith(".h5") and RE_SUBJECT.match(f[:-3])}
        assumed = parse_spacing(args.assume_spacing)
        if args.raw_dir:
            if assumed:
                raise ConversionError("use either --raw-dir (geometry from the raw release) or --assume-spacing, "
                                      "not both")
            raw = find_raw(require_dir(args.raw_dir))
            if not raw:
                raise ConversionError(f"--raw-dir {args.raw_dir}: no BraTS 2019 subject folders found")
            boxes: Dict[str, List[int]] = {}
            geometry = raw_box_geometry(raw, boxes)
            record = {"spacing_source": "derived_from_raw", "brain_box_start_zyx": boxes}
        else:
            geometry, record = assumed_geometry(assumed or (1.0, 1.0, 1.0))
        record.update({"gt_cropped": False, "resized": False, "brain_cropped": True,
                       "intensity": "SSL4MIS: clipped at the 99.9th percentile, z-scored with the brain's mean/std "
                                    "(background a negative constant); nnU-Net does not normalise again (noNorm)"})
        for sid, path in files.items():
            cases[sid] = _h5_case(sid, path, geometry, state)
        training_ids = list(cases)
        channels = {"0": "noNorm"}
    split = common_split(args, brats_split, training_ids, normalise_brats_id)
    plan = make_plan(args, split, cases, normalise_brats_id, extra_unlabeled=extra_unlabeled, available=training_ids)
    extra.update({"modalities": [m.upper() if m != "t1ce" else "T1ce" for m in modalities],
                  "target": args.brats_target})
    info = DatasetInfo("BraTS2019", variant, "", dict(TARGETS[args.brats_target]), channels,
                       description="BraTS 2019 brain tumour MRI, converted by nnunetv2_semisup",
                       reference="Menze et al., IEEE TMI 2015; Bakas et al., Sci. Data 2017 / arXiv 1811.02629 "
                                 "(BraTS 2019)",
                       licence="see the BraTS 2019 data terms (CBICA)", record=record)
    return run_conversion(args, info, cases, plan, split.name,
                          converter_record(argv, "nnUNetv2_semisup_convert_BraTS2019"), extra_record=extra)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
