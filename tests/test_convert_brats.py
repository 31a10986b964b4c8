"""BraTS 2019 converter: official training release and SSL4MIS h5, the URPC split, targets, modalities, bad inputs."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fakes import (BRATS_BOX, BRATS_SHAPE_ZYX, brats_ids, brats_seg_zyx, cases_in, conv_env,  # noqa: F401
                              dataset_json, leftovers, make_brats_h5, make_brats_raw, read_array, verify_integrity,
                              write_h5)
from nnunetv2_semisup_conversion import convert_brats
from nnunetv2_semisup_conversion.errors import ConversionError

TRAIN, VAL, TEST = brats_ids()
VALIDATION_SET = ["BraTS19_CBICA_AAM_1", "BraTS19_TCIA10_195_1"]    # subjects of the official Validation release


def _err(argv, match):
    with pytest.raises(ConversionError, match=match):
        convert_brats.run(argv)


@pytest.fixture(scope="module")
def raw_src(tmp_path_factory):
    return make_brats_raw(str(tmp_path_factory.mktemp("brats")), TRAIN + VAL + TEST, validation_ids=VALIDATION_SET)


def test_published_lists():
    assert (len(TRAIN), len(VAL), len(TEST)) == (250, 25, 60)
    assert len(set(TRAIN + VAL + TEST)) == 335 and not set(VALIDATION_SET) & set(TRAIN + VAL + TEST)


def test_raw_flair_whole_tumour_25_labeled(raw_src, conv_env):
    folder = convert_brats.run(["-i", raw_src, "-d", "611"])
    assert cases_in(folder, "imagesTr") == sorted(TRAIN[:25] + VAL) == cases_in(folder, "labelsTr")
    assert cases_in(folder, "imagesUnlabeled") == sorted(TRAIN[25:]) and len(TRAIN[25:]) == 225
    assert cases_in(folder, "imagesTs") == sorted(TEST) == cases_in(folder, "labelsTs")
    with open(os.path.join(folder, "splits_semisup.json")) as f:
        assert json.load(f) == [{"train": TRAIN[:25], "val": VAL}]
    dj = dataset_json(folder)
    assert dj["channel_names"] == {"0": "MRI"} and dj["labels"] == {"background": 0, "whole_tumor": 1}
    r = dj["semisup"]
    assert r["source"] == "BraTS2019" and r["source_variant"] == "brats_raw" and r["split"] == "urpc_brats"
    assert r["labeled_selection"] == "first_n:25" and r["modalities"] == ["FLAIR"] and r["target"] == "wt"
    # whole tumour = seg > 0 (labels 1, 2 and 4), geometry and FLAIR data kept
    seg = brats_seg_zyx()
    np.testing.assert_array_equal(read_array(os.path.join(folder, "labelsTr", f"{TRAIN[0]}.nii.gz")), seg > 0)
    case_dir = next(d for d, _, fs in os.walk(raw_src) if os.path.basename(d) == TRAIN[0])
    src = sitk.ReadImage(os.path.join(case_dir, f"{TRAIN[0]}_flair.nii.gz"))
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", f"{TRAIN[0]}_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(src))
    assert img.GetOrigin() == pytest.approx((-5, -6, -7))
    verify_integrity(folder)


def test_raw_all_modalities_subregions_50_labeled_validation_set(raw_src, conv_env):
    folder = convert_brats.run(["-i", raw_src, "-d", "612", "--num-labeled", "50", "--brats-modalities", "all",
                                "--brats-target", "subregions", "--brats-validation-set", "unlabeled"])
    assert cases_in(folder, "imagesTr") == sorted(TRAIN[:50] + VAL)
    assert cases_in(folder, "imagesUnlabeled") == sorted(TRAIN[50:] + VALIDATION_SET)
    dj = dataset_json(folder)
    assert dj["channel_names"] == {"0": "MRI", "1": "MRI", "2": "MRI", "3": "MRI"}
    assert dj["labels"] == {"background": 0, "edema": 1, "non_enhancing_and_necrosis": 2, "enhancing_tumor": 3}
    assert dj["semisup"]["modalities"] == ["T1", "T1ce", "T2", "FLAIR"]
    # channel order T1, T1ce, T2, FLAIR: the fakes' modality m has intensities 100 + 10 m inside the brain
    levels = [int(sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "imagesTr", f"{TRAIN[0]}_{c:04d}.nii.gz"
                                                                     ))).max()) // 10 * 10 for c in range(4)]
    assert levels == [110, 120, 130, 100]
    seg = brats_seg_zyx()
    expected = np.select([seg == 2, seg == 1, seg == 4], [1, 2, 3], 0)     # oedema 1, necrosis 2, enhancing (4) 3
    np.testing.assert_array_equal(read_array(os.path.join(folder, "labelsTr", f"{VAL[0]}.nii.gz")), expected)
    verify_integrity(folder)


def test_h5_assumed_and_raw_derived_geometry(raw_src, tmp_path, conv_env):
    h5 = make_brats_h5(str(tmp_path / "h5"), TRAIN + VAL + TEST)
    folder = convert_brats.run(["-i", h5, "-d", "613"])
    dj = dataset_json(folder)
    assert dj["channel_names"] == {"0": "noNorm"} and dj["semisup"]["spacing_source"] == "assumed"
    assert cases_in(folder, "imagesTr") == sorted(TRAIN[:25] + VAL)
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", f"{VAL[3]}_0000.nii.gz"))
    box_size = tuple(b - a for a, b in BRATS_BOX)                       # exclusive upper bound
    assert sitk.GetArrayFromImage(img).shape == box_size and img.GetSpacing() == (1, 1, 1)
    folder = convert_brats.run(["-i", h5, "-d", "614", "--raw-dir", raw_src])
    img = sitk.ReadImage(os.path.join(folder, "imagesTs", f"{TEST[0]}_0000.nii.gz"))
    (z0, _), (y0, _), (x0, _) = BRATS_BOX
    assert img.GetOrigin() == pytest.approx((-5 + x0, -6 + y0, -7 + z0))   # the raw header at the box corner
    r = dataset_json(folder)["semisup"]
    assert r["spacing_source"] == "derived_from_raw" and r["brain_box_start_zyx"][TEST[0]] == [z0, y0, x0]
    # the h5 label sits where the raw whole tumour is
    lab = sitk.ReadImage(os.path.join(folder, "labelsTs", f"{TEST[0]}.nii.gz"))
    raw_wt = sitk.GetImageFromArray((brats_seg_zyx() > 0).astype(np.uint8))
    raw_wt.SetOrigin((-5.0, -6.0, -7.0))
    resampled = sitk.Resample(lab, raw_wt, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled)[z0:BRATS_BOX[0][1], y0:BRATS_BOX[1][1],
                                                                    x0:BRATS_BOX[2][1]],
                                  (brats_seg_zyx() > 0)[z0:BRATS_BOX[0][1], y0:BRATS_BOX[1][1], x0:BRATS_BOX[2][1]])
    verify_integrity(folder)
    # a shape that is not the raw brain box aborts, naming the case
    write_h5(os.path.join(h5, "BraTS2019", "data", f"{TEST[0]}.h5"),
             {"image": np.zeros((5, 5, 5), np.float32), "label": np.zeros((5, 5, 5), np.uint8)})
    _err(["-i", h5, "-d", "615", "--raw-dir", raw_src], f"case {TEST[0]}: the brain box of the raw FLAIR .* size "
                                                         r"\(4, 6, 6\), the h5 image has shape \(5, 5, 5\)")


def test_bad_inputs(raw_src, tmp_path, conv_env):
    (tmp_path / "empty").mkdir()
    _err(["-i", str(tmp_path / "empty"), "-d", "616"], "does not look like any known BraTS 2019 download")
    src = str(tmp_path / "raw")
    shutil.copytree(raw_src, src)
    case_dir = next(d for d, _, fs in os.walk(src) if os.path.basename(d) == TRAIN[0])
    seg_path = os.path.join(case_dir, f"{TRAIN[0]}_seg.nii.gz")
    good = sitk.ReadImage(seg_path)
    bad = sitk.Image(good)
    bad[1, 1, 1] = 3                                                    # raw BraTS seg has no label 3
    sitk.WriteImage(bad, seg_path)
    _err(["-i", src, "-d", "616"], rf"case {TRAIN[0]}: unexpected seg values \[3\]; expected a subset of \[0, 1, 2, 4\]")
    _err(["-i", src, "-d", "616", "--brats-target", "subregions"], r"unexpected seg values \[3\]")
    small = sitk.Image(9, 10, 5, sitk.sitkUInt8)
    sitk.WriteImage(small, seg_path)
    _err(["-i", src, "-d", "616"], rf"case {TRAIN[0]}: image and label sizes differ")
    os.remove(seg_path)
    _err(["-i", src, "-d", "616"], rf"case {TRAIN[0]} \(labeled\): label missing")
    sitk.WriteImage(good, seg_path)
    os.remove(os.path.join(case_dir, f"{TRAIN[0]}_t1ce.nii.gz"))
    _err(["-i", src, "-d", "616", "--brats-modalities", "all"], rf"case {TRAIN[0]}: t1ce image missing")
    shutil.rmtree(next(d for d, _, fs in os.walk(src) if os.path.basename(d) == TEST[5]))
    _err(["-i", src, "-d", "616"], f"not found in the source: {TEST[5]}")
    _err(["-i", src, "-d", "616", "--raw-dir", src], "for the h5 variant")
    h5 = make_brats_h5(str(tmp_path / "h5"), TRAIN + VAL + TEST)
    _err(["-i", h5, "-d", "616", "--brats-target", "subregions"], "needs the raw BraTS 2019 release")
    f = os.path.join(h5, "BraTS2019", "data", f"{TRAIN[0]}.h5")
    write_h5(f, {"img": np.zeros((2, 2, 2), np.float32)})
    _err(["-i", h5, "-d", "616"], f"case {TRAIN[0]}: .* has no 'image' key")
    write_h5(f, {"image": np.zeros((2, 2, 2), np.float32), "label": np.full((2, 2, 2), 0.5, np.float32)})
    _err(["-i", h5, "-d", "616"], f"case {TRAIN[0]}: .* key 'label' has dtype float32; expected an integer array")
    write_h5(f, {"image": np.zeros((2, 2, 2), np.float32), "label": np.full((2, 2, 2), 2, np.uint8)})
    _err(["-i", h5, "-d", "616"], rf"case {TRAIN[0]}: unexpected label values \[2\]")
    assert leftovers(conv_env) == []
