"""ACDC (cine cardiac MRI: RV, myocardium, LV) → nnU-Net raw dataset with the SSL4MIS split of CML Table 2.

One 3D case per annotated frame: ``acdc_patientXXX_frame01`` (end-diastole) and ``acdc_patientXXX_frame02``
(end-systole), native geometry. The papers' 2D experiment maps to nnU-Net's ``2d`` configuration trained on these
volumes. Roles are per patient: both frames of a patient are always on the same side of every split and fold.

Variants:
- ``acdc_raw``: the official release ``database/training/patientXXX/{Info.cfg, patientXXX_frameYY.nii.gz,
  patientXXX_frameYY_gt.nii.gz}`` (+ ``database/testing/...`` for patients 101-150, used only with
  ``--acdc-testing-set``). frame01 := the ED frame of Info.cfg, frame02 := the ES frame. With ``--h5-dir`` (the SSL4MIS
  ``data`` folder) this mapping is verified by exact label equality per frame.
- ``acdc_ssl4mis_h5``: the SSL4MIS release ``ACDC/data/patientXXX_frame0N.h5`` (image (Z, H, W) min-max to [0, 1],
  label uint8), or its training slices ``data/slices/patientXXX_frame0N_slice_K.h5`` restacked along z. Spacing from
  ``--raw-dir`` (the raw header is copied after the shape and label-equality check), else assumed 1 × 1 × 10 mm.

Split ``ssl4mis_acdc``: 70 / 10 (validation fold) / 20 patients; ``--num-labeled N`` counts patients (1, 3, 7 (default),
14, 21, 28, 35, 70): labeled = the first N patients of train.list, both frames each.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .common import (CaseData, DatasetInfo, SourceCase, add_common_options, assumed_geometry, check_variant, cli,
                     common_split, converter_record, detect_variant, image_from_array_zyx, label_to_uint8, make_plan,
                     parse_spacing, put_label_on_image_grid, read_h5_arrays, read_image, require_dir, run_conversion)
from .errors import ConversionError
from .splits import ACDC_PATIENT_COUNTS, ACDC_SPLITS, acdc_patient, acdc_split, normalise_acdc_id

VARIANTS = ("acdc_raw", "acdc_ssl4mis_h5")
LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}   # nnU-Net Dataset027's names: RV cavity, myocardium, LV cavity
HINTS = ("  acdc_raw:        'database/training/patient001/Info.cfg' + 'patient001_frame01.nii.gz' + "
         "'patient001_frame01_gt.nii.gz'\n"
         "  acdc_ssl4mis_h5: 'ACDC/data/patient001_frame01.h5' (or 'data/slices/patient001_frame01_slice_0.h5')")
RE_PATIENT = re.compile(r"^patient(\d{3})$")
RE_VOLUME = re.compile(r"^(patient\d{3}_frame0[12])\.h5$")
RE_SLICE = re.compile(r"^(patient\d{3}_frame0[12])_slice_(\d+)\.h5$")
ASSUMED_SPACING = (1.0, 1.0, 10.0)
FIRST_TESTING_PATIENT = 101


# --------------------------------------------------------------------------------------------------- raw release
def read_info_cfg(path: str) -> Dict[str, str]:
    if not os.path.isfile(path):
        raise ConversionError(f"{path} not found; every ACDC patient folder has an Info.cfg naming its ED and ES frames")
    with open(path, encoding="utf-8", errors="replace") as f:
        return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in f) if v}


def raw_frames(folder: str, patient: str) -> Dict[str, Tuple[str, str]]:
    """{'frame01': (image, gt) of the ED frame, 'frame02': ... of the ES frame} from Info.cfg."""
    cfg_path = os.path.join(folder, "Info.cfg")
    cfg = read_info_cfg(cfg_path)
    frames = {}
    for name, key in (("frame01", "ED"), ("frame02", "ES")):
        try:
            n = int(cfg[key])
        except (KeyError, ValueError):
            raise ConversionError(f"{cfg_path}: no integer '{key}:' entry (found {sorted(cfg)}); expected e.g. 'ED: 1'")
        stem = os.path.join(folder, f"{patient}_frame{n:02d}")
        frames[name] = (stem + ".nii.gz", stem + "_gt.nii.gz")
    if frames["frame01"] == frames["frame02"]:
        raise ConversionError(f"{cfg_path}: ED and ES name the same frame")
    return frames


def find_raw(root: str) -> Dict[str, str]:
    """{patientXXX: folder} for every patient folder with an Info.cfg (up to 4 levels deep)."""
    out: Dict[str, str] = {}
    for d, dirs, files in os.walk(root):
        if os.path.relpath(d, root).count(os.sep) >= 3:
            dirs[:] = []
        name = os.path.basename(d)
        if RE_PATIENT.match(name) and "Info.cfg" in files:
            if name in out:
                raise ConversionError(f"{name} found twice: {out[name]} and {d}")
            out[name] = d
            dirs[:] = []
    return out


# --------------------------------------------------------------------------------------------------- SSL4MIS h5
def h5_volumes(folder: str) -> Tuple[Dict[str, str], Dict[str, Dict[int, str]]]:
    """(volume files, slice files {volume: {K: path}}) of an SSL4MIS ``data`` folder."""
    vols, slices = {}, {}
    for d in (folder, os.path.join(folder, "slices")):
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d)):
            if m := RE_VOLUME.match(f):
                vols[m.group(1)] = os.path.join(d, f)
            elif m := RE_SLICE.match(f):
                slices.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(d, f)
    return vols, slices


def h5_data_dir(root: str) -> Optional[str]:
    for d in (os.path.join(root, "data"), os.path.join(root, "ACDC", "data"), root):
        if os.path.isdir(d) and any(h5_volumes(d)):
            return d
    return None


def read_h5_volume(vid: str, vols: Dict[str, str], slices: Dict[str, Dict[int, str]],
                   want_label: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """A volume (Z, H, W): its volume file, else its training slices K = 0 … Z-1 stacked along z."""
    case = f"acdc_{vid}"
    if vid in vols:
        return read_h5_arrays(case, vols[vid], want_label, "z, y, x")
    parts = slices.get(vid)
    if not parts:
        raise ConversionError(f"case {case}: neither {vid}.h5 nor {vid}_slice_K.h5 files found")
    ks = sorted(parts)
    if ks != list(range(len(ks))):
        missing = sorted(set(range(ks[-1] + 1)) - set(ks))
        raise ConversionError(f"case {case}: slice files {vid}_slice_K.h5 are not consecutive from K = 0 (missing K "
                              f"{missing}); cannot restack the volume")
    images, labels = [], []
    import h5py
    for k in ks:
        with h5py.File(parts[k], "r") as f:
            if "image" not in f or (want_label and "label" not in f):
                raise ConversionError(f"case {case}: {parts[k]} has keys {list(f.keys())}; expected keys image, label")
            images.append(np.asarray(f["image"][()]))
            if want_label:
                labels.append(np.asarray(f["label"][()]))
    if len({a.shape for a in images + labels}) != 1 or images[0].ndim != 2:
        raise ConversionError(f"case {case}: its slice files have different or non-2D shapes "
                              f"({sorted({a.shape for a in images + labels})}); expected one (H, W)")
    return np.stack(images), (np.stack(labels) if want_label else None)


# --------------------------------------------------------------------------------------------------- frame mapping
def check_frame_mapping(vid: str, h5_label: np.ndarray, raw_labels: Dict[str, np.ndarray]) -> None:
    """The h5 volume's label must equal the raw label of the frame it is mapped to (frame01 = ED, frame02 = ES)."""
    frame = vid.split("_")[1]
    other = "frame02" if frame == "frame01" else "frame01"
    if raw_labels[frame].shape == h5_label.shape and np.array_equal(raw_labels[frame], h5_label):
        return
    if raw_labels[other].shape == h5_label.shape and np.array_equal(raw_labels[other], h5_label):
        raise ConversionError(f"case acdc_{vid}: the h5 label equals the raw {'ES' if frame == 'frame01' else 'ED'} "
                              f"frame, not the {'ED' if frame == 'frame01' else 'ES'} frame: the frame01/frame02 "
                              f"mapping of this copy is swapped (expected frame01 = ED, frame02 = ES per Info.cfg)")
    raise ConversionError(f"case acdc_{vid}: the h5 label (shape {h5_label.shape}) matches neither raw frame of "
                          f"{acdc_patient(vid)}; are the h5 files and the raw release the same data?")


