"""Left Atrium converter: UA-MT h5 and raw nrrd variants, the UA-MT and M&N splits, every option, bad inputs."""
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fakes import (MARK_VALUE, MARK_XYZ, cases_in, dataset_json, la_ids, leftovers, make_la_h5,
                              make_la_raw, conv_env, read_array, verify_integrity, write_nrrd_xyz)  # noqa: F401
from nnunetv2_semisup_conversion import convert_la
from nnunetv2_semisup_conversion.errors import ConversionError

TRAIN, TEST = la_ids()


@pytest.fixture(scope="module")
def la_h5(tmp_path_factory):
    return make_la_h5(str(tmp_path_factory.mktemp("la_h5")), TRAIN + TEST, shape_xyz=(20, 16, 8))


@pytest.fixture(scope="module")
def la_raw(tmp_path_factory):
    return make_la_raw(str(tmp_path_factory.mktemp("la_raw")), TRAIN + TEST, testing_ids=["TESTING0000000000001",
                                                                                         "TESTING0000000000002"])


def test_shipped_lists_match_the_spec():
    assert len(TRAIN) == 80 and len(TEST) == 20 and not set(TRAIN) & set(TEST)
    assert TRAIN[:4] == ["06SR5RBREL16DQ6M8LWS", "0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX", "1GU15S0GJ6PFNARO469W"]
    assert TRAIN[-1] == "UZUZZT2W9IUSHL6ASOX3" and TEST[0] == "UPT6DX9IQY9JAZ7HJKA7"
    from nnunetv2_semisup_conversion.splits import la_split
    mn = la_split("mn_la_fold1")
    assert mn.validation == ["R8ER97O9UUN77C02VE2J", "RSZY41MT2FGDKHWWL5L2", "SN4LF8SGBSRQUPTDSX78",
                             "TDDI6L3Y0L9VVFP9MNFS", "ULHWPWKKLTE921LQLH1P"]
    assert len(mn.train) == 75 and len(mn.test) == 20 and "UZUZZT2W9IUSHL6ASOX3" in mn.test


def test_h5_uamt_split_layout_geometry_and_integrity(la_h5, conv_env, capsys):
    folder = convert_la.run(["-i", la_h5, "-d", "201", "--num-labeled", "8"])
    assert os.path.basename(folder) == "Dataset201_LA"
    assert sorted(os.listdir(folder)) == ["dataset.json", "imagesTr", "imagesTs", "imagesUnlabeled", "labelsTr",
                                          "labelsTs"]
    labeled = cases_in(folder, "imagesTr")
    assert labeled == sorted(f"la_{i}" for i in TRAIN[:8])            # exactly lines 1-8 of train.list
    assert cases_in(folder, "labelsTr") == labeled
    unlabeled = cases_in(folder, "imagesUnlabeled")
    assert unlabeled == sorted(f"la_{i}" for i in TRAIN[8:]) and len(unlabeled) == 72
    assert cases_in(folder, "imagesTs") == sorted(f"la_{i}" for i in TEST) == cases_in(folder, "labelsTs")
    assert not set(labeled) & set(unlabeled) and not set(unlabeled) & set(cases_in(folder, "imagesTs"))
    assert not os.path.exists(os.path.join(folder, "labelsUnlabeled"))
    assert not os.path.exists(os.path.join(folder, "splits_semisup.json"))

    # geometry: (x, y, z) h5 -> SimpleITK (z, y, x); the marker voxel lands at index (x, y, z)
    cid = TRAIN[0]
    with h5py.File(os.path.join(la_h5, "2018LA_Seg_Training Set", cid, "mri_norm2.h5")) as f:
        h5_img, h5_lab = f["image"][()], f["label"][()]
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", f"la_{cid}_0000.nii.gz"))
    arr = sitk.GetArrayFromImage(img)
    assert arr.shape == (8, 16, 20)
    np.testing.assert_array_equal(arr, np.transpose(h5_img, (2, 1, 0)))
    assert img.GetPixel(*MARK_XYZ) == MARK_VALUE and arr[MARK_XYZ[::-1]] == MARK_VALUE
    assert img.GetSpacing() == pytest.approx((0.625, 0.625, 0.625))
    lab = read_array(os.path.join(folder, "labelsTr", f"la_{cid}.nii.gz"))
    np.testing.assert_array_equal(lab, np.transpose(h5_lab, (2, 1, 0)))
    assert set(np.unique(lab)) == {0, 1} and lab.dtype == np.uint8

    dj = dataset_json(folder)
    assert dj["numTraining"] == 8 and dj["file_ending"] == ".nii.gz"
    assert dj["channel_names"] == {"0": "noNorm"} and dj["labels"] == {"background": 0, "left_atrium": 1}
    assert "overwrite_image_reader_writer" not in dj
    r = dj["semisup"]
    assert r["format_version"] == 1 and r["source"] == "LA2018" and r["source_variant"] == "la_uamt_h5"
    assert r["gt_cropped"] is True and r["resized"] is False
    assert r["spacing_source"] == "assumed" and r["assumed_spacing"] == [0.625] * 3
    assert r["split"] == "uamt_la" and r["labeled_selection"] == "first_n:8"
    assert (r["num_labeled"], r["num_unlabeled"], r["num_validation"], r["num_test"]) == (8, 72, 0, 20)
    assert r["labeled_cases"] == [f"la_{i}" for i in TRAIN[:8]] and r["transductive"] is False
    assert r["case_id_map"][f"la_{cid}"] == f"{cid}/mri_norm2.h5" and len(r["case_id_map"]) == 100
    assert r["missing_cases"] == [] and "nnUNetv2_semisup_convert_LA" in r["converter"]["command"]
    assert "GT-cropped" in capsys.readouterr().out                      # summary table printed
    verify_integrity(folder)


