"""Tiny fake inputs in the exact on-disk formats of the dataset releases (see shared/spec/datasets.md).

Every builder returns what a test needs to check the geometry: marker voxels are placed at known (x, y, z) indices.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunetv2_semisup_conversion.splits import load_list

# ------------------------------------------------------------------------------------------------ generic helpers
MARK_XYZ = (3, 5, 2)        # a marker voxel, (x, y, z) index order
MARK_VALUE = 99.0


def xyz_volume(shape_xyz: Tuple[int, int, int], seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(image, label) arrays in (x, y, z) order; label box with foreground; image marker at MARK_XYZ."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 1, shape_xyz).astype(np.float32)
    lab = np.zeros(shape_xyz, np.uint8)
    x, y, z = shape_xyz
    lab[x // 4: x // 2 + 1, y // 4: y // 2 + 1, :] = 1
    img[MARK_XYZ] = MARK_VALUE
    return img, lab


def la_ids() -> Tuple[List[str], List[str]]:
    return load_list("LA", "train.list"), load_list("LA", "test.list")


def write_h5(path: str, arrays: Dict[str, np.ndarray]) -> None:
    import h5py
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


# ------------------------------------------------------------------------------------------------ LA
def make_la_h5(root: str, ids: Iterable[str], shape_xyz=(20, 16, 8), layout: str = "nested",
               label_values: Optional[Dict[str, np.ndarray]] = None) -> str:
    """UA-MT release: '2018LA_Seg_Training Set/<ID>/mri_norm2.h5' (nested) or '<ID>.h5' (flat)."""
    base = os.path.join(root, "2018LA_Seg_Training Set") if layout == "nested" else root
    for n, i in enumerate(ids):
        img, lab = xyz_volume(shape_xyz, n)
        path = os.path.join(base, i, "mri_norm2.h5") if layout == "nested" else os.path.join(base, f"{i}.h5")
        write_h5(path, {"image": img, "label": lab})
    return root


def write_nrrd_xyz(path: str, arr_xyz: np.ndarray, spacing: Optional[Sequence[float]]) -> None:
    """pynrrd writes (x, y, z) arrays like the challenge files; spacing None = no geometry in the header."""
    import nrrd
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header = {}
    if spacing is not None:
        header = {"space": "left-posterior-superior", "space directions": np.diag(spacing).tolist(),
                  "space origin": [0.0, 0.0, 0.0]}
    nrrd.write(path, arr_xyz, header)


def make_la_raw(root: str, train_ids: Iterable[str], testing_ids: Iterable[str] = (), shape_xyz=(10, 8, 6),
                spacing: Optional[Sequence[float]] = None, testing_labels: bool = True) -> str:
    """Challenge download: 'Training Set/<ID>/lgemri.nrrd' + 'laendo.nrrd' {0, 255}; 'Testing Set/<ID>/...'."""
    for folder, ids, with_label in (("Training Set", train_ids, True), ("Testing Set", testing_ids, testing_labels)):
        for n, i in enumerate(ids):
            img, lab = xyz_volume(shape_xyz, n)
            img = (np.abs(img) * 20).astype(np.uint8)
            img[MARK_XYZ] = 99
            write_nrrd_xyz(os.path.join(root, folder, i, "lgemri.nrrd"), img, spacing)
            if with_label:
                write_nrrd_xyz(os.path.join(root, folder, i, "laendo.nrrd"), (lab * 255).astype(np.uint8), spacing)
    return root


# ------------------------------------------------------------------------------------------------ Pancreas
def pancreas_ids(n: int = 82) -> List[str]:
    ids = [f"{i:04d}" for i in range(1, 83)]
    if n == 80:
        ids = [i for i in ids if i not in ("0025", "0070")]
    return ids


def make_pancreas_h5(root: str, ids: Iterable[str], style: str, shape_xyz=(12, 10, 8)) -> str:
    """style 'mcnet': Pancreas/Pancreas_h5/image0001_norm.h5; style 'coranet': 0001.h5."""
    for n, i in enumerate(ids):
        img, lab = xyz_volume(shape_xyz, n)
        if style == "mcnet":
            path = os.path.join(root, "Pancreas", "Pancreas_h5", f"image{i}_norm.h5")
        else:
            path = os.path.join(root, f"{i}.h5")
        write_h5(path, {"image": img, "label": lab})
    return root


def ct_body_volume(nx=12, ny=12, nz=8) -> Tuple[np.ndarray, np.ndarray]:
    """(image HU, label) in SimpleITK (z, y, x) order. Body (40 HU) = y < 6 and z < nz - 2; air -1000 elsewhere.
    Label: y in [1, 4), x in [6, 10), z in [0, 3) - inside the body; its in-plane transpose and its z-flip are not."""
    img = np.full((nz, ny, nx), -1000, np.int16)
    img[: nz - 2, :6, :] = 40
    lab = np.zeros((nz, ny, nx), np.uint8)
    lab[0:3, 1:4, 6:10] = 1
    return img, lab


def write_dicom_series(folder: str, vol_zyx: np.ndarray, spacing_xyz: Sequence[float], origin_xyz: Sequence[float],
                       patient: str, reverse_instance_numbers: bool = True) -> None:
    """One CT series with real ImagePositionPatient tags; InstanceNumber deliberately runs opposite to z so that a
    reader sorting by InstanceNumber would stack the slices upside down."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    os.makedirs(folder, exist_ok=True)
    nz, ny, nx = vol_zyx.shape
    study, series = generate_uid(), generate_uid()
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.Modality = "CT"
        ds.PatientID = patient
        ds.PatientName = patient
        ds.SeriesNumber = 1
        ds.InstanceNumber = (nz - k) if reverse_instance_numbers else (k + 1)
        ds.ImagePositionPatient = [float(origin_xyz[0]), float(origin_xyz[1]), float(origin_xyz[2] + k * spacing_xyz[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing_xyz[1]), float(spacing_xyz[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = float(spacing_xyz[2])
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.PixelData = np.ascontiguousarray(vol_zyx[k]).astype("<i2").tobytes()
        ds.save_as(os.path.join(folder, f"1-{nz - k:03d}.dcm"), enforce_file_format=True)


PANCREAS_SPACING = (0.8, 0.8, 2.5)
PANCREAS_ORIGIN = (-10.0, -20.0, 100.0)


def make_pancreas_raw(root: str, ids: Iterable[str], fmt: str = "dicom",
                      label_transform: Optional[Dict[str, str]] = None) -> str:
    """TCIA layout: Pancreas-CT/PANCREAS_XXXX/<study>/<series>/1-NNN.dcm (fmt dicom) or
    Pancreas-CT/PANCREAS_XXXX.nii.gz (fmt nifti); labels TCIA_pancreas_labels-02-05-2017/labelXXXX.nii.gz.
    label_transform[id] in {'swap_xy', 'flip_z', 'outside', 'zflip_header', 'far_origin'} corrupts / re-encodes
    that label."""
    label_transform = label_transform or {}
    for i in ids:
        img, lab = ct_body_volume()
        if fmt == "dicom":
            write_dicom_series(os.path.join(root, "Pancreas-CT", f"PANCREAS_{i}", "1.2.3-study", "1.2.3-series"),
                               img, PANCREAS_SPACING, PANCREAS_ORIGIN, f"PANCREAS_{i}")
        else:
            im = sitk.GetImageFromArray(img)
            im.SetSpacing(PANCREAS_SPACING)
            im.SetOrigin(PANCREAS_ORIGIN)
            os.makedirs(os.path.join(root, "Pancreas-CT"), exist_ok=True)
            sitk.WriteImage(im, os.path.join(root, "Pancreas-CT", f"PANCREAS_{i}.nii.gz"))
        t = label_transform.get(i)
        origin = PANCREAS_ORIGIN
        direction = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
        if t == "swap_xy":
            lab = np.ascontiguousarray(np.transpose(lab, (0, 2, 1)))
        elif t == "flip_z":
            lab = np.ascontiguousarray(lab[::-1])
        elif t == "outside":
            lab = np.zeros_like(lab)
            lab[6:8, 8:11, 8:11] = 1   # in the air whatever the axis handling
        elif t == "far_origin":
            # array aligned with the image, but a header that puts it 1 m away (outside the image grid)
            origin = (PANCREAS_ORIGIN[0] + 1000.0, PANCREAS_ORIGIN[1], PANCREAS_ORIGIN[2])
        elif t == "zflip_header":
            # same physical label, stored with the slice axis reversed and a negative z direction
            lab = np.ascontiguousarray(lab[::-1])
            origin = (PANCREAS_ORIGIN[0], PANCREAS_ORIGIN[1], PANCREAS_ORIGIN[2] + (lab.shape[0] - 1) * PANCREAS_SPACING[2])
            direction = (1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0)
        li = sitk.GetImageFromArray(lab)
        li.SetSpacing(PANCREAS_SPACING)
        li.SetOrigin(origin)
        li.SetDirection(direction)
        os.makedirs(os.path.join(root, "TCIA_pancreas_labels-02-05-2017"), exist_ok=True)
        sitk.WriteImage(li, os.path.join(root, "TCIA_pancreas_labels-02-05-2017", f"label{i}.nii.gz"))
    return root


# ------------------------------------------------------------------------------------------------ Synapse
def synapse_ids() -> List[str]:
    return [f"{i:04d}" for i in list(range(1, 11)) + list(range(21, 41))]


SYN_RAW_SHAPE_XYZ = (16, 12, 10)
SYN_RAW_SPACING = (0.7, 0.8, 3.0)


def synapse_label_zyx(shape_zyx: Tuple[int, int, int], seed: int) -> np.ndarray:
    lab = np.zeros(shape_zyx, np.int8)
    z, y, x = shape_zyx
    lab[: z // 2, : y // 2, : x // 2] = 6   # liver
    lab[z // 2:, y // 2:, x // 2:] = 1      # spleen
    lab[0, 0, 0] = 13
    return lab


def make_synapse_raw(root: str, ids: Iterable[str], layout: str = "rawdata", testing_ids: Iterable[str] = ()) -> str:
    """layout 'rawdata': RawData/Training/{img,label}/img0001.nii.gz|label0001.nii.gz (+ RawData/Testing/img);
    'dhc': imagesTr/img0001.nii.gz + labelsTr/label0001.nii.gz (+ Test/img)."""
    if layout == "rawdata":
        img_dir, lab_dir = os.path.join(root, "RawData", "Training", "img"), os.path.join(root, "RawData", "Training", "label")
        test_dir = os.path.join(root, "RawData", "Testing", "img")
    else:
        img_dir, lab_dir, test_dir = os.path.join(root, "imagesTr"), os.path.join(root, "labelsTr"), os.path.join(root, "Test", "img")
    for d in (img_dir, lab_dir):
        os.makedirs(d, exist_ok=True)
    shape_zyx = SYN_RAW_SHAPE_XYZ[::-1]
    for n, i in enumerate(list(ids) + list(testing_ids)):
        img = np.random.default_rng(n).normal(0, 100, shape_zyx).astype(np.int16)
        im = sitk.GetImageFromArray(img)
        im.SetSpacing(SYN_RAW_SPACING)
        im.SetOrigin((1.0, 2.0, 3.0))
        if i in testing_ids:
            os.makedirs(test_dir, exist_ok=True)
            sitk.WriteImage(im, os.path.join(test_dir, f"img{i}.nii.gz"))
            continue
        sitk.WriteImage(im, os.path.join(img_dir, f"img{i}.nii.gz"))
        lab = sitk.GetImageFromArray(synapse_label_zyx(shape_zyx, n).astype(np.uint8))
        lab.CopyInformation(im)
        sitk.WriteImage(lab, os.path.join(lab_dir, f"label{i}.nii.gz"))
    return root


SYN_NPY_SHAPE_ZYX = (5, 8, 8)


def make_synapse_npy(root: str, ids: Iterable[str], shape_zyx=SYN_NPY_SHAPE_ZYX, npy_dir: str = "npy",
                     split_dir: str = "splits") -> str:
    """DHC release: <base>/npy/0001_image.npy (float32 HU, (z, y, x)) + 0001_label.npy (int8) + <base>/splits/*.txt."""
    d = os.path.join(root, npy_dir)
    os.makedirs(d, exist_ok=True)
    for n, i in enumerate(ids):
        img = np.random.default_rng(n).normal(0, 100, shape_zyx).astype(np.float32)
        img[MARK_XYZ[::-1]] = 1234.0
        np.save(os.path.join(d, f"{i}_image.npy"), img)
        np.save(os.path.join(d, f"{i}_label.npy"), synapse_label_zyx(shape_zyx, n))
    s = os.path.join(root, split_dir)
    os.makedirs(s, exist_ok=True)
    for name in ("train", "eval", "test"):
        src = load_list("Synapse", f"skcdf_{name}.txt")
        with open(os.path.join(s, f"{name}.txt"), "w") as f:
            f.write("\n".join(src) + "\n")
    return root


# ------------------------------------------------------------------------------------------------ test plumbing
import json  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def conv_env(tmp_path, monkeypatch):
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results pointing into tmp_path; returns the raw folder."""
    raw = tmp_path / "nnUNet_raw"
    for name, p in (("nnUNet_raw", raw), ("nnUNet_preprocessed", tmp_path / "nnUNet_preprocessed"),
                    ("nnUNet_results", tmp_path / "nnUNet_results")):
        p.mkdir()
        monkeypatch.setenv(name, str(p))
    return raw


def dataset_json(folder) -> dict:
    with open(os.path.join(folder, "dataset.json")) as f:
        return json.load(f)


def cases_in(folder, sub: str) -> List[str]:
    """Case IDs of an images* folder (files {case}_0000.nii.gz) or a labels* folder ({case}.nii.gz)."""
    d = os.path.join(folder, sub)
    if not os.path.isdir(d):
        return []
    out = []
    for f in sorted(os.listdir(d)):
        assert f.endswith(".nii.gz"), f
        stem = f[: -len(".nii.gz")]
        out.append(stem[:-5] if sub.startswith("images") else stem)
    return sorted(set(out))


def read_array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


class _ForkContext:
    """Stands in for the ``multiprocessing`` module inside nnU-Net's verify_dataset_integrity so that its worker pool
    is forked instead of spawned: the checks are nnU-Net's own, only the start-up of a fresh interpreter (which
    re-imports torch, ~10 s on a busy 2-core machine) is saved."""

    def get_context(self, method=None):
        import multiprocessing
        return multiprocessing.get_context("fork")


def verify_integrity(folder) -> None:
    """nnU-Net's own dataset integrity check (what nnUNetv2_plan_and_preprocess --verify_dataset_integrity runs)."""
    import nnunetv2.experiment_planning.verify_dataset_integrity as vdi
    original = vdi.multiprocessing
    vdi.multiprocessing = _ForkContext()
    try:
        vdi.verify_dataset_integrity(str(folder), num_processes=1)
    finally:
        vdi.multiprocessing = original


def leftovers(raw) -> List[str]:
    """Anything in nnUNet_raw (a dataset folder or a temporary folder) - must be empty after a failed conversion."""
    return sorted(os.listdir(raw))
