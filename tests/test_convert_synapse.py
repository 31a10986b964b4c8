"""Synapse/BTCV converter: DHC npy (assumed and derived spacing), raw BTCV NIfTI layouts, SKCDF lists, bad inputs."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fakes import (MARK_XYZ, SYN_NPY_SHAPE_ZYX, SYN_RAW_SHAPE_XYZ, SYN_RAW_SPACING, cases_in,
                              dataset_json, leftovers, make_synapse_npy, make_synapse_raw, conv_env,  # noqa: F401
                              read_array, synapse_ids, verify_integrity)
from nnunetv2_semisup_conversion import convert_synapse
from nnunetv2_semisup_conversion.errors import ConversionError
from nnunetv2_semisup_conversion.splits import load_list

IDS = synapse_ids()
S = lambda ids: sorted(f"synapse_{i}" for i in ids)  # noqa: E731
TRAIN, EVAL, TEST = (load_list("Synapse", f"skcdf_{n}.txt") for n in ("train", "eval", "test"))


def _err(argv, match):
    with pytest.raises(ConversionError, match=match):
        convert_synapse.run(argv)


@pytest.fixture(scope="module")
def npy_src(tmp_path_factory):
    return make_synapse_npy(str(tmp_path_factory.mktemp("dhc")), IDS)


@pytest.fixture(scope="module")
def raw_src(tmp_path_factory):
    return make_synapse_raw(str(tmp_path_factory.mktemp("btcv")), IDS, "rawdata", testing_ids=["0061", "0062"])


def test_npy_default_split_assumed_spacing_validation_fold(npy_src, conv_env):
    folder = convert_synapse.run(["-i", npy_src, "-d", "401"])
    lab20 = load_list("Synapse", "skcdf_labeled_20p.txt")
    assert lab20 == ["0021", "0023", "0028", "0032"]
    assert cases_in(folder, "imagesTr") == S(lab20 + EVAL) == cases_in(folder, "labelsTr")
    assert cases_in(folder, "imagesUnlabeled") == S(load_list("Synapse", "skcdf_unlabeled_20p.txt"))
    assert len(cases_in(folder, "imagesUnlabeled")) == 16
    assert cases_in(folder, "imagesTs") == S(TEST) == cases_in(folder, "labelsTs")
    with open(os.path.join(folder, "splits_semisup.json")) as f:
        assert json.load(f) == [{"train": [f"synapse_{i}" for i in lab20], "val": [f"synapse_{i}" for i in EVAL]}]
    dj = dataset_json(folder)
    assert dj["numTraining"] == 8 and dj["channel_names"] == {"0": "CT"} and len(dj["labels"]) == 14
    assert dj["labels"]["spleen"] == 1 and dj["labels"]["liver"] == 6 and dj["labels"]["left_adrenal_gland"] == 13
    r = dj["semisup"]
    assert r["source_variant"] == "synapse_dhc_npy" and r["resized"] is True and r["gt_cropped"] is False
    assert r["resize_shape"] == list(SYN_NPY_SHAPE_ZYX) and r["spacing_source"] == "assumed"
    assert r["assumed_spacing"] == [1.0, 1.0, 1.0] and r["labeled_selection"] == "list:skcdf_labeled_20p.txt"
    assert r["num_validation"] == 4 and r["validation_cases"] == [f"synapse_{i}" for i in EVAL]
    assert "clip [-75, 275]" in r["intensity"]
    # npy is (z, y, x) already: identical array, marker at index (x, y, z)
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", "synapse_0021_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), np.load(os.path.join(npy_src, "npy", "0021_image.npy")))
    assert img.GetPixel(*MARK_XYZ) == 1234.0 and img.GetSpacing() == (1.0, 1.0, 1.0)
    lab = read_array(os.path.join(folder, "labelsTr", "synapse_0021.nii.gz"))
    assert set(np.unique(lab)) == {0, 1, 6, 13} and lab.dtype == np.uint8
    verify_integrity(folder)


def test_npy_derived_spacing_and_labeled_sets(npy_src, raw_src, conv_env):
    folder = convert_synapse.run(["-i", npy_src, "-d", "402", "--raw-dir", raw_src, "--num-labeled", "8"])
    assert cases_in(folder, "imagesTr") == S(load_list("Synapse", "skcdf_labeled_40p.txt") + EVAL)
    img = sitk.ReadImage(os.path.join(folder, "imagesTs", "synapse_0008_0000.nii.gz"))
    npy_xyz = SYN_NPY_SHAPE_ZYX[::-1]
    expected = [s * n / m for s, n, m in zip(SYN_RAW_SPACING, SYN_RAW_SHAPE_XYZ, npy_xyz)]
    assert img.GetSpacing() == pytest.approx(expected) and img.GetOrigin() == pytest.approx((1.0, 2.0, 3.0))
    r = dataset_json(folder)["semisup"]
    assert r["spacing_source"] == "derived_from_raw" and r["derived_spacing"]["synapse_0008"] == pytest.approx(expected)
    folder = convert_synapse.run(["-i", npy_src, "-d", "403", "--num-labeled", "2", "--assume-spacing", "2,2,3"])
    assert cases_in(folder, "imagesTr") == S(["0007", "0030"] + EVAL)
    assert len(cases_in(folder, "imagesUnlabeled")) == 18
    assert sitk.ReadImage(os.path.join(folder, "imagesTr", "synapse_0007_0000.nii.gz")).GetSpacing() == (2, 2, 3)


def test_num_labeled_must_be_a_published_list(npy_src, tmp_path, conv_env):
    with pytest.raises(ConversionError) as e:
        convert_synapse.run(["-i", npy_src, "-d", "404", "--num-labeled", "3"])
    assert "Allowed values: 2, 4, 8" in str(e.value) and "--labeled-list" in str(e.value)
    lst = tmp_path / "l.txt"
    lst.write_text("img0001\nsynapse_0002\n0003\n")
    folder = convert_synapse.run(["-i", npy_src, "-d", "404", "--labeled-list", str(lst)])
    assert cases_in(folder, "imagesTr") == S(["0001", "0002", "0003"] + EVAL)
    assert len(cases_in(folder, "imagesUnlabeled")) == 17
    lst.write_text("0008\n")
    _err(["-i", npy_src, "-d", "405", "--labeled-list", str(lst)], "not in the train list .*0008")


def test_raw_btcv_layouts_and_testing_as_unlabeled(raw_src, tmp_path, conv_env):
    folder = convert_synapse.run(["-i", raw_src, "-d", "406", "--synapse-testing", "unlabeled",
                                  "--write-unlabeled-labels"])
    unl = cases_in(folder, "imagesUnlabeled")
    assert unl == S(load_list("Synapse", "skcdf_unlabeled_20p.txt") + ["0061", "0062"])
    assert cases_in(folder, "labelsUnlabeled") == S(load_list("Synapse", "skcdf_unlabeled_20p.txt"))
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", "synapse_0021_0000.nii.gz"))
    src_img = sitk.ReadImage(os.path.join(raw_src, "RawData", "Training", "img", "img0021.nii.gz"))
    assert img.GetSpacing() == pytest.approx(SYN_RAW_SPACING) and img.GetSize() == SYN_RAW_SHAPE_XYZ
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(src_img))
    lab = sitk.ReadImage(os.path.join(folder, "labelsTr", "synapse_0021.nii.gz"))
    src_lab = sitk.ReadImage(os.path.join(raw_src, "RawData", "Training", "label", "label0021.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), sitk.GetArrayFromImage(src_lab))
    assert set(np.unique(sitk.GetArrayFromImage(lab))) == {0, 1, 6, 13} and lab.GetPixelID() == sitk.sitkUInt8
    assert lab.GetSpacing() == pytest.approx(SYN_RAW_SPACING) and lab.GetOrigin() == pytest.approx((1.0, 2.0, 3.0))
    assert set(np.unique(read_array(os.path.join(folder, "labelsTs", "synapse_0008.nii.gz")))) == {0, 1, 6, 13}
    dj = dataset_json(folder)
    assert dj["labels"] == convert_synapse.LABELS and list(dj["labels"].values()) == list(range(14))
    assert dj["labels"]["spleen"] == 1 and dj["labels"]["liver"] == 6 and dj["labels"]["left_adrenal_gland"] == 13
    assert dj["channel_names"] == {"0": "CT"} and dj["numTraining"] == 8 and dj["file_ending"] == ".nii.gz"
    r = dj["semisup"]
    assert r["source_variant"] == "synapse_btcv_raw" and r["spacing_source"] == "header" and r["resized"] is False
    assert r["synapse_testing"] == "unlabeled" and r["num_unlabeled"] == 18
    assert r["source"] == "BTCV-Synapse" and r["gt_cropped"] is False and "assumed_spacing" not in r
    assert r["case_id_map"]["synapse_0021"] == "img0021.nii.gz" and r["validation_cases"] == S(EVAL)
    verify_integrity(folder)
    dhc = make_synapse_raw(str(tmp_path / "dhc"), IDS, "dhc", testing_ids=["0080"])
    folder = convert_synapse.run(["-i", dhc, "-d", "407", "--transductive", "--synapse-testing", "unlabeled"])
    assert cases_in(folder, "imagesTr") == S(load_list("Synapse", "skcdf_labeled_20p.txt") + EVAL)
    assert set(S(TEST + ["0080"])) <= set(cases_in(folder, "imagesUnlabeled"))
    assert len(cases_in(folder, "imagesUnlabeled")) == 16 + 6 + 1


def test_bad_inputs(npy_src, tmp_path, conv_env):
    (tmp_path / "e").mkdir()
    _err(["-i", str(tmp_path / "e"), "-d", "408"], "does not look like any known Synapse/BTCV")
    _err(["-i", npy_src, "-d", "408", "--variant", "transunet"], "unknown --variant 'transunet'")
    (tmp_path / "tu" / "train_npz").mkdir(parents=True)
    _err(["-i", str(tmp_path / "tu"), "-d", "408"], "TransUNet's 8-organ Synapse")
    # mixed shapes
    mixed = make_synapse_npy(str(tmp_path / "mixed"), IDS, npy_dir="npy1")
    np.save(os.path.join(mixed, "npy1", "0005_image.npy"), np.zeros((4, 8, 8), np.float32))
    _err(["-i", mixed, "-d", "408"], "mixes npy volumes of different shapes")
    # image/label shape mismatch, bad label values, missing label, missing case
    np.save(os.path.join(mixed, "npy1", "0005_image.npy"), np.zeros(SYN_NPY_SHAPE_ZYX, np.float32))
    np.save(os.path.join(mixed, "npy1", "0005_label.npy"), np.zeros((5, 8, 7), np.int8))
    _err(["-i", mixed, "-d", "408", "--num-labeled", "8"], "case synapse_0005: image shape .* label shape \\(5, 8, 7\\)")
    np.save(os.path.join(mixed, "npy1", "0005_label.npy"), np.full(SYN_NPY_SHAPE_ZYX, 14, np.int8))
    _err(["-i", mixed, "-d", "408", "--num-labeled", "8"], "case synapse_0005: unexpected label values \\[14\\]")
    os.remove(os.path.join(mixed, "npy1", "0005_label.npy"))
    _err(["-i", mixed, "-d", "408", "--num-labeled", "8"], "case 0005 \\(labeled\\): label missing")
    os.remove(os.path.join(mixed, "npy1", "0005_image.npy"))
    _err(["-i", mixed, "-d", "408"], "not found in the source: 0005")
    # --npy-dir pointing elsewhere, raw-only options on npy
    _err(["-i", npy_src, "-d", "408", "--npy-dir", str(tmp_path / "e")], "does not look like any known")
    _err(["-i", npy_src, "-d", "408", "--synapse-testing", "unlabeled"], "needs the raw BTCV download")
    _err(["-i", npy_src, "-d", "408", "--assume-spacing", "1,1"], "expected three positive numbers")
    raw = make_synapse_raw(str(tmp_path / "raw"), IDS, "rawdata")
    os.remove(os.path.join(raw, "RawData", "Training", "img", "img0040.nii.gz"))
    _err(["-i", raw, "-d", "408"], "labels without an image: label0040")
    assert leftovers(conv_env) == []


def test_raw_btcv_bad_inputs_and_existing_dataset(tmp_path, conv_env):
    raw = make_synapse_raw(str(tmp_path / "raw"), IDS, "rawdata")
    lab_dir = os.path.join(raw, "RawData", "Training", "label")
    lab21 = os.path.join(lab_dir, "label0021.nii.gz")           # 0021: labeled in the default 20 % list
    good = sitk.ReadImage(lab21)
    # image / label size mismatch
    small = sitk.Image(SYN_RAW_SHAPE_XYZ[0], SYN_RAW_SHAPE_XYZ[1], SYN_RAW_SHAPE_XYZ[2] - 1, sitk.sitkUInt8)
    small.SetSpacing(SYN_RAW_SPACING)
    sitk.WriteImage(small, lab21)
    _err(["-i", raw, "-d", "409"], "case synapse_0021: image and label sizes differ: image \\(16, 12, 10\\), "
                                   "label \\(16, 12, 9\\)")
    # label values outside the 13 organs
    bad = sitk.Image(good)
    bad[2, 3, 4] = 14
    sitk.WriteImage(bad, lab21)
    _err(["-i", raw, "-d", "409"], "case synapse_0021: unexpected label values \\[14\\]; expected a subset of "
                                   "\\[0, 1, .*, 13\\]")
    # missing label of a labeled and of a validation case
    os.remove(lab21)
    _err(["-i", raw, "-d", "409"], "case 0021 \\(labeled\\): label missing; expected label0021.nii.gz")
    sitk.WriteImage(good, lab21)
    os.rename(os.path.join(lab_dir, "label0035.nii.gz"), os.path.join(tmp_path, "label0035.nii.gz"))
    _err(["-i", raw, "-d", "409"], "case 0035 \\(validation\\): label missing")
    assert leftovers(conv_env) == []
    # an unlabeled case may lack its label
    folder = convert_synapse.run(["-i", raw, "-d", "409", "--labeled-list", _write(tmp_path, ["0021"]),
                                  "--split", "custom"])
    assert "synapse_0035" in cases_in(folder, "imagesUnlabeled")
    # an existing dataset is not replaced without --overwrite
    os.rename(os.path.join(tmp_path, "label0035.nii.gz"), os.path.join(lab_dir, "label0035.nii.gz"))
    _err(["-i", raw, "-d", "409"], "dataset folder .*Dataset409_Synapse already exists; use --overwrite")
    assert dataset_json(folder)["semisup"]["split"] == "custom" and leftovers(conv_env) == ["Dataset409_Synapse"]
    folder = convert_synapse.run(["-i", raw, "-d", "409", "--overwrite"])
    assert dataset_json(folder)["semisup"]["split"] == "skcdf_synapse" and leftovers(conv_env) == ["Dataset409_Synapse"]


def _write(tmp_path, ids):
    p = tmp_path / "ids.txt"
    p.write_text("\n".join(ids) + "\n")
    return str(p)