def test_h5_flat_layout_transductive_and_labeled_list(tmp_path, conv_env):
    src = make_la_h5(str(tmp_path / "flat"), TRAIN + TEST, shape_xyz=(6, 6, 4), layout="flat")
    lst = tmp_path / "labeled.txt"
    lst.write_text(f"{TRAIN[10]}\nla_{TRAIN[3]}\n\n{TRAIN[50]}\n")
    folder = convert_la.run(["-i", src, "-d", "202", "--labeled-list", str(lst), "--transductive",
                             "--num-labeled", "8"])   # the list overrides --num-labeled
    assert cases_in(folder, "imagesTr") == sorted(f"la_{i}" for i in (TRAIN[10], TRAIN[3], TRAIN[50]))
    unl = cases_in(folder, "imagesUnlabeled")
    assert len(unl) == 77 + 20 and {f"la_{i}" for i in TEST} <= set(unl)
    assert cases_in(folder, "imagesTs") == sorted(f"la_{i}" for i in TEST)
    r = dataset_json(folder)["semisup"]
    assert r["transductive"] is True and r["labeled_selection"] == "list:labeled.txt"
    assert r["num_unlabeled"] == 97 and r["case_id_map"][f"la_{TRAIN[0]}"] == f"{TRAIN[0]}.h5"


