"""Machinery shared by all converters: options, image I/O and checks, role assignment, atomic writing of the raw
dataset, dataset.json with its ``"semisup"`` record, ``splits_semisup.json`` and the summary table.

Layout written (``nnUNet_raw/DatasetXXX_Name/``): ``imagesTr``/``labelsTr`` (labeled + validation cases),
``imagesUnlabeled`` (unlabeled training cases, never with labels), ``imagesTs``/``labelsTs`` (test cases),
``labelsUnlabeled`` (only with ``--write-unlabeled-labels``; diagnostics, never read by trainers), ``dataset.json``,
``splits_semisup.json`` (splits with validation cases).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunetv2_semisup.data.image_checks import (FIX_HINT, damaged_file_message, nifti_nonfinite_problems,
                                                sitk_image_problems)
from nnunetv2_semisup.cli_errors import is_explained, os_error_message
from nnunetv2_semisup.data.leak_guard import LEAK_HINT, voxel_digest
from nnunetv2_semisup.progress import progress

from .errors import ConversionError
from .splits import Split, custom_split, select_cases

FILE_ENDING = ".nii.gz"
SEMISUP_FORMAT_VERSION = 1


# =================================================================================================== small helpers
def warn(msg: str) -> None:
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def package_version() -> str:
    try:
        from importlib.metadata import version
        return version("nnunetv2_semisup")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def parse_spacing(text: Optional[str]) -> Optional[Tuple[float, float, float]]:
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ConversionError(f"--assume-spacing {text!r}: expected three numbers x,y,z in mm, e.g. 0.625,0.625,0.625")
    if len(vals) != 3 or any(v <= 0 for v in vals):
        raise ConversionError(f"--assume-spacing {text!r}: expected three positive numbers x,y,z in mm")
    return vals


def raw_root() -> str:
    from nnunetv2.paths import nnUNet_raw
    if not nnUNet_raw.is_set():
        raise ConversionError("the environment variable nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw")
    root = os.fspath(nnUNet_raw)
    os.makedirs(root, exist_ok=True)
    return root


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not (0 < dataset_id < 1000):
        raise ConversionError(f"dataset ID must be between 1 and 999 (got {dataset_id})")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ConversionError(f"--name {name!r}: use letters, digits, '_' and '-' only")
    return f"Dataset{dataset_id:03d}_{name}"


def find_existing_dataset(root: str, dataset_id: int) -> Optional[str]:
    prefix = f"Dataset{dataset_id:03d}_"
    if not os.path.isdir(root):
        return None
    hits = sorted(d for d in os.listdir(root) if d.startswith(prefix) and os.path.isdir(os.path.join(root, d)))
    return os.path.join(root, hits[0]) if hits else None


def load_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json_atomic(obj, path: str) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=4, sort_keys=False)
    os.replace(tmp, path)


# =================================================================================================== image I/O
SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def files_by_id(folder: str, rx) -> Dict[str, str]:
    """{first group of ``rx``: path} for the files of ``folder`` whose name matches ``rx`` (empty if no folder)."""
    if not os.path.isdir(folder):
        return {}
    return {m.group(1): os.path.join(folder, f) for f in sorted(os.listdir(folder)) if (m := rx.match(f))}


def add_extra_unlabeled(cases: Dict[str, "SourceCase"], found: Dict[str, str],
                        make_case: Callable[[str, str], "SourceCase"], option: str, none_found: str, clash: str,
                        keep: Callable[[str], bool] = lambda sid: True) -> List[str]:
    """Images outside the protocol (e.g. a challenge's test set without public labels) added as unlabeled cases for
    ``option``: finding none, or an ID that is also a training case (``clash`` formats ``{sid}``), is an error."""
    if not found:
        raise ConversionError(f"{option}: {none_found}")
    added = []
    for sid, path in found.items():
        if sid in cases:
            raise ConversionError(clash.format(sid=sid))
        if keep(sid):
            cases[sid] = make_case(sid, path)
            added.append(sid)
    return added


def image_ending(path: str) -> Optional[str]:
    low = path.lower()
    for e in SITK_ENDINGS:
        if low.endswith(e):
            return e
    return None


def read_image(path: str, what: str = "image") -> sitk.Image:
    """The one reader of the converters: the image as SimpleITK reads it, after the file's own voxels were read in
    full (NIfTI: SimpleITK hides NaN/Inf as 0 and truncation as blank slices; see ``nifti_nonfinite_problems``)."""
    if not os.path.isfile(path):
        raise ConversionError(f"{what} not found: {path}")
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        raise ConversionError(f"{what}: {damaged_file_message(path, e)}") from None
    stored = nifti_nonfinite_problems(path)
    if stored:
        damaged = [p for p in stored if "damaged" in p]
        raise ConversionError(f"{what}: " + (damaged[0] if damaged else f"{path}: {'; '.join(stored)}. {FIX_HINT}"))
    return image


def find_dicom_series(folder: str) -> List[Tuple[str, str]]:
    """All DICOM series below ``folder`` as (directory, series UID)."""
    found = []
    for d, _, files in sorted(os.walk(folder)):
        if not files:
            continue
        try:
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(d)
        except RuntimeError:
            uids = ()
        for u in uids:
            found.append((d, u))
    return found


def read_dicom_series(folder: str, case: str) -> sitk.Image:
    """The one DICOM series below ``folder``; slices ordered by their position along the slice normal (GDCM), never
    by InstanceNumber."""
    series = find_dicom_series(folder)
    if not series:
        raise ConversionError(f"case {case}: no DICOM series found below {folder}")
    if len(series) > 1:
        raise ConversionError(f"case {case}: expected exactly one DICOM series below {folder}, found {len(series)} "
                              f"({', '.join(os.path.relpath(d, folder) or '.' for d, _ in series)})")
    d, uid = series[0]
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(d, uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        return reader.Execute()
    except RuntimeError as e:
        raise ConversionError(f"case {case}: cannot read the DICOM series in {d}: {str(e).strip().splitlines()[-1]}")


def image_from_array_xyz(arr: np.ndarray, spacing: Sequence[float], origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    """An array stored (x, y, z) (pynrrd/nibabel/h5 order) → SimpleITK image; SimpleITK's array order is (z, y, x)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        img.SetDirection(tuple(direction))
    return img


def image_from_array_zyx(arr: np.ndarray, spacing: Sequence[float], origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        img.SetDirection(tuple(direction))
    return img


def same_grid(a: sitk.Image, b: sitk.Image, rtol: float = 1e-3) -> bool:
    if a.GetSize() != b.GetSize():
        return False
    sa, sb = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if not np.allclose(sa, sb, rtol=rtol, atol=1e-5):
        return False
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=max(1e-3, 0.05 * float(min(sa)))):
        return False
    return np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-3)