class RawPatients:
    """Raw frames by volume ID, with their labels read once (for the h5 mapping check)."""

    def __init__(self, patients: Dict[str, str]):
        self.patients = patients
        self._labels: Dict[str, Dict[str, np.ndarray]] = {}

    def frames(self, patient: str) -> Dict[str, Tuple[str, str]]:
        return raw_frames(self.patients[patient], patient)

    def labels(self, patient: str) -> Dict[str, np.ndarray]:
        if patient not in self._labels:
            self._labels[patient] = {k: sitk.GetArrayFromImage(read_image(gt, f"label of {patient} {k}"))
                                     for k, (_, gt) in self.frames(patient).items()}
        return self._labels[patient]


# --------------------------------------------------------------------------------------------------- loaders
def _raw_case(vid: str, image: str, gt: str, state: dict, h5: Optional[tuple]) -> SourceCase:
    case = f"acdc_{vid}"
    has_label = os.path.isfile(gt)

    def load(with_label: bool) -> CaseData:
        img = read_image(image, f"image of case {case} ({'ED' if vid.endswith('01') else 'ES'} frame)")
        lab = None
        if has_label and (with_label or state["write_unlabeled_labels"] or h5 is not None):
            lab = put_label_on_image_grid(case, img, label_to_uint8(case, read_image(gt, f"label of case {case}"),
                                                                     allowed=tuple(LABELS.values())))
            if h5 is not None and (vid in h5[0] or vid in h5[1]):
                check_frame_mapping(vid, read_h5_volume(vid, h5[0], h5[1], True)[1], state["raw"].labels(acdc_patient(vid)))
                state["verified"].append(case)
            if not (with_label or state["write_unlabeled_labels"]):
                lab = None
        elif with_label:
            raise ConversionError(f"case {case}: label missing; expected {gt}")
        return CaseData([img], lab)

    return SourceCase(vid, os.path.basename(image), load, has_label, gt)