def test_raw_nrrd_label_remap_spacing_and_mn_split(la_raw, conv_env):
    folder = convert_la.run(["-i", la_raw, "-d", "203", "--split", "mn_la_fold1", "--num-labeled", "4",
                             "--la-testing-set", "test", "--transductive", "--write-unlabeled-labels"])
    tr = cases_in(folder, "imagesTr")
    val = [f"la_{i}" for i in TRAIN[75:79]] + ["la_ULHWPWKKLTE921LQLH1P"]
    assert tr == sorted([f"la_{i}" for i in TRAIN[:4]] + val)
    test = [f"la_{i}" for i in TEST if i != "ULHWPWKKLTE921LQLH1P"] + ["la_UZUZZT2W9IUSHL6ASOX3",
                                                                       "la_TESTING0000000000001",
                                                                       "la_TESTING0000000000002"]
    assert cases_in(folder, "imagesTs") == sorted(test) == cases_in(folder, "labelsTs")
    assert cases_in(folder, "labelsUnlabeled") == sorted(f"la_{i}" for i in TRAIN[4:75])
    assert set(test) <= set(cases_in(folder, "imagesUnlabeled"))
    splits = dataset_json(folder)  # dataset.json
    assert splits["numTraining"] == 9 and splits["channel_names"] == {"0": "MRI"}
    import json
    with open(os.path.join(folder, "splits_semisup.json")) as f:
        sp = json.load(f)
    assert sp == [{"train": [f"la_{i}" for i in TRAIN[:4]], "val": val}]
    r = splits["semisup"]
    assert r["split"] == "mn_la_fold1" and r["validation_cases"] == val and r["la_testing_set"] == "test"
    assert r["spacing_source"] == "assumed" and r["assumed_spacing"] == [0.625] * 3 and r["gt_cropped"] is False
    # nrrd (x, y, z): label 255 -> 1, marker voxel at SimpleITK index (x, y, z), spacing 0.625 (no header spacing)
    cid = TRAIN[0]
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", f"la_{cid}_0000.nii.gz"))
    assert img.GetPixel(*MARK_XYZ) == 99 and img.GetSize() == (10, 8, 6)
    assert img.GetSpacing() == pytest.approx((0.625,) * 3)
    lab = sitk.ReadImage(os.path.join(folder, "labelsTr", f"la_{cid}.nii.gz"))
    assert set(np.unique(sitk.GetArrayFromImage(lab))) == {0, 1}
    assert lab.GetPixel(10 // 4, 8 // 4, 0) == 1 and lab.GetPixel(9, 7, 5) == 0
    verify_integrity(folder)


def test_raw_header_spacing_testing_set_unlabeled(tmp_path, conv_env):
    src = make_la_raw(str(tmp_path / "raw"), TRAIN + TEST, testing_ids=["TESTINGX"], spacing=(0.7, 0.7, 1.25),
                      testing_labels=False, shape_xyz=(6, 6, 4))
    folder = convert_la.run(["-i", os.path.join(src, "Training Set"), "-d", "204", "--num-labeled", "16",
                             "--la-testing-set", "unlabeled", "--name", "LAraw"])
    assert os.path.basename(folder) == "Dataset204_LAraw"
    assert len(cases_in(folder, "imagesTr")) == 16 and "la_TESTINGX" in cases_in(folder, "imagesUnlabeled")
    assert len(cases_in(folder, "imagesUnlabeled")) == 65
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", f"la_{TRAIN[0]}_0000.nii.gz"))
    assert img.GetSpacing() == pytest.approx((0.7, 0.7, 1.25))
    r = dataset_json(folder)["semisup"]
    assert r["spacing_source"] == "header" and "assumed_spacing" not in r and r["num_unlabeled"] == 65


# ----------------------------------------------------------------------------------------------- bad inputs
def _err(argv, match):
    with pytest.raises(ConversionError, match=match):
        convert_la.run(argv)


def test_wrong_folder_and_unknown_variant(tmp_path, conv_env, la_h5):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("x")
    _err(["-i", str(tmp_path / "junk"), "-d", "205"], "does not look like any known Left Atrium")
    _err(["-i", str(tmp_path / "nope"), "-d", "205"], "input folder not found")
    _err(["-i", la_h5, "-d", "205", "--variant", "la_nifti"], "unknown --variant 'la_nifti'")
    _err(["-i", la_h5, "-d", "205", "--variant", "la_raw_nrrd"], "no 'Training Set/<ID>/lgemri.nrrd'")
    _err(["-i", la_h5, "-d", "205", "--split", "foo"], "unknown LA split 'foo'")
    _err(["-i", la_h5, "-d", "205", "--la-testing-set", "test"], "needs the raw challenge download")
    assert leftovers(conv_env) == []


def test_labeled_count_and_list_errors(tmp_path, conv_env, la_h5):
    _err(["-i", la_h5, "-d", "205", "--num-labeled", "81"], "larger than the train list of split uamt_la, which has 80")
    _err(["-i", la_h5, "-d", "205", "--split", "mn_la_fold1", "--num-labeled", "76"], "which has 75")
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{TRAIN[0]}\n{TEST[0]}\n")
    _err(["-i", la_h5, "-d", "205", "--labeled-list", str(bad)], f"not in the train list.*{TEST[0]}")
    assert leftovers(conv_env) == []


def test_missing_label_image_and_bad_values(tmp_path, conv_env):
    src = make_la_raw(str(tmp_path / "raw"), TRAIN + TEST, shape_xyz=(6, 6, 4))
    lab = os.path.join(src, "Training Set", TRAIN[2], "laendo.nrrd")
    os.remove(lab)
    _err(["-i", src, "-d", "205", "--num-labeled", "4"], f"case {TRAIN[2]} \\(labeled\\): label missing; expected .*laendo")
    # an unlabeled case may lack its label
    folder = convert_la.run(["-i", src, "-d", "205", "--num-labeled", "2"])
    assert len(cases_in(folder, "imagesUnlabeled")) == 78
    shutil.rmtree(folder)
    # a test case may not
    os.remove(os.path.join(src, "Training Set", TEST[5], "laendo.nrrd"))
    _err(["-i", src, "-d", "205", "--num-labeled", "2"], f"case {TEST[5]} \\(test\\): label missing")
    # unexpected label values
    arr = np.zeros((6, 6, 4), np.uint8)
    arr[1, 1, 1] = 128
    write_nrrd_xyz(lab, arr, None)
    write_nrrd_xyz(os.path.join(src, "Training Set", TEST[5], "laendo.nrrd"), arr * 0, None)
    _err(["-i", src, "-d", "205", "--num-labeled", "4"], f"case la_{TRAIN[2]}: unexpected label values \\[128\\]")
    # mismatched shapes
    write_nrrd_xyz(lab, np.zeros((6, 6, 3), np.uint8), None)
    _err(["-i", src, "-d", "205", "--num-labeled", "4"], f"case la_{TRAIN[2]}: image and label sizes differ")
    # a case missing its image
    os.remove(os.path.join(src, "Training Set", TRAIN[7], "lgemri.nrrd"))
    _err(["-i", src, "-d", "205"], f"case la_{TRAIN[7]}: image missing; expected .*lgemri.nrrd")
    # a split case missing from the source
    shutil.rmtree(os.path.join(src, "Training Set", TRAIN[7]))
    _err(["-i", src, "-d", "205"], f"not found in the source: {TRAIN[7]}")
    assert leftovers(conv_env) == []


def test_h5_mismatched_shapes_and_missing_key(tmp_path, conv_env):
    src = make_la_h5(str(tmp_path / "h5"), TRAIN + TEST, shape_xyz=(6, 6, 4))
    p = os.path.join(src, "2018LA_Seg_Training Set", TRAIN[1], "mri_norm2.h5")
    with h5py.File(p, "w") as f:
        f["image"] = np.zeros((6, 6, 4), np.float32)
        f["label"] = np.zeros((6, 6, 3), np.uint8)
    _err(["-i", src, "-d", "206"], f"case la_{TRAIN[1]}: .*image shape \\(6, 6, 4\\) and label shape \\(6, 6, 3\\)")
    with h5py.File(p, "w") as f:
        f["image"] = np.zeros((6, 6, 4), np.float32)
    _err(["-i", src, "-d", "206"], f"case la_{TRAIN[1]}: label missing: .* no 'label' key")
    assert leftovers(conv_env) == []


def test_h5_unlabeled_labels_are_only_read_when_written(tmp_path, conv_env):
    """As for the nrrd/npy/NIfTI sources, a broken label of an unlabeled h5 case does not stop the conversion unless
    --write-unlabeled-labels asks for it."""
    src = make_la_h5(str(tmp_path / "h5"), TRAIN + TEST, shape_xyz=(6, 6, 4))
    p = os.path.join(src, "2018LA_Seg_Training Set", TRAIN[20], "mri_norm2.h5")
    with h5py.File(p, "w") as f:
        f["image"] = np.random.default_rng(0).random((6, 6, 4)).astype(np.float32)  # a real (non-constant) scan
        f["label"] = np.full((6, 6, 4), 7, np.uint8)
    folder = convert_la.run(["-i", src, "-d", "209", "--num-labeled", "4"])
    assert f"la_{TRAIN[20]}" in cases_in(folder, "imagesUnlabeled")
    assert not os.path.exists(os.path.join(folder, "labelsUnlabeled"))
    _err(["-i", src, "-d", "210", "--num-labeled", "4", "--write-unlabeled-labels"],
         f"case la_{TRAIN[20]}: unexpected label values \\[7\\]")
    assert leftovers(conv_env) == ["Dataset209_LA"]


def test_existing_dataset_needs_overwrite_and_failure_leaves_old_intact(tmp_path, conv_env):
    src = make_la_h5(str(tmp_path / "h5"), TRAIN + TEST, shape_xyz=(6, 6, 4))
    folder = convert_la.run(["-i", src, "-d", "207", "--num-labeled", "4"])
    _err(["-i", src, "-d", "207", "--num-labeled", "8"], "already exists; use --overwrite")
    assert dataset_json(folder)["numTraining"] == 4
    # a failing --overwrite run leaves the old dataset untouched and no temporary folder
    os.remove(os.path.join(src, "2018LA_Seg_Training Set", TEST[0], "mri_norm2.h5"))
    _err(["-i", src, "-d", "207", "--num-labeled", "8", "--overwrite"], "not found in the source")
    assert leftovers(conv_env) == ["Dataset207_LA"] and dataset_json(folder)["numTraining"] == 4
    make_la_h5(src, [TEST[0]], shape_xyz=(6, 6, 4))
    convert_la.run(["-i", src, "-d", "207", "--num-labeled", "8", "--overwrite"])
    assert leftovers(conv_env) == ["Dataset207_LA"] and dataset_json(folder)["numTraining"] == 8
    assert len(cases_in(folder, "imagesTr")) == 8
    # another dataset with the same ID but a different name is never replaced silently
    _err(["-i", src, "-d", "207", "--name", "Other", "--overwrite"], "another dataset with ID 207")


def test_console_command(tmp_path, conv_env):
    src = make_la_h5(str(tmp_path / "h5"), TRAIN + TEST, shape_xyz=(4, 6, 3))
    exe = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_semisup_convert_LA")
    env = dict(os.environ)
    ok = subprocess.run([exe, "-i", src, "-d", "208", "--num-labeled", "4"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert len(cases_in(os.path.join(conv_env, "Dataset208_LA"), "imagesTr")) == 4
    bad = subprocess.run([exe, "-i", src, "-d", "208"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "ERROR: dataset folder" in bad.stderr and "--overwrite" in bad.stderr
