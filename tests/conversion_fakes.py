"""Tiny fake inputs in the exact on-disk formats of the dataset releases (see docs/spec/datasets.md).

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


# ------------------------------------------------------------------------------------------------ AMOS
AMOS_SHAPE_ZYX = (4, 8, 8)
AMOS_SPACING = {"CT": (0.8, 0.8, 5.0), "MRI": (1.2, 1.2, 6.0)}


def amos_ids() -> Tuple[List[str], List[str]]:
    """(imagesTr IDs = DHC train + eval, imagesVa IDs = DHC test)."""
    return load_list("AMOS", "dhc_train.txt") + load_list("AMOS", "dhc_eval.txt"), load_list("AMOS", "dhc_test.txt")


def amos_label_zyx(case: str, shape_zyx=AMOS_SHAPE_ZYX) -> np.ndarray:
    """Liver (6) and spleen (1) everywhere; bladder (14) and prostate/uterus (15) only in CT (pelvis outside the
    MRI field of view, as in the release)."""
    lab = np.zeros(shape_zyx, np.uint8)
    lab[:2, :4, :4] = 6
    lab[2:, 4:, 4:] = 1
    if int(case[-4:]) < 500:
        lab[0, 7, 0] = 14
        lab[3, 0, 7] = 15
    return lab


def make_amos_raw(root: str, tr_ids: Iterable[str], va_ids: Iterable[str], ts_ids: Iterable[str] = ()) -> str:
    """Official release: amos22/{imagesTr,labelsTr,imagesVa,labelsVa,imagesTs}/amos_XXXX.nii.gz."""
    base = os.path.join(root, "amos22")
    for folder, ids, with_label in (("Tr", tr_ids, True), ("Va", va_ids, True), ("Ts", ts_ids, False)):
        for d in (f"images{folder}",) + ((f"labels{folder}",) if with_label else ()):
            os.makedirs(os.path.join(base, d), exist_ok=True)
        for n, i in enumerate(ids):
            img = np.random.default_rng(n).normal(0, 100, AMOS_SHAPE_ZYX).astype(np.int16)
            im = sitk.GetImageFromArray(img)
            im.SetSpacing(AMOS_SPACING["MRI" if int(i[-4:]) >= 500 else "CT"])
            im.SetOrigin((1.0, 2.0, 3.0))
            sitk.WriteImage(im, os.path.join(base, f"images{folder}", f"{i}.nii.gz"))
            if with_label:
                lab = sitk.GetImageFromArray(amos_label_zyx(i))
                lab.CopyInformation(im)
                sitk.WriteImage(lab, os.path.join(base, f"labels{folder}", f"{i}.nii.gz"))
    return root


AMOS_NPY_SHAPE_ZYX = (5, 8, 8)


def make_amos_npy(root: str, ids: Iterable[str], shape_zyx=AMOS_NPY_SHAPE_ZYX) -> str:
    """DHC preprocessed AMOS: <base>/npy/amos_XXXX_image.npy (float32, (z, y, x)) + amos_XXXX_label.npy (int8)."""
    d = os.path.join(root, "npy")
    os.makedirs(d, exist_ok=True)
    for n, i in enumerate(ids):
        img = np.random.default_rng(n).normal(0, 100, shape_zyx).astype(np.float32)
        img[MARK_XYZ[::-1]] = 1234.0
        np.save(os.path.join(d, f"{i}_image.npy"), img)
        np.save(os.path.join(d, f"{i}_label.npy"), amos_label_zyx(i, shape_zyx).astype(np.int8))
    return root


# ------------------------------------------------------------------------------------------------ BraTS 2019
BRATS_SHAPE_ZYX = (6, 10, 9)
BRATS_BOX = ((1, 5), (2, 8), (1, 7))        # brain = FLAIR != 0 at [1:6, 2:9, 1:8] (inclusive ends 5, 8, 7)
BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")


def brats_ids() -> Tuple[List[str], List[str], List[str]]:
    return tuple(load_list("BraTS2019", f"ssl4mis_{n}.txt") for n in ("train", "val", "test"))


def brats_seg_zyx() -> np.ndarray:
    """Raw BraTS seg values: 2 oedema around 1 necrosis and 4 enhancing, inside the brain box."""
    seg = np.zeros(BRATS_SHAPE_ZYX, np.uint8)
    seg[2:5, 3:7, 2:6] = 2
    seg[3, 4, 3] = 1
    seg[3, 5, 4] = 4
    return seg


def make_brats_raw(root: str, ids: Iterable[str], validation_ids: Iterable[str] = (), ending: str = ".nii.gz",
                   layout: str = "official") -> str:
    """'MICCAI_BraTS_2019_Data_Training/{HGG,LGG}/<ID>/<ID>_{flair,t1,t1ce,t2,seg}.nii.gz' (official) or
    '<root>/<ID>/...' (flat); validation subjects (no seg) in 'MICCAI_BraTS_2019_Data_Validation/<ID>/'."""
    for n, (i, val) in enumerate([(i, False) for i in ids] + [(i, True) for i in validation_ids]):
        if val:
            folder = os.path.join(root, "MICCAI_BraTS_2019_Data_Validation", i)
        elif layout == "official":
            folder = os.path.join(root, "MICCAI_BraTS_2019_Data_Training", "HGG" if n % 3 else "LGG", i)
        else:
            folder = os.path.join(root, i)
        os.makedirs(folder, exist_ok=True)
        for m, mod in enumerate(BRATS_MODALITIES):
            arr = np.zeros(BRATS_SHAPE_ZYX, np.float32)
            (z0, z1), (y0, y1), (x0, x1) = BRATS_BOX
            arr[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = 100 + 10 * m + np.random.default_rng(n).random((z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1))
            im = sitk.GetImageFromArray(arr)
            im.SetOrigin((-5.0, -6.0, -7.0))
            sitk.WriteImage(im, os.path.join(folder, f"{i}_{mod}{ending}"))
        if not val:
            seg = sitk.GetImageFromArray(brats_seg_zyx())
            seg.SetOrigin((-5.0, -6.0, -7.0))
            sitk.WriteImage(seg, os.path.join(folder, f"{i}_seg{ending}"))
    return root


def make_brats_h5(root: str, ids: Iterable[str]) -> str:
    """SSL4MIS release: BraTS2019/data/<ID>.h5, image = the brain box of FLAIR with exclusive upper bounds, (z, y, x),
    label = whole tumour {0, 1} of the same crop."""
    d = os.path.join(root, "BraTS2019", "data")
    os.makedirs(d, exist_ok=True)
    (z0, z1), (y0, y1), (x0, x1) = BRATS_BOX
    for n, i in enumerate(ids):
        img = np.random.default_rng(n).normal(0, 1, BRATS_SHAPE_ZYX).astype(np.float32)[z0:z1, y0:y1, x0:x1]
        lab = (brats_seg_zyx() > 0).astype(np.uint8)[z0:z1, y0:y1, x0:x1]
        write_h5(os.path.join(d, f"{i}.h5"), {"image": img, "label": lab})
    return root


# ------------------------------------------------------------------------------------------------ ACDC
ACDC_SHAPE_ZYX = (3, 8, 7)
ACDC_SPACING = (1.5, 1.5, 10.0)


def acdc_patients() -> List[str]:
    return [f"patient{i:03d}" for i in range(1, 101)]


def acdc_label_zyx(patient: str, phase: str) -> np.ndarray:
    """Different labels for ED and ES (and per patient), so a swapped frame mapping is detectable."""
    lab = np.zeros(ACDC_SHAPE_ZYX, np.uint8)
    k = int(patient[-3:]) % 3
    lab[:, 2:6, 2:5] = 2
    lab[:, 3:5, 3] = 3
    lab[:, 0:2, 0:2 + k] = 1
    if phase == "ES":
        lab[0, 7, 6] = 1
    return lab


def make_acdc_raw(root: str, patients: Iterable[str], testing: Iterable[str] = (), es_frames: Optional[Dict[str, int]] = None,
                  upscale: int = 1) -> str:
    """database/{training,testing}/patientXXX/{Info.cfg, patientXXX_frameYY.nii.gz, patientXXX_frameYY_gt.nii.gz};
    ED = frame 1, ES = frame 10 + patient % 5 (or es_frames[patient]). ``upscale`` enlarges the slices in-plane
    (for runs through nnU-Net's planner)."""
    grow = lambda a: np.repeat(np.repeat(a, upscale, 1), upscale, 2)  # noqa: E731
    for sub, ids in (("training", patients), ("testing", testing)):
        for i in ids:
            folder = os.path.join(root, "database", sub, i)
            os.makedirs(folder, exist_ok=True)
            es = (es_frames or {}).get(i, 10 + int(i[-3:]) % 5)
            with open(os.path.join(folder, "Info.cfg"), "w") as f:
                f.write(f"ED: 1\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
            for phase, frame in (("ED", 1), ("ES", es)):
                lab = grow(acdc_label_zyx(i, phase))
                img = np.random.default_rng(int(i[-3:]) * 2 + frame).random(lab.shape).astype(np.float32) * 100 + lab * 50
                im = sitk.GetImageFromArray(img)
                im.SetSpacing(ACDC_SPACING)
                im.SetOrigin((0.5, 0.5, -3.0))
                sitk.WriteImage(im, os.path.join(folder, f"{i}_frame{frame:02d}.nii.gz"))
                lab = sitk.GetImageFromArray(lab)
                lab.CopyInformation(im)
                sitk.WriteImage(lab, os.path.join(folder, f"{i}_frame{frame:02d}_gt.nii.gz"))
    return root


def make_acdc_h5(root: str, patients: Iterable[str], slice_patients: Iterable[str] = (), swap: Iterable[str] = ()) -> str:
    """SSL4MIS release: ACDC/data/patientXXX_frame0N.h5 (image (Z, H, W) min-max, label); the patients in
    ``slice_patients`` only as training slices data/slices/patientXXX_frame0N_slice_K.h5. ``swap``: patients whose
    frame01/frame02 hold ES/ED (a wrong mapping)."""
    d = os.path.join(root, "ACDC", "data")
    slice_patients = set(slice_patients)
    for i in patients:
        for n, phase in ((1, "ED"), (2, "ES")):
            if i in swap:
                phase = "ES" if phase == "ED" else "ED"
            img = np.random.default_rng(int(i[-3:]) * 7 + n).random(ACDC_SHAPE_ZYX).astype(np.float32)
            lab = acdc_label_zyx(i, phase)
            if i in slice_patients:
                for k in range(img.shape[0]):
                    write_h5(os.path.join(d, "slices", f"{i}_frame0{n}_slice_{k}.h5"), {"image": img[k], "label": lab[k]})
            else:
                write_h5(os.path.join(d, f"{i}_frame0{n}.h5"), {"image": img, "label": lab})
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
