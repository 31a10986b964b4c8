"""AMOS 2022 (15 abdominal organs, CT and MRI) → nnU-Net raw dataset with the DHC / SKCDF splits.

Variants:
- ``amos_raw``: the official release ``amos22/{imagesTr,labelsTr,imagesVa,labelsVa}/amos_XXXX.nii.gz`` (+ ``imagesTs``
  without public labels, used only with ``--amos-testing-set unlabeled``). Native geometry from the headers.
- ``amos_dhc_npy``: the DHC preprocessed release ``<base>/npy/amos_XXXX_image.npy`` (raw CT HU / MRI values, (z, y, x))
  + ``amos_XXXX_label.npy`` (0-15), shape-resized to one fixed shape (geometry lost). Spacing derived from the raw
  NIfTIs with ``--raw-dir`` (raw spacing × raw shape / npy shape per axis, origin and direction copied), else assumed
  1 × 1 × 1 mm (or ``--assume-spacing``).

Split ``dhc_amos``: train 216 / eval 24 (validation fold) / test 120 (the official imagesVa); ``--num-labeled`` 4, 10
(default, SKCDF Table 2) or 21 selects the published labeled list. IDs >= 500 are MRI; ``--amos-modality ct`` drops them
from every list (a protocol deviation, recorded).
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .common import (CaseData, DatasetInfo, SourceCase, add_common_options, add_extra_unlabeled, check_variant, cli,
                     common_split, converter_record, detect_variant, files_by_id, label_to_uint8, make_plan,
                     npy_geometry, npy_release_shape, npy_source_case, put_label_on_image_grid, read_image,
                     require_dir, run_conversion)
from .errors import ConversionError
from .splits import AMOS_BROKEN_20P, AMOS_SPLITS, amos_is_mri, amos_split, normalise_amos_id

VARIANTS = ("amos_raw", "amos_dhc_npy")
LABELS = {"background": 0, "spleen": 1, "right_kidney": 2, "left_kidney": 3, "gallbladder": 4, "esophagus": 5,
          "liver": 6, "stomach": 7, "aorta": 8, "inferior_vena_cava": 9, "pancreas": 10, "right_adrenal_gland": 11,
          "left_adrenal_gland": 12, "duodenum": 13, "bladder": 14, "prostate_uterus": 15}
HINTS = ("  amos_raw:     'amos22/imagesTr/amos_0001.nii.gz' + 'amos22/labelsTr/amos_0001.nii.gz' (and imagesVa/labelsVa)\n"
         "  amos_dhc_npy: '<base>/npy/amos_0001_image.npy' + 'amos_0001_label.npy' (DHC preprocessed AMOS)")
RE_NII = re.compile(r"^(amos_\d{4})\.nii(?:\.gz)?$")
RE_NPY_IMG = re.compile(r"^(amos_\d{4})_image\.npy$")
LABELED_FOLDERS = (("imagesTr", "labelsTr"), ("imagesVa", "labelsVa"))


# --------------------------------------------------------------------------------------------------- discovery
def release_dir(root: str) -> Optional[str]:
    """The folder holding imagesTr/imagesVa (``root`` itself or ``root/amos22``)."""
    for d in (root, os.path.join(root, "amos22")):
        if any(files_by_id(os.path.join(d, a), RE_NII) for a, _ in LABELED_FOLDERS):
            return d
    return None


def find_raw(root: str) -> Tuple[Dict[str, str], Dict[str, str], Dict[str, str]]:
    """(labeled-release images, their labels, imagesTs images) by AMOS ID."""
    base = release_dir(root)
    if base is None:
        return {}, {}, {}
    images: Dict[str, str] = {}
    labels: Dict[str, str] = {}
    for a, b in LABELED_FOLDERS:
        found = files_by_id(os.path.join(base, a), RE_NII)
        both = sorted(set(found) & set(images))
        if both:
            raise ConversionError(f"{', '.join(both)}: in both imagesTr and imagesVa of {base}; expected each AMOS ID once")
        images.update(found)
        labels.update(files_by_id(os.path.join(base, b), RE_NII))
    return images, labels, files_by_id(os.path.join(base, "imagesTs"), RE_NII)


def find_npy_dir(root: str, npy_dir: Optional[str]) -> Optional[str]:
    cands = [npy_dir] if npy_dir else [os.path.join(root, "npy"), root]
    for c in cands:
        if c and os.path.isdir(c) and any(RE_NPY_IMG.match(f) for f in os.listdir(c)):
            return c
    return None


# --------------------------------------------------------------------------------------------------- loaders
def _raw_case(sid: str, image: str, label: Optional[str], state: dict) -> SourceCase:
    def load(with_label: bool) -> CaseData:
        img = read_image(image, f"image of case {sid}")
        lab = None
        if label is not None and (with_label or state["write_unlabeled_labels"]):
            lab = label_to_uint8(sid, read_image(label, f"label of case {sid}"), allowed=tuple(LABELS.values()))
            lab = put_label_on_image_grid(sid, img, lab)
            state["present"][sid] = _present(lab)
        elif with_label:
            raise ConversionError(f"case {sid}: label missing; expected {sid}.nii.gz in labelsTr/ or labelsVa/")
        return CaseData([img], lab)

    return SourceCase(sid, os.path.basename(image), load, label is not None,
                      label or f"{sid}.nii.gz in labelsTr/ or labelsVa/")


def _present(label) -> List[int]:
    import SimpleITK as sitk
    arr = label if isinstance(label, np.ndarray) else sitk.GetArrayViewFromImage(label)
    return [int(v) for v in np.unique(arr) if v != 0]


# --------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_semisup_convert_AMOS", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, AMOS_SPLITS, "dhc_amos", VARIANTS, "AMOS")
    p.add_argument("--amos-modality", choices=("all", "ct"), default="all",
                   help="all (default, the papers' 360 scans incl. 60 MRI; channel CT_or_MRI = per-image z-score) or "
                        "ct (drop IDs >= 500 from every list; channel CT; a protocol deviation)")
    p.add_argument("--amos-testing-set", choices=("ignore", "unlabeled"), default="ignore",
                   help="raw variant: add the release's imagesTs (no public labels) to imagesUnlabeled (outside the "
                        "protocol)")
    p.add_argument("--raw-dir", default=None, help="npy variant: the amos22 folder, to derive the spacing of the "
                                                     "shape-resized npy volumes")
    p.add_argument("--npy-dir", default=None, help="npy variant: the folder with the amos_XXXX_image.npy files "
                                                     "(default <input>/npy)")
    return p


def run(argv: Optional[Sequence[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    check_variant(args.variant, VARIANTS)
    input_dir = require_dir(args.input)
    if args.num_labeled == AMOS_BROKEN_20P and args.labeled_list is None and args.split == "dhc_amos":
        raise ConversionError(
            "--num-labeled 38 (DHC's 20 % lists) is refused: dhc_labeled_20p.txt / dhc_unlabeled_20p.txt were drawn "
            "from an older train list; they contain 20 of the 24 eval cases (model-selection leakage) and miss 44 "
            "train cases. Use 4, 10 or 21, or repair the list and pass it with --labeled-list FILE.")
    detectors = {"amos_raw": lambda d: release_dir(d) is not None,
                 "amos_dhc_npy": lambda d: find_npy_dir(d, args.npy_dir) is not None}
    variant = args.variant if args.variant != "auto" else detect_variant(input_dir, detectors, "AMOS 2022", HINTS)
    ct_only = args.amos_modality == "ct"
    state = {"write_unlabeled_labels": args.write_unlabeled_labels, "present": {}}
    cases: Dict[str, SourceCase] = {}
    extra_unlabeled: List[str] = []
    extra: Dict[str, object] = {}

    if variant == "amos_raw":
        if args.assume_spacing or args.raw_dir or args.npy_dir:
            raise ConversionError("--assume-spacing / --raw-dir / --npy-dir are for the npy variant; the amos22 "
                                  "NIfTIs carry their geometry")
        images, labels, testing = find_raw(input_dir)
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise ConversionError(f"labels without an image: {', '.join(orphans)}; expected e.g. "
                                  f"imagesTr/{orphans[0]}.nii.gz")
        for sid, path in images.items():
            cases[sid] = _raw_case(sid, path, labels.get(sid), state)
        training_ids = list(cases)
        if args.amos_testing_set == "unlabeled":
            extra_unlabeled = add_extra_unlabeled(
                cases, testing, lambda sid, path: _raw_case(sid, path, None, state), "--amos-testing-set unlabeled",
                f"no imagesTs/amos_XXXX.nii.gz below {input_dir}", "case {sid} is both in imagesTr/imagesVa and in "
                "imagesTs", keep=lambda sid: not (ct_only and amos_is_mri(sid)))
            extra["amos_testing_set"] = "unlabeled"
        record = {"gt_cropped": False, "resized": False, "spacing_source": "header",
                  "intensity": "raw (CT in HU, MRI in arbitrary units)"}
    else:
        if args.amos_testing_set != "ignore":
            raise ConversionError("--amos-testing-set needs the raw amos22 release (amos_raw)")
        npy_dir = find_npy_dir(input_dir, args.npy_dir)
        if npy_dir is None:
            raise ConversionError(f"no amos_XXXX_image.npy files found in {args.npy_dir or os.path.join(input_dir, 'npy')}")
        imgs = files_by_id(npy_dir, RE_NPY_IMG)
        shape = npy_release_shape(npy_dir, imgs)
        geometry, record = npy_geometry(args, lambda d: find_raw(d)[0], "amos22 imagesTr/imagesVa NIfTIs",
                                        lambda sid: sid)
        record.update({"gt_cropped": False, "resized": True, "resize_shape": shape,
                       "intensity": "raw values (CT HU, MRI arbitrary units); the papers normalise at load time, "
                                    "every case including MRI: clip [-75, 275], per-volume min-max to [0, 1]"})
        if shape != [80, 160, 160]:
            record["resize_shape_note"] = "differs from the papers' 80 x 160 x 160"
        for sid, path in imgs.items():
            lab = os.path.join(npy_dir, f"{sid}_label.npy")
            cases[sid] = npy_source_case(sid, sid, path, lab if os.path.isfile(lab) else None, geometry, state,
                                         allowed=tuple(LABELS.values()),
                                         on_label=lambda c, a: state["present"].__setitem__(c, _present(a)))
        training_ids = list(cases)

    if ct_only:
        training_ids = [i for i in training_ids if not amos_is_mri(i)]
        extra["protocol_deviations"] = ["amos_modality ct: MRI scans (IDs >= 500) dropped from every list; the "
                                        "published AMOS results use CT and MRI"]
    split = common_split(args, lambda name: amos_split(name, ct_only), training_ids, normalise_amos_id)
    plan = make_plan(args, split, cases, normalise_amos_id, extra_unlabeled=extra_unlabeled, available=training_ids)
    used = plan.labeled + plan.validation + plan.unlabeled + plan.extra_unlabeled + plan.test
    extra["amos_modality"] = args.amos_modality
    extra["case_modality"] = {i: ("MRI" if amos_is_mri(i) else "CT") for i in used}
    info = DatasetInfo("AMOS2022", variant, "", dict(LABELS), {"0": "CT" if ct_only else "CT_or_MRI"},
                       description="AMOS 2022 abdominal multi-organ CT and MRI (15 organs), converted by "
                                   "nnunetv2_semisup",
                       reference="Ji et al., AMOS: A Large-Scale Abdominal Multi-Organ Benchmark, NeurIPS 2022 "
                                 "(zenodo 7262581)",
                       licence="CC BY-NC-SA 4.0 (AMOS 2022 release)", record=record)

    def finalise() -> None:
        info.record["present_labels"] = {c: v for c, v in sorted(state["present"].items())}

    return run_conversion(args, info, cases, plan, split.name, converter_record(argv, "nnUNetv2_semisup_convert_AMOS"),
                          extra_record=extra, finalise=finalise)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