def describe_grid(img: sitk.Image) -> str:
    f = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
    return f"size {img.GetSize()}, spacing {f(img.GetSpacing())}, origin {f(img.GetOrigin())}"


def put_label_on_image_grid(case: str, image: sitk.Image, label: sitk.Image) -> sitk.Image:
    """Image and label must have identical size; their geometry must agree within tolerance (then the label gets the
    image's exact geometry)."""
    if image.GetSize() != label.GetSize():
        raise ConversionError(f"case {case}: image and label sizes differ: image {image.GetSize()}, label "
                              f"{label.GetSize()} (x, y, z); expected identical sizes")
    if not same_grid(image, label):
        raise ConversionError(f"case {case}: image and label geometry differ: image {describe_grid(image)}; label "
                              f"{describe_grid(label)}")
    label = sitk.Image(label)
    label.CopyInformation(image)
    return label


def label_to_uint8(case: str, label: sitk.Image, allowed: Sequence[int], remap: Optional[Dict[int, int]] = None,
                   what: str = "label") -> sitk.Image:
    """Cast to uint8 after ``remap`` (e.g. LA {255: 1}); values must be a subset of ``allowed``."""
    arr = sitk.GetArrayFromImage(label)
    if arr.dtype.kind == "f":
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ConversionError(f"case {case}: {what} has non-integer values; expected an integer label map")
    values = np.unique(arr).astype(np.int64)
    if remap:
        out = arr.astype(np.int64)
        for k, v in remap.items():
            out[arr == k] = v
        arr = out
        values = np.unique(arr)
    bad = [int(v) for v in values if int(v) not in set(allowed)]
    if bad:
        raise ConversionError(
            f"case {case}: unexpected {what} values {bad}; expected a subset of {sorted(set(allowed))}"
            + (f" (after remapping {remap})" if remap else ""))
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(label)
    return out


def _check_dtype(case: str, path: str, key: str, arr: np.ndarray, kinds: str) -> None:
    if arr.dtype.kind not in kinds:
        want = {"fiu": "a numeric (float or integer) array", "iub": "an integer array"}.get(kinds, kinds)
        raise ConversionError(f"case {case}: {path} key '{key}' has dtype {arr.dtype}; expected {want}")