def _h5_case(vid: str, vols, slices, geometry, state: dict) -> SourceCase:
    case = f"acdc_{vid}"

    def load(with_label: bool) -> CaseData:
        image, label = read_h5_volume(vid, vols, slices, True)
        spacing, origin, direction = geometry(vid, image.shape, label)
        img = image_from_array_zyx(image.astype(np.float32), spacing, origin, direction)
        lab = None
        if with_label or state["write_unlabeled_labels"]:
            lab = label_to_uint8(case, image_from_array_zyx(label, spacing, origin, direction),
                                 allowed=tuple(LABELS.values()))
        if vid not in vols:
            state["restacked"].append(case)
        return CaseData([img], lab)

    return SourceCase(vid, os.path.basename(vols.get(vid, f"{vid}_slice_K.h5")), load, True, f"key 'label' of {vid}")


def raw_header_geometry(raw: RawPatients, state: dict):
    """geometry(vid, h5 shape, h5 label) from the raw frame: same shape, same label (mapping check), header copied."""

    def geometry(vid, shape, label):
        patient = acdc_patient(vid)
        if patient not in raw.patients:
            raise ConversionError(f"case acdc_{vid}: --raw-dir has no folder {patient} with an Info.cfg")
        image_path = raw.frames(patient)[vid.split("_")[1]][0]
        r = sitk.ImageFileReader()
        r.SetFileName(image_path)
        r.ReadImageInformation()
        if tuple(r.GetSize()[::-1]) != tuple(shape):
            raise ConversionError(f"case acdc_{vid}: h5 shape {tuple(shape)} (z, y, x) differs from the raw frame "
                                  f"{image_path} ({tuple(r.GetSize()[::-1])}); expected identical shapes")
        check_frame_mapping(vid, label, raw.labels(patient))
        state["verified"].append(f"acdc_{vid}")
        return r.GetSpacing(), r.GetOrigin(), r.GetDirection()

    return geometry


