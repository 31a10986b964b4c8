"""Synapse = BTCV "Multi-Atlas Labeling Beyond the Cranial Vault" (13 abdominal organs, CT) → nnU-Net raw dataset
with the SKCDF splits.

Variants:
- ``synapse_btcv_raw``: ``RawData/Training/img/img0001.nii.gz`` + ``RawData/Training/label/label0001.nii.gz`` (also
  the DHC renaming ``imagesTr/`` + ``labelsTr/``, and ``Training/{img,label}``); ``RawData/Testing/img`` or
  ``Test/img`` (no labels) can be added as unlabeled data with ``--synapse-testing unlabeled``. Geometry from headers.
- ``synapse_dhc_npy``: DHC / GenericSSL / SKCDF ``<base>/npy/0001_image.npy`` (float32 HU, (z, y, x)) +
  ``0001_label.npy`` (0-13), shape-resized to one fixed shape (geometry lost). Spacing derived from the raw NIfTIs with
  ``--raw-dir`` (raw spacing x raw shape / npy shape per axis, origin and direction copied), else assumed 1 x 1 x 1
  (or ``--assume-spacing``).

TransUNet's 8-organ "Synapse" (``train_npz/``, ``test_vol_h5/``) is refused: different label protocol.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple


from .common import (CaseData, DatasetInfo, SourceCase, add_common_options, add_extra_unlabeled, check_variant, cli,
                     common_split, converter_record, detect_variant, files_by_id, label_to_uint8, make_plan,
                     npy_geometry, npy_release_shape, npy_source_case, put_label_on_image_grid, read_image,
                     require_dir, run_conversion, warn)
from .errors import ConversionError
from .splits import SYNAPSE_SPLITS, normalise_numeric_id, read_id_file, synapse_split

VARIANTS = ("synapse_btcv_raw", "synapse_dhc_npy")
LABELS = {"background": 0, "spleen": 1, "right_kidney": 2, "left_kidney": 3, "gallbladder": 4, "esophagus": 5,
          "liver": 6, "stomach": 7, "aorta": 8, "inferior_vena_cava": 9, "portal_vein_and_splenic_vein": 10,
          "pancreas": 11, "right_adrenal_gland": 12, "left_adrenal_gland": 13}
HINTS = ("  synapse_btcv_raw: 'RawData/Training/img/img0001.nii.gz' + 'RawData/Training/label/label0001.nii.gz' "
         "(or imagesTr/ + labelsTr/)\n"
         "  synapse_dhc_npy:  '<base>/npy/0001_image.npy' + '0001_label.npy' (DHC / GenericSSL / SKCDF release)")
RE_IMG = re.compile(r"^img(\d{4})\.nii(?:\.gz)?$")
RE_LAB = re.compile(r"^label(\d{4})\.nii(?:\.gz)?$")
RE_NPY_IMG = re.compile(r"^(\d{4})_image\.npy$")
PAIR_DIRS = (("img", "label"), ("imagesTr", "labelsTr"))
TEST_DIRS = (("Testing", "img"), ("Test", "img"))


# --------------------------------------------------------------------------------------------------- discovery
def find_raw(root: str) -> Tuple[Dict[str, str], Dict[str, str], Dict[str, str]]:
    """(training images, training labels, testing images) by four-digit ID, from any of the three layouts."""
    images: Dict[str, str] = {}
    labels: Dict[str, str] = {}
    testing: Dict[str, str] = {}
    for d, dirs, _ in os.walk(root):
        if os.path.relpath(d, root).count(os.sep) >= 3:
            dirs[:] = []
        for a, b in PAIR_DIRS:
            if a in dirs and (b in dirs or a == "imagesTr"):
                if os.path.basename(d) in ("Testing", "Test"):
                    continue
                images.update(files_by_id(os.path.join(d, a), RE_IMG))
                labels.update(files_by_id(os.path.join(d, b), RE_LAB))
        for a, b in TEST_DIRS:
            if os.path.basename(d) == a and b in dirs:
                testing.update(files_by_id(os.path.join(d, b), RE_IMG))
    return images, labels, testing


def find_npy_dir(root: str, npy_dir: Optional[str]) -> Optional[str]:
    cands = [npy_dir] if npy_dir else [os.path.join(root, "npy"), os.path.join(root, "npy1"), root]
    for c in cands:
        if c and os.path.isdir(c) and any(RE_NPY_IMG.match(f) for f in os.listdir(c)):
            return c
    return None


def _refuse_transunet(root: str) -> None:
    for d in ("train_npz", "test_vol_h5"):
        if os.path.isdir(os.path.join(root, d)) or os.path.isdir(os.path.join(root, "Synapse", d)):
            raise ConversionError(
                f"{root} is TransUNet's 8-organ Synapse release ({d}/: 2D training slices, [0, 1]-scaled intensities, "
                f"18 train / 12 test, 8 organs). Its label remapping differs from the 13-organ BTCV protocol of the "
                f"semi-supervised papers and is not verified, so it is not converted. Download the BTCV RawData "
                f"(RawData/Training/img, RawData/Training/label) or the DHC npy release instead.")


# --------------------------------------------------------------------------------------------------- loaders
def _raw_case(sid: str, image: str, label: Optional[str], state: dict) -> SourceCase:
    case = f"synapse_{sid}"

    def load(with_label: bool) -> CaseData:
        img = read_image(image, f"image of case {case}")
        lab = None
        if label is not None and (with_label or state["write_unlabeled_labels"]):
            lab = label_to_uint8(case, read_image(label, f"label of case {case}"), allowed=tuple(LABELS.values()))
            lab = put_label_on_image_grid(case, img, lab)
        elif with_label:
            raise ConversionError(f"case {case}: label missing; expected label{sid}.nii.gz next to {image}")
        return CaseData([img], lab)

    return SourceCase(sid, os.path.basename(image), load, label is not None,
                      label or f"label{sid}.nii.gz in the label folder")


def _npy_case(sid: str, image: str, label: Optional[str], geometry, state: dict) -> SourceCase:
    return npy_source_case(f"synapse_{sid}", sid, image, label, geometry, state, allowed=tuple(LABELS.values()))


# --------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_semisup_convert_Synapse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, SYNAPSE_SPLITS, "skcdf_synapse", VARIANTS, "Synapse")
    p.add_argument("--raw-dir", default=None, help="npy variant: folder with the raw BTCV NIfTIs, to derive the "
                                                     "spacing of the shape-resized npy volumes")
    p.add_argument("--npy-dir", default=None, help="npy variant: the folder with the *_image.npy files (default "
                                                     "<input>/npy or <input>/npy1)")
    p.add_argument("--synapse-testing", choices=("ignore", "unlabeled"), default="ignore",
                   help="raw variant: add the 20 BTCV Testing images (no public labels) to imagesUnlabeled (not part "
                        "of the SKCDF protocol)")
    return p


def run(argv: Optional[Sequence[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    check_variant(args.variant, VARIANTS)
    input_dir = require_dir(args.input)
    _refuse_transunet(input_dir)
    detectors = {"synapse_btcv_raw": lambda d: bool(find_raw(d)[0]),
                 "synapse_dhc_npy": lambda d: find_npy_dir(d, args.npy_dir) is not None}
    variant = args.variant if args.variant != "auto" else detect_variant(input_dir, detectors, "Synapse/BTCV", HINTS)
    state = {"write_unlabeled_labels": args.write_unlabeled_labels}
    cases: Dict[str, SourceCase] = {}
    extra_unlabeled: List[str] = []
    extra: Dict[str, object] = {}

    if variant == "synapse_btcv_raw":
        if args.assume_spacing or args.raw_dir:
            raise ConversionError("--assume-spacing / --raw-dir are for the npy variant; the raw BTCV NIfTIs carry "
                                  "their geometry")
        images, labels, testing = find_raw(input_dir)
        if not images:
            raise ConversionError(f"{input_dir}: no BTCV training images imgXXXX.nii.gz found. Expected:\n{HINTS}")
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise ConversionError(f"labels without an image: {', '.join('label' + o for o in orphans)}; expected "
                                  f"img{orphans[0]}.nii.gz in the img folder")
        for sid, path in images.items():
            cases[sid] = _raw_case(sid, path, labels.get(sid), state)
        training_ids = list(cases)
        if args.synapse_testing == "unlabeled":
            extra_unlabeled = add_extra_unlabeled(
                cases, testing, lambda sid, path: _raw_case(sid, path, None, state), "--synapse-testing unlabeled",
                f"no Testing/img or Test/img folder with imgXXXX.nii.gz below {input_dir}",
                "case synapse_{sid} is both a Training and a Testing image")
            extra["synapse_testing"] = "unlabeled"
        record = {"gt_cropped": False, "resized": False, "spacing_source": "header", "intensity": "raw HU"}
    else:
        if args.synapse_testing != "ignore":
            raise ConversionError("--synapse-testing needs the raw BTCV download (synapse_btcv_raw)")
        npy_dir = find_npy_dir(input_dir, args.npy_dir)
        if npy_dir is None:
            raise ConversionError(f"no *_image.npy files found in {args.npy_dir or os.path.join(input_dir, 'npy')}")
        imgs = files_by_id(npy_dir, RE_NPY_IMG)
        shape = npy_release_shape(npy_dir, imgs)
        geometry, record = npy_geometry(args, lambda d: find_raw(d)[0], "raw BTCV images imgXXXX.nii.gz",
                                        lambda sid: f"synapse_{sid}")
        record.update({"gt_cropped": False, "resized": True, "resize_shape": shape,
                       "intensity": "raw HU (the papers normalise at load time: clip [-75, 275] HU, per-volume "
                                    "min-max to [0, 1]); nnU-Net CT normalisation applies"})
        for sid, path in imgs.items():
            lab = os.path.join(npy_dir, f"{sid}_label.npy")
            cases[sid] = _npy_case(sid, path, lab if os.path.isfile(lab) else None, geometry, state)
        training_ids = list(cases)
        _compare_source_lists(input_dir)
    split = common_split(args, synapse_split, training_ids, normalise_numeric_id)
    plan = make_plan(args, split, cases, normalise_numeric_id, extra_unlabeled=extra_unlabeled,
                     available=training_ids)
    info = DatasetInfo("BTCV-Synapse", variant, "synapse", dict(LABELS), {"0": "CT"},
                       description="Synapse multi-organ CT (BTCV Multi-Atlas Labeling Beyond the Cranial Vault, 13 "
                                   "organs), converted by nnunetv2_semisup",
                       reference="Landman et al., MICCAI 2015 Multi-Atlas Labeling Beyond the Cranial Vault "
                                 "(Synapse syn3193805)",
                       licence="see the Synapse BTCV data terms", record=record)
    return run_conversion(args, info, cases, plan, split.name,
                          converter_record(argv, "nnUNetv2_semisup_convert_Synapse"), extra_record=extra)


def _compare_source_lists(root: str) -> None:
    """The DHC/GenericSSL download ships its own split txt files; only the SKCDF lists are used. Say so when the
    source's test list differs from the shipped one."""
    for sub in ("splits", "split_txts"):
        f = os.path.join(root, sub, "test.txt")
        if os.path.isfile(f):
            theirs = sorted(normalise_numeric_id(i) for i in read_id_file(f))
            ours = sorted(synapse_split("skcdf_synapse").test)
            if theirs != ours:
                warn(f"{f} lists a different test set than the shipped SKCDF list; the SKCDF lists are used")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
