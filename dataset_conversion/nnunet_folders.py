"""Reading and checking the folders of an existing nnU-Net raw dataset (``{case}_{channel:04d}{file_ending}``), and
reading users' scans (any SimpleITK file, or a DICOM series folder)."""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Optional, Tuple

import SimpleITK as sitk

from nnunetv2_semisup.data.image_checks import damaged_file_message

from .common import image_ending, read_dicom_series, read_image, warn
from .errors import ConversionError

CASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")


def group_channel_files(folder: str, file_ending: str, what: str) -> Dict[str, Dict[int, str]]:
    """{case: {channel: path}} for the files of ``folder``; files that do not follow nnU-Net's naming are errors."""
    out: Dict[str, Dict[int, str]] = {}
    if not os.path.isdir(folder):
        return out
    rx = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    for f in sorted(os.listdir(folder)):
        full = os.path.join(folder, f)
        if f.startswith(".") or os.path.isdir(full):
            continue
        m = rx.match(f)
        if m is None:
            raise ConversionError(f"{what}: file {f} does not follow nnU-Net's naming {{case}}_{{channel:04d}}"
                                  f"{file_ending} (dataset.json file_ending is {file_ending})")
        out.setdefault(m.group(1), {})[int(m.group(2))] = full
    return out


def check_channels(groups: Dict[str, Dict[int, str]], num_channels: int, what: str) -> None:
    for case, chans in groups.items():
        expected = set(range(num_channels))
        if set(chans) != expected:
            missing = sorted(expected - set(chans))
            extra = sorted(set(chans) - expected)
            raise ConversionError(
                f"{what}: case {case} has channels {sorted(chans)}; dataset.json declares {num_channels} channel(s) "
                f"(expected files {', '.join(f'{case}_{c:04d}' for c in sorted(expected))})"
                + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else ""))


def label_files(folder: str, file_ending: str) -> Dict[str, str]:
    if not os.path.isdir(folder):
        return {}
    return {f[: -len(file_ending)]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.endswith(file_ending) and not f.startswith(".")}


def read_scan(path: str, case: str) -> sitk.Image:
    """A user's scan: a SimpleITK-readable file (NIfTI, NRRD, MHA, ...) or a folder with one DICOM series."""
    if os.path.isdir(path):
        return read_dicom_series(path, case)
    if image_ending(path) is None and not os.path.isfile(path):
        raise ConversionError(f"case {case}: {path} not found")
    return read_image(path, f"image of case {case}")


def read_info(path: str) -> Tuple[Tuple[int, ...], Tuple[float, ...], Tuple[float, ...], Tuple[float, ...], int]:
    """(size, spacing, origin, direction, components) from the header only."""
    r = sitk.ImageFileReader()
    r.SetFileName(path)
    try:
        r.ReadImageInformation()
    except RuntimeError as e:
        raise ConversionError(damaged_file_message(path, e)) from None
    return r.GetSize(), r.GetSpacing(), r.GetOrigin(), r.GetDirection(), r.GetNumberOfComponents()


def sanitize_case_name(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_\-]", "_", name)
    return s.strip("_") or "case"


def existing_case_ids(dataset_folder: str, file_ending: str) -> Dict[str, str]:
    """Every case ID already present in the dataset, with the folder it is in."""
    out: Dict[str, str] = {}
    for sub in ("imagesTr", "imagesUnlabeled", "imagesTs"):
        for case in group_channel_files(os.path.join(dataset_folder, sub), file_ending, sub):
            out.setdefault(case, sub)
    return out


def strip_ending(name: str) -> Tuple[str, Optional[str]]:
    e = image_ending(name)
    return (name[: -len(e)], e) if e else (name, None)


def list_inputs(folder: str) -> List[Tuple[str, str, str]]:
    """(stem, path, kind) for every scan in ``folder``: kind 'file' (SimpleITK endings) or 'dicom' (sub-folder with
    a DICOM series). Other files are reported as errors so nothing is silently skipped."""
    from .common import find_dicom_series
    out = []
    for f in sorted(os.listdir(folder)):
        if f.startswith("."):
            continue
        full = os.path.join(folder, f)
        if os.path.isdir(full):
            if not find_dicom_series(full):
                raise ConversionError(f"{full}: sub-folder without a DICOM series (expected one DICOM series per "
                                      f"sub-folder)")
            out.append((f, full, "dicom"))
            continue
        stem, e = strip_ending(f)
        if e is None and f.lower().endswith((".raw", ".zraw", ".gz.raw")):
            continue  # data file of a .mhd/.nhdr header
        if e is None:
            raise ConversionError(f"{full}: unsupported file type; expected NIfTI (.nii.gz/.nii), NRRD (.nrrd), "
                                  f"MHA/MHD (.mha/.mhd) files or one DICOM series per sub-folder")
        out.append((stem, full, "file"))
    return out


# --------------------------------------------------------------------------------------------------- roles
SPLITS_FILE = "splits_semisup.json"


def validation_cases(dataset_folder: str, training_cases) -> Optional[List[str]]:
    """The validation cases of ``splits_semisup.json`` (None if the dataset has none): the cases of its ``val`` lists
    that are in no ``train`` list - for the one-fold file the converters write, its ``val`` list. Every case the file
    names must be an imagesTr case."""
    path = os.path.join(dataset_folder, SPLITS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            folds = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: cannot read it ({e}); expected nnU-Net's splits format "
                              f'[{{"train": [...], "val": [...]}}]')
    if not isinstance(folds, list) or not folds or not all(
            isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list) for f in folds):
        raise ConversionError(f'{path}: expected nnU-Net\'s splits format [{{"train": [...], "val": [...]}}, ...]')
    named = {c for f in folds for c in f["train"] + f["val"]}
    unknown = sorted(named - set(training_cases))
    if unknown:
        raise ConversionError(f"{path} names case(s) that are not in imagesTr: {', '.join(unknown)}; every train/val "
                              f"case must be an imagesTr case (fix or remove the file)")
    in_train = {c for f in folds for c in f["train"]}
    out: List[str] = []
    for f in folds:
        out += [c for c in f["val"] if c not in in_train and c not in out]
    return out


def ordered_like(previous, wanted) -> List[str]:
    """The cases of ``wanted`` in the order of ``previous`` (e.g. the split order a converter recorded), the rest
    sorted."""
    wanted = set(wanted)
    kept = [c for c in previous if c in wanted]
    return kept + sorted(wanted - set(kept))


def role_lists(dataset_folder: str, training, unlabeled, test, old: dict) -> dict:
    """Role lists and counts of the "semisup" record for what the folders hold: labeled = imagesTr minus the
    validation cases of ``splits_semisup.json``; the order of the existing record ``old`` is kept."""
    val = validation_cases(dataset_folder, training)
    if val is None:
        val = []
        if old.get("validation_cases"):
            warn(f"dataset.json lists validation cases but {os.path.join(dataset_folder, SPLITS_FILE)} is missing: "
                 f"they count as labeled cases now (nnU-Net's own split uses every imagesTr case)")
    labeled = ordered_like(old.get("labeled_cases", []), set(training) - set(val))
    unlabeled = ordered_like(old.get("unlabeled_cases", []), unlabeled)
    test = ordered_like(old.get("test_cases", []), test)
    return {"num_labeled": len(labeled), "num_unlabeled": len(unlabeled), "num_validation": len(val),
            "num_test": len(test), "labeled_cases": labeled, "unlabeled_cases": unlabeled, "validation_cases": val,
            "test_cases": test}