# --------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_semisup_convert_ACDC", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, ACDC_SPLITS, "ssl4mis_acdc", VARIANTS, "ACDC")
    for a in p._actions:
        if a.dest == "num_labeled":
            a.help = (f"labeled = the first N *patients* of train.list (both frames each); allowed "
                      f"{', '.join(map(str, ACDC_PATIENT_COUNTS))}; default 7")
    p.add_argument("--acdc-testing-set", choices=("ignore", "unlabeled", "test"), default="ignore",
                   help="raw variant: patients 101-150 of the official testing set: ignore (default, the protocol), "
                        "add to imagesUnlabeled, or add to imagesTs")
    p.add_argument("--h5-dir", default=None, help="raw variant: the SSL4MIS 'data' folder, to verify the frame01 = ED / "
                                                    "frame02 = ES mapping by label equality")
    p.add_argument("--raw-dir", default=None, help="h5 variant: the raw release, for the header geometry (and the "
                                                     "frame-mapping check)")
    return p


def run(argv: Optional[Sequence[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    check_variant(args.variant, VARIANTS)
    input_dir = require_dir(args.input)
    if args.num_labeled is not None and args.labeled_list is None and args.split == "ssl4mis_acdc" \
            and args.num_labeled not in ACDC_PATIENT_COUNTS:
        raise ConversionError(
            f"--num-labeled {args.num_labeled}: for ACDC it counts patients (labeled = the first N patients of "
            f"train.list, both frames each) and the papers' code allows {', '.join(map(str, ACDC_PATIENT_COUNTS))}. "
            f"For another set use --labeled-list FILE naming both frames of each patient (patientXXX_frame01/02).")
    detectors = {"acdc_raw": lambda d: bool(find_raw(d)), "acdc_ssl4mis_h5": lambda d: h5_data_dir(d) is not None}
    variant = args.variant if args.variant != "auto" else detect_variant(input_dir, detectors, "ACDC", HINTS)
    state = {"write_unlabeled_labels": args.write_unlabeled_labels, "verified": [], "restacked": []}
    cases: Dict[str, SourceCase] = {}
    extra_unlabeled: List[str] = []
    extra_test: List[str] = []
    extra: Dict[str, object] = {}

    if variant == "acdc_raw":
        if args.assume_spacing or args.raw_dir:
            raise ConversionError("--assume-spacing / --raw-dir are for the h5 variant; the raw NIfTIs carry their "
                                  "geometry")
        patients = find_raw(input_dir)
        h5 = None
        if args.h5_dir:
            d = h5_data_dir(require_dir(args.h5_dir))
            if d is None:
                raise ConversionError(f"--h5-dir {args.h5_dir}: no SSL4MIS patientXXX_frame0N[_slice_K].h5 files found")
            h5 = h5_volumes(d)
        state["raw"] = RawPatients(patients)
        for patient, folder in patients.items():
            for frame, (image, gt) in raw_frames(folder, patient).items():
                if not os.path.isfile(image):
                    raise ConversionError(f"case acdc_{patient}_{frame}: image {image} not found (named by "
                                          f"{os.path.join(folder, 'Info.cfg')})")
                cases[f"{patient}_{frame}"] = _raw_case(f"{patient}_{frame}", image, gt, state, h5)
        training_ids = [v for v in cases if int(v[7:10]) < FIRST_TESTING_PATIENT]
        testing_ids = [v for v in cases if int(v[7:10]) >= FIRST_TESTING_PATIENT]
        if args.acdc_testing_set != "ignore":
            if not testing_ids:
                raise ConversionError(f"--acdc-testing-set {args.acdc_testing_set}: no patients 101-150 found below "
                                      f"{input_dir} (database/testing/patientXXX)")
            (extra_unlabeled if args.acdc_testing_set == "unlabeled" else extra_test).extend(testing_ids)
            extra["acdc_testing_set"] = args.acdc_testing_set
        record = {"gt_cropped": False, "resized": False, "spacing_source": "header", "intensity": "raw MRI",
                  "frames": "frame01 = ED, frame02 = ES (Info.cfg)"}
        channels = {"0": "MRI"}
    else:
        if args.h5_dir or args.acdc_testing_set != "ignore":
            raise ConversionError("--h5-dir / --acdc-testing-set need the raw ACDC release (acdc_raw); with the h5 "
                                  "variant use --raw-dir for the header geometry and the frame-mapping check")
        vols, slices = h5_volumes(h5_data_dir(input_dir))
        assumed = parse_spacing(args.assume_spacing)
        if args.raw_dir:
            if assumed:
                raise ConversionError("use either --raw-dir (geometry from the raw release) or --assume-spacing, "
                                      "not both")
            patients = find_raw(require_dir(args.raw_dir))
            if not patients:
                raise ConversionError(f"--raw-dir {args.raw_dir}: no ACDC patient folders with Info.cfg found")
            geometry = raw_header_geometry(RawPatients(patients), state)
            record = {"spacing_source": "copied_from_raw"}
        else:
            geometry, record = assumed_geometry(assumed or ASSUMED_SPACING)
        record.update({"gt_cropped": False, "resized": False,
                       "intensity": "SSL4MIS: per-volume min-max to [0, 1]; nnU-Net does not normalise again (noNorm)",
                       "frames": "frame01 / frame02 as named by SSL4MIS (presumably ED / ES)"})
        for vid in sorted(set(vols) | set(slices)):
            cases[vid] = _h5_case(vid, vols, slices, geometry, state)
        training_ids = list(cases)
        channels = {"0": "noNorm"}

    split = common_split(args, acdc_split, training_ids, normalise_acdc_id)
    plan = make_plan(args, split, cases, normalise_acdc_id, extra_test=extra_test, extra_unlabeled=extra_unlabeled,
                     available=training_ids)
    _check_patients_grouped(plan)
    used = plan.labeled + plan.validation + plan.unlabeled + plan.extra_unlabeled + plan.test
    extra["case_patient"] = {f"acdc_{v}": acdc_patient(v) for v in used}
    info = DatasetInfo("ACDC", variant, "acdc", dict(LABELS), channels,
                       description="ACDC cine cardiac MRI (RV cavity, myocardium, LV cavity), one case per annotated "
                                   "frame, converted by nnunetv2_semisup",
                       reference="Bernard et al., IEEE TMI 2018 (ACDC challenge)",
                       licence="see the ACDC data terms (Human Heart Project)", record=record)

    def finalise() -> None:
        if state["verified"]:
            info.record["frame_mapping_verified"] = sorted(state["verified"])
        if state["restacked"]:
            info.record["restacked_from_slices"] = sorted(state["restacked"])

    return run_conversion(args, info, cases, plan, split.name, converter_record(argv, "nnUNetv2_semisup_convert_ACDC"),
                          extra_record=extra, finalise=finalise, group_of=lambda case: acdc_patient(case[5:]))


def _check_patients_grouped(plan) -> None:
    """ED and ES of one patient are strongly correlated: both frames must share every role."""
    role_of: Dict[str, Dict[str, str]] = {}
    for role, ids in (("labeled", plan.labeled), ("unlabeled", plan.unlabeled + plan.extra_unlabeled),
                      ("validation", plan.validation), ("test", plan.test)):
        for v in ids:
            role_of.setdefault(acdc_patient(v), {})[v] = role
    split_up = {p: r for p, r in role_of.items() if len(set(r.values())) > 1}
    if split_up:
        p, r = next(iter(sorted(split_up.items())))
        raise ConversionError(f"{len(split_up)} patient(s) would have frames in two roles, e.g. {p}: "
                              f"{', '.join(f'{v} {x}' for v, x in sorted(r.items()))}; both frames of a patient must be "
                              f"labeled, unlabeled, validation or test together (list both frames in --labeled-list)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