def read_h5_arrays(case: str, path: str, want_label: bool, order: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``image`` (and ``label`` if wanted and present) of a community h5 file, checked: keys, 3D, dtypes, equal
    shapes. ``order`` names the stored axis order in messages ("x, y, z" or "z, y, x")."""
    import h5py
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ConversionError(f"case {case}: cannot open {path}: {e}")
    with f:
        keys = list(f.keys())
        if "image" not in f:
            raise ConversionError(f"case {case}: {path} has no 'image' key (keys: {keys}); expected keys image, label")
        image = np.asarray(f["image"][()])
        label = np.asarray(f["label"][()]) if want_label and "label" in f else None
    if image.ndim != 3:
        raise ConversionError(f"case {case}: {path} image has shape {image.shape}; expected 3D ({order})")
    _check_dtype(case, path, "image", image, "fiu")
    if label is not None:
        if label.dtype.kind == "f" and np.all(np.mod(label, 1) == 0):
            label = label.astype(np.int64)   # integral floats are a storage accident, not an error
        _check_dtype(case, path, "label", label, "iub")
        if label.shape != image.shape:
            raise ConversionError(f"case {case}: {path} image shape {image.shape} and label shape {label.shape} "
                                  f"differ; expected identical ({order}) shapes")
    elif want_label:
        raise ConversionError(f"case {case}: label missing: {path} has no 'label' key (keys: {keys}); expected keys "
                              f"image, label")
    return image, label


def h5_source_case(prefix: str, source_id: str, source_name: str, path: str, spacing: Sequence[float],
                   allowed: Sequence[int], remap: Optional[Dict[int, int]] = None,
                   dtype=np.float32, state: Optional[dict] = None) -> "SourceCase":
    """A community h5 file with keys ``image`` and ``label`` stored (x, y, z) → SimpleITK (z, y, x) images with the
    given (assumed) spacing, origin 0 and identity direction. Like the nrrd/npy/NIfTI loaders, the label of an
    unlabeled case is neither read nor checked unless ``state["write_unlabeled_labels"]`` is set."""
    case = f"{prefix}_{source_id}"

    def load(with_label: bool) -> CaseData:
        if not with_label and state and state.get("write_unlabeled_labels"):
            image, label = _optional_label(case, path, "x, y, z")
        else:
            image, label = read_h5_arrays(case, path, with_label, "x, y, z")
        img = image_from_array_xyz(image.astype(dtype), spacing)
        if label is None:
            return CaseData([img])
        lab = label_to_uint8(case, image_from_array_xyz(label, spacing), allowed=allowed, remap=remap)
        return CaseData([img], lab)

    return SourceCase(source_id, source_name, load, True, f"key 'label' in {path}")


def _optional_label(case: str, path: str, order: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """An unlabeled case with --write-unlabeled-labels: its label is written if the file has one."""
    import h5py
    with h5py.File(path, "r") as f:
        has = "label" in f
    return read_h5_arrays(case, path, has, order)


def npy_release_shape(npy_dir: str, images: Dict[str, str]) -> List[int]:
    """The one array shape of a shape-resized npy release (DHC Synapse/AMOS); mixed shapes are refused."""
    shapes: Dict[Tuple[int, ...], List[str]] = {}
    for sid, path in images.items():
        try:
            shapes.setdefault(tuple(np.load(path, mmap_mode="r").shape), []).append(sid)
        except (ValueError, OSError) as e:
            raise ConversionError(f"cannot read {path} as a numpy array: {e}")
    if len(shapes) > 1:
        desc = "; ".join(f"{list(s)}: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}" for s, ids in shapes.items())
        raise ConversionError(f"{npy_dir} mixes npy volumes of different shapes ({desc}); expected one release "
                              f"(e.g. all 80 x 160 x 160)")
    shape = list(next(iter(shapes)))
    if len(shape) != 3:
        raise ConversionError(f"{npy_dir}: npy volumes have shape {shape}; expected 3D (z, y, x)")
    return shape


def npy_source_case(case: str, sid: str, image: str, label: Optional[str], geometry, state: dict,
                    allowed: Sequence[int], on_label: Optional[Callable[[str, np.ndarray], None]] = None) -> SourceCase:
    """A DHC-style ``<id>_image.npy`` / ``<id>_label.npy`` pair stored (z, y, x); ``geometry(sid, shape)`` gives
    (spacing, origin, direction). ``on_label(case, array)`` sees every label that is read."""

    def load(with_label: bool) -> CaseData:
        arr = np.load(image)
        if arr.dtype.kind not in "fiu":
            raise ConversionError(f"case {case}: {image} has dtype {arr.dtype}; expected a numeric image array")
        spacing, origin, direction = geometry(sid, arr.shape)
        img = image_from_array_zyx(arr.astype(np.float32), spacing, origin, direction)
        lab = None
        if label is not None and (with_label or state["write_unlabeled_labels"]):
            larr = np.load(label)
            if larr.shape != arr.shape:
                raise ConversionError(f"case {case}: image shape {arr.shape} and label shape {larr.shape} differ; "
                                      f"expected identical (z, y, x) shapes ({image}, {label})")
            lab = label_to_uint8(case, image_from_array_zyx(larr, spacing, origin, direction), allowed=allowed)
            if on_label is not None:
                on_label(case, larr)
        elif with_label:
            raise ConversionError(f"case {case}: label missing; expected {sid}_label.npy next to {image}")
        return CaseData([img], lab)

    return SourceCase(sid, os.path.basename(image), load, label is not None, label or f"{sid}_label.npy next to {image}")


def derived_npy_geometry(raw_image_of: Callable[[str], Optional[str]], case_of: Callable[[str], str],
                         derived: Dict[str, List[float]]):
    """geometry(sid, npy shape) for shape-resized npy volumes: spacing = raw spacing × raw size / npy size per axis,
    origin and direction copied from the raw header (``derived`` collects the spacings for dataset.json)."""

    def geometry(sid, arr_shape):
        raw = raw_image_of(sid)
        if raw is None:
            raise ConversionError(f"case {case_of(sid)}: --raw-dir has no raw image of this case to derive the spacing "
                                  f"from")
        r = sitk.ImageFileReader()
        r.SetFileName(raw)
        r.ReadImageInformation()
        npy_xyz = tuple(arr_shape[::-1])
        sp = [float(s) * float(n) / float(m) for s, n, m in zip(r.GetSpacing(), r.GetSize(), npy_xyz)]
        derived[case_of(sid)] = [round(v, 6) for v in sp]
        return sp, r.GetOrigin(), r.GetDirection()

    return geometry


def assumed_geometry(spacing: Sequence[float]) -> Tuple[Callable, Dict[str, object]]:
    """(geometry(...) -> (spacing, origin 0, identity direction), its dataset.json record) for sources without
    geometry."""
    spacing = tuple(float(v) for v in spacing)
    return (lambda *_: (spacing, (0.0, 0.0, 0.0), None)), {"spacing_source": "assumed", "assumed_spacing": list(spacing)}


def npy_geometry(args, raw_images_below: Callable[[str], Dict[str, str]], raw_what: str,
                 case_of: Callable[[str], str]) -> Tuple[Callable, Dict[str, object]]:
    """Geometry of shape-resized npy volumes: derived from the raw images of ``--raw-dir`` (``raw_images_below(dir)``
    = {source ID: raw image path}), else assumed (``--assume-spacing`` or 1 mm)."""
    assumed = parse_spacing(args.assume_spacing)
    if not args.raw_dir:
        return assumed_geometry(assumed or (1.0, 1.0, 1.0))
    if assumed:
        raise ConversionError("use either --raw-dir (derived spacing) or --assume-spacing, not both")
    raw_images = raw_images_below(require_dir(args.raw_dir))
    if not raw_images:
        raise ConversionError(f"--raw-dir {args.raw_dir}: no {raw_what} found")
    derived: Dict[str, List[float]] = {}
    return (derived_npy_geometry(raw_images.get, case_of, derived),
            {"spacing_source": "derived_from_raw", "derived_spacing": derived})


# =================================================================================================== cases and records
@dataclass
class CaseData:
    images: List[sitk.Image]            # one per channel
    label: Optional[sitk.Image] = None  # uint8 on the image grid, or None
    notes: Dict[str, object] = field(default_factory=dict)  # e.g. {"repair": "swap_xy"}


@dataclass
class SourceCase:
    """One case found in the source. ``load(with_label)`` returns a checked CaseData (label already remapped to
    the dataset's label set and on the image grid)."""
    source_id: str
    source_name: str
    load: Callable[[bool], CaseData]
    has_label: bool
    label_hint: str = ""


@dataclass
class DatasetInfo:
    source: str                      # LA2018, Pancreas-CT, BTCV-Synapse, own
    variant: str
    prefix: str                      # la, pancreas, synapse
    labels: Dict[str, int]
    channel_names: Dict[str, str]
    description: str = ""
    reference: str = ""
    licence: str = "see the original data release"
    record: Dict[str, object] = field(default_factory=dict)  # gt_cropped, resized, spacing_source, intensity, ...

    def case_id(self, source_id: str) -> str:
        """nnU-Net case ID: ``{prefix}_{source id}`` (own data: the given case name)."""
        return f"{self.prefix}_{source_id}" if self.prefix else source_id


def add_common_options(p: argparse.ArgumentParser, splits: Sequence[str], default_split: str, variants: Sequence[str],
                       default_name: str) -> None:
    p.add_argument("-i", "--input", required=True, help="source folder (see docs/datasets.md for what it contains)")
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset ID (1-999)")
    p.add_argument("--name", default=default_name, help=f"dataset name (default {default_name})")
    p.add_argument("--split", default=default_split,
                   help=f"published split: {', '.join(splits)}, or custom (all cases not in --test-list are training "
                        f"cases; needs --num-labeled or --labeled-list). Default {default_split}")
    p.add_argument("--num-labeled", type=int, default=None, help="labeled = the first N IDs of the split's train list")
    p.add_argument("--labeled-list", default=None, help="file with the labeled IDs, one per line (must be in the "
                                                          "split's train list); overrides --num-labeled")
    p.add_argument("--test-list", default=None, help="--split custom only: file with the test IDs, one per line")
    p.add_argument("--transductive", action="store_true",
                   help="also write the test images to imagesUnlabeled/ (recorded in dataset.json)")
    p.add_argument("--variant", default="auto", help=f"source variant: auto, {', '.join(variants)}")
    p.add_argument("--assume-spacing", default=None, metavar="X,Y,Z",
                   help="spacing in mm for sources without geometry (h5/npy)")
    p.add_argument("--write-unlabeled-labels", action="store_true",
                   help="diagnostics only: also write the unlabeled cases' labels to labelsUnlabeled/ (trainers never "
                        "read it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder with this ID")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is also off when output is not a "
                                                        "terminal)")


def check_variant(variant: str, variants: Sequence[str]) -> None:
    if variant != "auto" and variant not in variants:
        raise ConversionError(f"unknown --variant {variant!r}; choose one of: auto, {', '.join(variants)}")


def detect_variant(input_dir: str, detectors: Dict[str, Callable[[str], bool]], dataset: str, hints: str) -> str:
    found = [v for v, f in detectors.items() if f(input_dir)]
    if not found:
        raise ConversionError(f"{input_dir} does not look like any known {dataset} download. Expected:\n{hints}")
    if len(found) > 1:
        raise ConversionError(f"{input_dir} contains several {dataset} variants ({', '.join(found)}); choose one "
                              f"with --variant")
    return found[0]


def require_dir(path: str) -> str:
    if not os.path.isdir(path):
        raise ConversionError(f"input folder not found: {path}")
    return os.path.abspath(path)


# =================================================================================================== atomic writer
class DatasetWriter:
    """Writes into a hidden temporary folder next to the target; ``commit`` renames it into place."""

    def __init__(self, dataset_id: int, name: str, overwrite: bool, root: Optional[str] = None):
        self.root = root if root is not None else raw_root()
        self.folder_name = dataset_folder_name(dataset_id, name)
        self.final = os.path.join(self.root, self.folder_name)
        existing = find_existing_dataset(self.root, dataset_id)
        if existing is not None:
            if not overwrite:
                raise ConversionError(f"dataset folder {existing} already exists; use --overwrite to replace it")
            if os.path.basename(existing) != self.folder_name:
                raise ConversionError(
                    f"another dataset with ID {dataset_id} exists ({existing}); nnU-Net needs unique IDs. Remove it "
                    f"yourself or choose another -d")
        self.tmp = tempfile.mkdtemp(prefix=f".{self.folder_name}.tmp-", dir=self.root)
        self.written: Dict[str, List[str]] = {}

    def path(self, sub: str, file_name: str) -> str:
        d = os.path.join(self.tmp, sub)
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, file_name)

    def write_case_images(self, sub: str, case_id: str, images: Sequence[sitk.Image]) -> None:
        for c, img in enumerate(images):
            sitk.WriteImage(img, self.path(sub, f"{case_id}_{c:04d}{FILE_ENDING}"), True)
        self.written.setdefault(sub, []).append(case_id)

    def write_label(self, sub: str, case_id: str, label: sitk.Image) -> None:
        if label.GetPixelID() != sitk.sitkUInt8:
            label = sitk.Cast(label, sitk.sitkUInt8)
        sitk.WriteImage(label, self.path(sub, f"{case_id}{FILE_ENDING}"), True)

    def commit(self) -> str:
        old = None
        if os.path.exists(self.final):
            old = os.path.join(self.root, f".{self.folder_name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(self.final, old)
        os.rename(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# =================================================================================================== checks
def check_case_data(case: str, data: CaseData, labels: Dict[str, int], need_label: bool, role: str) -> None:
    if not data.images:
        raise ConversionError(f"case {case}: no image")
    ref = data.images[0]
    if ref.GetDimension() != 3:
        raise ConversionError(f"case {case}: expected a 3D image, got {ref.GetDimension()}D")
    for c, img in enumerate(data.images[1:], start=1):
        if not same_grid(ref, img):
            raise ConversionError(f"case {case}: channel {c} geometry differs from channel 0: {describe_grid(img)} "
                                  f"vs {describe_grid(ref)}")
    for c, img in enumerate(data.images):
        problems = sitk_image_problems(img)
        if problems:
            raise ConversionError(f"case {case} ({role}), channel {c}: {'; '.join(problems)}. {FIX_HINT} Nothing was "
                                  f"written.")
    if data.label is None:
        if need_label:
            raise ConversionError(f"case {case} ({role}): label missing")
        return
    if data.label.GetSize() != ref.GetSize():
        raise ConversionError(f"case {case}: image and label sizes differ: image {ref.GetSize()}, label "
                              f"{data.label.GetSize()} (x, y, z)")
    if not same_grid(ref, data.label):
        raise ConversionError(f"case {case}: image and label geometry differ: image {describe_grid(ref)}; label "
                              f"{describe_grid(data.label)}")
    arr = sitk.GetArrayViewFromImage(data.label)
    allowed = set(labels.values())
    values = set(int(v) for v in np.unique(arr))
    if not values <= allowed:
        raise ConversionError(f"case {case}: unexpected label values {sorted(values - allowed)}; expected a subset of "
                              f"{sorted(allowed)}")
    if role in ("labeled", "validation") and values <= {0}:
        warn(f"case {case} ({role}): the label has no foreground")


# =================================================================================================== conversion
@dataclass
class Plan:
    labeled: List[str]
    unlabeled: List[str]       # from the split's train list
    validation: List[str]
    test: List[str]
    extra_unlabeled: List[str]  # e.g. LA Testing Set, BTCV Testing cases
    labeled_selection: str
    missing: List[str]


def make_plan(args, split: Split, cases: Dict[str, SourceCase], normalise: Callable[[str], str],
              extra_test: Sequence[str] = (), extra_unlabeled: Sequence[str] = (),
              available: Optional[Sequence[str]] = None) -> Plan:
    """Roles for every case. ``available``: the source IDs the split draws from (default: all of ``cases``)."""
    if split.name == "custom" and args.num_labeled is None and args.labeled_list is None:
        raise ConversionError("--split custom needs --num-labeled N or --labeled-list FILE")
    if args.labeled_list is not None and args.num_labeled is not None:
        warn(f"--labeled-list overrides --num-labeled {args.num_labeled}")
    if args.test_list is not None and split.name != "custom":
        raise ConversionError("--test-list is only used with --split custom")
    sel = select_cases(split, list(cases) if available is None else list(available), args.num_labeled, args.labeled_list, normalise)
    test = list(sel.test) + [i for i in extra_test]
    plan = Plan(sel.labeled, sel.unlabeled, sel.validation, test, list(extra_unlabeled), sel.labeled_selection,
                sel.missing)
    roles: Dict[str, str] = {}
    for role, ids in (("labeled", plan.labeled), ("unlabeled", plan.unlabeled), ("validation", plan.validation),
                      ("test", plan.test), ("unlabeled (extra)", plan.extra_unlabeled)):
        for i in ids:
            if i in roles:
                raise ConversionError(f"case {i} would be in two roles: {roles[i]} and {role}")
            roles[i] = role
    for role, ids in (("labeled", plan.labeled), ("validation", plan.validation), ("test", plan.test)):
        for i in ids:
            if not cases[i].has_label:
                raise ConversionError(f"case {i} ({role}): label missing; expected {cases[i].label_hint}")
    if sel.missing:
        warn(f"split {split.name}: {len(sel.missing)} case(s) of the split are not in the source and were dropped: "
             f"{', '.join(sel.missing)} (recorded as missing_cases in dataset.json)")
    return plan


def converter_record(argv: Optional[Sequence[str]], prog: str) -> Dict[str, str]:
    args = list(sys.argv[1:] if argv is None else argv)
    return {"package": "nnunetv2_semisup", "version": package_version(),
            "command": " ".join([prog] + [a if " " not in a else repr(a) for a in args])}


def build_semisup_record(info: DatasetInfo, split_name: str, plan: Plan, transductive: bool,
                         case_id_map: Dict[str, str], converter: Dict[str, str], extra: Dict[str, object]) -> dict:
    cid = lambda ids: [info.case_id(i) for i in ids]  # noqa: E731
    unlabeled_all = cid(plan.unlabeled) + cid(plan.extra_unlabeled) + (cid(plan.test) if transductive else [])
    rec = {
        "format_version": SEMISUP_FORMAT_VERSION,
        "source": info.source,
        "source_variant": info.variant,
        "gt_cropped": False,
        "resized": False,
        "spacing_source": "header",
    }
    rec.update(info.record)
    rec.update({
        "split": split_name,
        "labeled_selection": plan.labeled_selection,
        "num_labeled": len(plan.labeled),
        "num_unlabeled": len(unlabeled_all),
        "num_validation": len(plan.validation),
        "num_test": len(plan.test),
        "labeled_cases": cid(plan.labeled),
        "unlabeled_cases": unlabeled_all,
        "validation_cases": cid(plan.validation),
        "test_cases": cid(plan.test),
        "transductive": bool(transductive),
        "missing_cases": list(plan.missing),
        "case_id_map": case_id_map,
        "converter": converter,
    })
    rec.update(extra)
    return rec


def print_summary(rec: dict, folder: str) -> None:
    rows = [
        ("dataset", folder),
        ("source / variant", f"{rec.get('source')} / {rec.get('source_variant')}"),
        ("split", f"{rec.get('split')} ({rec.get('labeled_selection')})"),
        ("spacing source", f"{rec.get('spacing_source')}"
                           + (f" {rec['assumed_spacing']}" if rec.get("assumed_spacing") else "")),
        ("GT-cropped", str(rec.get("gt_cropped"))),
        ("resized", str(rec.get("resized"))),
        ("labeled (imagesTr)", str(rec.get("num_labeled"))),
        ("validation (imagesTr)", str(rec.get("num_validation"))),
        ("unlabeled (imagesUnlabeled)", str(rec.get("num_unlabeled"))),
        ("test (imagesTs)", str(rec.get("num_test"))),
        ("transductive", str(rec.get("transductive"))),
        ("missing cases", ", ".join(rec.get("missing_cases") or []) or "-"),
    ]
    w = max(len(r[0]) for r in rows)
    print("-" * (w + 40))
    for k, v in rows:
        print(f"{k:<{w}} | {v}")
    print("-" * (w + 40), flush=True)


def unlabeled_copies(digests: Dict[str, Dict[str, str]], transductive: bool) -> List[str]:
    """Unlabeled cases whose channel-0 voxels equal a labeled (or, unless transductive, a test) case's."""
    refs = {d: f"the labeled case {c}" for c, d in digests["labeled"].items()}
    if not transductive:
        refs.update({d: f"the test case {c}" for c, d in digests["test"].items()})
    return [f"unlabeled case {c} has the same voxels as {refs[d]}" for c, d in sorted(digests["unlabeled"].items())
            if d in refs]


def run_conversion(args, info: DatasetInfo, cases: Dict[str, SourceCase], plan: Plan, split_name: str,
                   converter: Dict[str, str], extra_record: Optional[Dict[str, object]] = None,
                   finalise: Optional[Callable[[], None]] = None,
                   group_of: Optional[Callable[[str], str]] = None, refuse_copies: bool = False) -> str:
    """Load, check and write every case of the plan, then dataset.json (+ splits_semisup.json); atomic.

    Leak guard: an unlabeled case whose channel-0 voxels equal a labeled or (unless transductive) a test case's is
    refused with ``refuse_copies`` (own data), otherwise warned about and recorded as ``unlabeled_copies`` (a
    published split is reproduced as published, duplicates included).

    ``group_of(case_id)`` (e.g. ACDC: the patient): without a validation list, write nnU-Net's five folds over the
    labeled cases with all cases of a group in the same fold (nnU-Net's own split would separate them)."""
    if args.transductive:
        warn("--transductive: the test images are also written to imagesUnlabeled/ (recorded in dataset.json)")
    writer = DatasetWriter(args.dataset_id, args.name, args.overwrite)
    extra = dict(extra_record or {})
    repairs: Dict[str, object] = {}
    digests: Dict[str, Dict[str, str]] = {"labeled": {}, "unlabeled": {}, "test": {}}  # leak guard, channel 0
    try:
        def load(i: str, role: str, need_label: bool) -> CaseData:
            case_id = info.case_id(i)
            data = cases[i].load(need_label)
            check_case_data(case_id, data, info.labels, need_label, role)
            if data.notes:
                repairs[case_id] = data.notes
            digests["labeled" if role == "validation" else role][case_id] = voxel_digest(
                sitk.GetArrayViewFromImage(data.images[0]))
            return data

        jobs = [(i, "labeled" if i in plan.labeled else "validation") for i in plan.labeled + plan.validation] + \
            [(i, "unlabeled") for i in plan.unlabeled + plan.extra_unlabeled] + [(i, "test") for i in plan.test]
        for i, role in progress(jobs, desc=f"converting {args.name}", quiet=getattr(args, "quiet", False)):
            if role in ("labeled", "validation"):
                data = load(i, role, True)
                writer.write_case_images("imagesTr", info.case_id(i), data.images)
                writer.write_label("labelsTr", info.case_id(i), data.label)
            elif role == "unlabeled":
                want = bool(args.write_unlabeled_labels) and cases[i].has_label
                data = load(i, "unlabeled", False)
                writer.write_case_images("imagesUnlabeled", info.case_id(i), data.images)
                if want and data.label is not None:
                    writer.write_label("labelsUnlabeled", info.case_id(i), data.label)
            else:
                data = load(i, "test", cases[i].has_label)
                writer.write_case_images("imagesTs", info.case_id(i), data.images)
                if data.label is not None:
                    writer.write_label("labelsTs", info.case_id(i), data.label)
                if args.transductive:
                    writer.write_case_images("imagesUnlabeled", info.case_id(i), data.images)
        os.makedirs(os.path.join(writer.tmp, "imagesTr"), exist_ok=True)
        os.makedirs(os.path.join(writer.tmp, "labelsTr"), exist_ok=True)
        leaks = unlabeled_copies(digests, transductive=bool(args.transductive))
        if leaks:
            shown = "; ".join(leaks[:5]) + (f" (and {len(leaks) - 5} more)" if len(leaks) > 5 else "")
            if refuse_copies:
                raise ConversionError(f"{shown}. {LEAK_HINT} Nothing was written.")
            warn(f"{shown}: the published split has unlabeled scans with the voxels of a labeled or test scan; "
                 f"kept as published and recorded in dataset.json (semisup.unlabeled_copies)")
            extra["unlabeled_copies"] = leaks

        if finalise is not None:
            finalise()  # the converter may update info.record from what the loaders found
        used = plan.labeled + plan.validation + plan.unlabeled + plan.extra_unlabeled + plan.test
        case_id_map = {info.case_id(i): cases[i].source_name for i in used}
        unused = sorted(set(cases) - set(used))
        if unused:
            extra["unused_source_cases"] = unused
        if repairs:
            extra["case_notes"] = repairs
        rec = build_semisup_record(info, split_name, plan, args.transductive, case_id_map, converter, extra)
        write_dataset_json(writer.tmp, info, len(plan.labeled) + len(plan.validation), rec, args.name)
        folds = None
        if plan.validation:
            folds = [{"train": rec["labeled_cases"], "val": rec["validation_cases"]}]
        elif group_of is not None:
            folds = grouped_folds(rec["labeled_cases"], group_of)
        if folds:
            write_json_atomic(folds, os.path.join(writer.tmp, "splits_semisup.json"))
        folder = writer.commit()
    except BaseException:
        writer.abort()
        raise
    print_summary(rec, folder)
    if plan.validation:
        print("splits_semisup.json written (one fold: train = labeled cases, val = validation cases); train with "
              "fold 0 after nnUNetv2_semisup_preprocess installs it.")
    elif folds:
        print(f"splits_semisup.json written ({len(folds)} folds over the labeled cases, grouped so that related cases "
              f"share a fold); nnUNetv2_semisup_preprocess installs it as splits_final.json.")
    return folder


def grouped_folds(case_ids: Sequence[str], group_of: Callable[[str], str], n_splits: int = 5) -> List[dict]:
    """nnU-Net's cross-validation split (its KFold, seed 12345) drawn over groups instead of cases; fewer folds when
    there are fewer than five groups, none for a single group."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    groups = sorted({group_of(c) for c in case_ids})
    if len(groups) < 2:
        return []
    folds = []
    for f in generate_crossval_split(groups, seed=12345, n_splits=min(n_splits, len(groups))):
        val = set(f["val"])
        folds.append({"train": [c for c in case_ids if group_of(c) not in val],
                      "val": [c for c in case_ids if group_of(c) in val]})
    return folds


def write_dataset_json(folder: str, info: DatasetInfo, num_training: int, record: dict, name: str) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    generate_dataset_json(folder, dict(info.channel_names), dict(info.labels), num_training, FILE_ENDING,
                          dataset_name=name, reference=info.reference or None,
                          description=info.description or None, license=info.licence,
                          converted_by=f"nnunetv2_semisup {package_version()}", semisup=record)


def cli(run: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> int:
    """Console entry: ConversionError → message on stderr and exit status 1."""
    try:
        run(argv)
    except ConversionError as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:
        if not is_explained(e):
            raise
        print(f"ERROR: {os_error_message(e)}", file=sys.stderr, flush=True)
        return 1
    return 0


def common_split(args, named: Callable[[str], Split], available: Sequence[str],
                 normalise: Callable[[str], str]) -> Split:
    if args.split == "custom":
        return custom_split(list(available), args.test_list, normalise)
    return named(args.split)
