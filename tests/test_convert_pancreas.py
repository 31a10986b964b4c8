"""Pancreas-CT converter: MC-Net / CoraNet h5, TCIA DICOM and NIfTI, the 82/80-case splits, geometry repair."""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fakes import (MARK_VALUE, MARK_XYZ, PANCREAS_ORIGIN, PANCREAS_SPACING, cases_in, ct_body_volume,
                              dataset_json, leftovers, make_pancreas_h5, make_pancreas_raw, conv_env,  # noqa: F401
                              pancreas_ids, read_array, verify_integrity)
from nnunetv2_semisup_conversion import convert_pancreas
from nnunetv2_semisup_conversion.errors import ConversionError
from nnunetv2_semisup_conversion.splits import load_list

MC_TRAIN = [i[-4:] for i in load_list("Pancreas", "mcnet82_train.list")]
MC_TEST = [i[-4:] for i in load_list("Pancreas", "mcnet82_test.list")]
P = lambda ids: sorted(f"pancreas_{i}" for i in ids)  # noqa: E731


def _err(argv, match):
    with pytest.raises(ConversionError, match=match):
        convert_pancreas.run(argv)


@pytest.fixture(scope="module")
def mcnet80(tmp_path_factory):
    return make_pancreas_h5(str(tmp_path_factory.mktemp("mc80")), pancreas_ids(80), "mcnet")


@pytest.fixture(scope="module")
def coranet82(tmp_path_factory):
    return make_pancreas_h5(str(tmp_path_factory.mktemp("cora82")), pancreas_ids(82), "coranet", shape_xyz=(6, 6, 4))


def test_mcnet_split_on_80_case_source(mcnet80, conv_env, capsys):
    folder = convert_pancreas.run(["-i", mcnet80, "-d", "301"])
    err = capsys.readouterr().err
    assert "WARNING" in err and "0070" in err and "0025" in err
    r = dataset_json(folder)["semisup"]
    assert sorted(r["missing_cases"]) == ["0025", "0070"] and r["split"] == "mcnet_pancreas82"
    assert r["release"].startswith("80 cases")
    labeled = [i for i in MC_TRAIN[:12] if i != "0070"]
    assert cases_in(folder, "imagesTr") == P(labeled) and len(labeled) == 11
    assert cases_in(folder, "imagesUnlabeled") == P(MC_TRAIN[12:]) and len(MC_TRAIN[12:]) == 50
    assert cases_in(folder, "imagesTs") == P(i for i in MC_TEST if i != "0025") == cases_in(folder, "labelsTs")
    assert r["num_test"] == 19 and r["num_labeled"] == 11
    assert r["source_variant"] == "pancreas_mcnet_h5" and r["gt_cropped"] is True
    assert r["spacing_source"] == "assumed" and r["assumed_spacing"] == [1.0, 1.0, 1.0]
    # (x, y, z) -> (z, y, x)
    with h5py.File(os.path.join(mcnet80, "Pancreas", "Pancreas_h5", "image0057_norm.h5")) as f:
        h5_img = f["image"][()]
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", "pancreas_0057_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), np.transpose(h5_img, (2, 1, 0)))
    assert img.GetPixel(*MARK_XYZ) == MARK_VALUE and img.GetSpacing() == (1.0, 1.0, 1.0)
    dj = dataset_json(folder)
    assert dj["channel_names"] == {"0": "noNorm"} and dj["labels"] == {"background": 0, "pancreas": 1}
    assert dj["numTraining"] == 11
    verify_integrity(folder)


def test_mcnet_split_on_82_cases_keeps_duplicates(tmp_path, conv_env):
    src = make_pancreas_h5(str(tmp_path / "src"), pancreas_ids(82), "mcnet", shape_xyz=(6, 6, 4))
    folder = convert_pancreas.run(["-i", src, "-d", "302", "--num-labeled", "6"])
    assert cases_in(folder, "imagesTr") == P(["0057", "0018", "0062", "0031", "0020", "0017"])
    assert cases_in(folder, "imagesTs") == P(MC_TEST) and "pancreas_0025" in cases_in(folder, "imagesTs")
    assert len(cases_in(folder, "imagesUnlabeled")) == 56
    r = dataset_json(folder)["semisup"]
    assert r["missing_cases"] == [] and r["release"].startswith("82 cases")


def test_coranet_lists_and_10_percent(coranet82, conv_env):
    folder = convert_pancreas.run(["-i", coranet82, "-d", "303", "--split", "coranet_pancreas80"])
    assert cases_in(folder, "imagesTr") == P(f"{i:04d}" for i in range(1, 13))
    unl = [f"{i:04d}" for i in range(13, 64) if i != 25]
    assert cases_in(folder, "imagesUnlabeled") == P(unl) and len(unl) == 50
    assert cases_in(folder, "imagesTs") == P(f"{i:04d}" for i in range(64, 83) if i != 70)
    dj = dataset_json(folder)
    assert dj["channel_names"] == {"0": "noNorm"} and dj["labels"] == {"background": 0, "pancreas": 1}
    assert dj["numTraining"] == 12 and dj["file_ending"] == ".nii.gz"
    r = dj["semisup"]
    assert r["source_variant"] == "pancreas_coranet_h5" and r["unused_source_cases"] == ["0025", "0070"]
    assert "z spacing unreliable" in r["spacing_note"]
    assert r["source"] == "Pancreas-CT" and r["split"] == "coranet_pancreas80" and r["gt_cropped"] is True
    assert r["spacing_source"] == "assumed" and r["assumed_spacing"] == [1.0, 1.0, 1.0] and r["missing_cases"] == []
    assert (r["num_labeled"], r["num_unlabeled"], r["num_validation"], r["num_test"]) == (12, 50, 0, 18)
    assert r["case_id_map"]["pancreas_0001"] == "0001.h5"
    # CoraNet stores (x, y, z) with depth last -> SimpleITK (z, y, x); the marker voxel lands at index (x, y, z)
    with h5py.File(os.path.join(coranet82, "0005.h5")) as f:
        h5_img, h5_lab = f["image"][()], f["label"][()]
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", "pancreas_0005_0000.nii.gz"))
    assert img.GetSize() == (6, 6, 4) and img.GetSpacing() == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), np.transpose(h5_img, (2, 1, 0)))
    assert img.GetPixel(*MARK_XYZ) == MARK_VALUE and sitk.GetArrayFromImage(img)[MARK_XYZ[::-1]] == MARK_VALUE
    lab = read_array(os.path.join(folder, "labelsTr", "pancreas_0005.nii.gz"))
    np.testing.assert_array_equal(lab, np.transpose(h5_lab, (2, 1, 0)))
    assert set(np.unique(lab)) == {0, 1} and lab.dtype == np.uint8
    assert set(np.unique(read_array(os.path.join(folder, "labelsTs", "pancreas_0064.nii.gz")))) == {0, 1}
    verify_integrity(folder)
    folder = convert_pancreas.run(["-i", coranet82, "-d", "304", "--split", "coranet_pancreas80",
                                   "--num-labeled", "6"])
    assert cases_in(folder, "imagesTr") == P(f"{i:04d}" for i in range(1, 7))
    assert cases_in(folder, "imagesUnlabeled") == P(f"{i:04d}" for i in range(7, 64) if i != 25)


def test_mn_fold1_validation_split(coranet82, tmp_path, conv_env):
    folder = convert_pancreas.run(["-i", coranet82, "-d", "305", "--split", "mn_pancreas_fold1", "--transductive"])
    val = [f"pancreas_{i:04d}" for i in range(62, 66)]
    assert cases_in(folder, "imagesTr") == P(f"{i:04d}" for i in range(1, 7)) + val
    assert cases_in(folder, "imagesTs") == P(f"{i:04d}" for i in range(66, 83))
    with open(os.path.join(folder, "splits_semisup.json")) as f:
        assert json.load(f) == [{"train": [f"pancreas_{i:04d}" for i in range(1, 7)], "val": val}]
    unl = cases_in(folder, "imagesUnlabeled")
    assert P(f"{i:04d}" for i in range(7, 62)) + P(f"{i:04d}" for i in range(66, 83)) == sorted(unl)
    assert dataset_json(folder)["numTraining"] == 10
    # 80-case source: 0070 (test) and 0025 (unlabeled) are dropped
    src = make_pancreas_h5(str(tmp_path / "src"), pancreas_ids(80), "coranet", shape_xyz=(4, 6, 3))
    folder = convert_pancreas.run(["-i", src, "-d", "306", "--split", "mn_pancreas_fold1"])
    assert len(cases_in(folder, "imagesTs")) == 16 and len(cases_in(folder, "imagesUnlabeled")) == 54


def test_tcia_dicom_slice_order_geometry_and_repair(tmp_path, conv_env):
    src = make_pancreas_raw(str(tmp_path / "src"), ["0001", "0002", "0003", "0004"], "dicom",
                            {"0002": "swap_xy", "0003": "zflip_header"})
    lst = tmp_path / "lab.txt"
    lst.write_text("0001\n0002\n0003\n")
    tst = tmp_path / "test.txt"
    tst.write_text("0004\n")
    folder = convert_pancreas.run(["-i", src, "-d", "307", "--split", "custom", "--labeled-list", str(lst),
                                   "--test-list", str(tst)])
    exp_img, exp_lab = ct_body_volume()
    assert cases_in(folder, "imagesTr") == P(["0001", "0002", "0003"]) and cases_in(folder, "imagesTs") == P(["0004"])
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", "pancreas_0001_0000.nii.gz"))
    # slices ordered by ImagePositionPatient although InstanceNumber runs the other way
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), exp_img)
    assert img.GetSpacing() == pytest.approx(PANCREAS_SPACING) and img.GetOrigin() == pytest.approx(PANCREAS_ORIGIN)
    assert img.TransformIndexToPhysicalPoint((0, 0, 5)) == pytest.approx(
        (PANCREAS_ORIGIN[0], PANCREAS_ORIGIN[1], PANCREAS_ORIGIN[2] + 5 * PANCREAS_SPACING[2]))
    for c in ("0001", "0002", "0003"):   # plain, repaired swap, physically placed z-flipped header
        np.testing.assert_array_equal(read_array(os.path.join(folder, "labelsTr", f"pancreas_{c}.nii.gz")), exp_lab)
    np.testing.assert_array_equal(read_array(os.path.join(folder, "labelsTs", "pancreas_0004.nii.gz")), exp_lab)
    dj = dataset_json(folder)
    r = dj["semisup"]
    assert dj["channel_names"] == {"0": "CT"} and r["source_variant"] == "pancreas_tcia_dicom"
    assert r["spacing_source"] == "header" and r["gt_cropped"] is False and r["split"] == "custom"
    assert r["case_notes"] == {"pancreas_0002": {"label_repair": "swap_xy", "inside_body_before": 0.0,
                                                 "label_placement": "repaired (swap_xy)"}}
    assert r["case_id_map"]["pancreas_0001"] == "PANCREAS_0001"
    verify_integrity(folder)


def test_tcia_nifti_flip_repair_and_unrepairable(tmp_path, conv_env):
    src = make_pancreas_raw(str(tmp_path / "src"), ["0001", "0002", "0003", "0004"], "nifti",
                            {"0002": "flip_z", "0003": "outside", "0004": "far_origin"})
    lst = tmp_path / "lab.txt"
    lst.write_text("0001\n0002\n0004\n")
    folder = convert_pancreas.run(["-i", src, "-d", "308", "--split", "custom", "--labeled-list", str(lst)])
    dj = dataset_json(folder)
    assert dj["semisup"]["source_variant"] == "pancreas_tcia_nifti" and dj["channel_names"] == {"0": "CT"}
    assert dj["semisup"]["spacing_source"] == "header" and "assumed_spacing" not in dj["semisup"]
    # geometry comes from the NIfTI header: size, spacing, origin and the HU values unchanged
    exp_img, _ = ct_body_volume()
    for sub, c in (("imagesTr", "0001"), ("imagesUnlabeled", "0003")):
        img = sitk.ReadImage(os.path.join(folder, sub, f"pancreas_{c}_0000.nii.gz"))
        assert img.GetSize() == exp_img.shape[::-1] and img.GetSpacing() == pytest.approx(PANCREAS_SPACING)
        assert img.GetOrigin() == pytest.approx(PANCREAS_ORIGIN)
        assert img.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), exp_img)
    lab = sitk.ReadImage(os.path.join(folder, "labelsTr", "pancreas_0002.nii.gz"))
    assert lab.GetSpacing() == pytest.approx(PANCREAS_SPACING) and lab.GetOrigin() == pytest.approx(PANCREAS_ORIGIN)
    verify_integrity(folder)
    np.testing.assert_array_equal(read_array(os.path.join(folder, "labelsTr", "pancreas_0002.nii.gz")),
                                  ct_body_volume()[1])
    notes = dataset_json(folder)["semisup"]["case_notes"]
    assert notes["pancreas_0002"]["label_repair"] == "flip_z"
    # physical placement loses a label whose header is 1 m off; the array as stored overlays the body
    assert notes["pancreas_0004"]["label_repair"] == "index_order_as_stored"
    np.testing.assert_array_equal(read_array(os.path.join(folder, "labelsTr", "pancreas_0004.nii.gz")),
                                  ct_body_volume()[1])
    assert cases_in(folder, "imagesUnlabeled") == ["pancreas_0003"]
    lst.write_text("0001\n0003\n")
    _err(["-i", src, "-d", "309", "--split", "custom", "--labeled-list", str(lst)],
         "case pancreas_0003: the label does not overlay the image: only 0.0% .* none of the repairs")
    assert leftovers(conv_env) == ["Dataset308_PancreasCT"]


def test_tcia_label_archive_with_the_removed_duplicates(tmp_path, conv_env, capsys):
    """The 2017 label archive has 82 labels; the current image release has 80 scans (0025, 0070 removed)."""
    src = make_pancreas_raw(str(tmp_path / "src"), ["0001", "0002", "0025", "0070"], "nifti")
    for sid in ("0025", "0070"):
        os.remove(os.path.join(src, "Pancreas-CT", f"PANCREAS_{sid}.nii.gz"))
    lst = tmp_path / "lab.txt"
    lst.write_text("0001\n")
    folder = convert_pancreas.run(["-i", src, "-d", "311", "--split", "custom", "--labeled-list", str(lst)])
    assert "ignoring label0025.nii.gz, label0070.nii.gz" in capsys.readouterr().out
    assert cases_in(folder, "imagesTr") == ["pancreas_0001"] and cases_in(folder, "imagesUnlabeled") == ["pancreas_0002"]
    assert dataset_json(folder)["semisup"]["release"] == "80 cases (duplicates 0025/0070 removed)"


def test_bad_inputs(tmp_path, conv_env, mcnet80):
    (tmp_path / "empty").mkdir()
    _err(["-i", str(tmp_path / "empty"), "-d", "310"], "does not look like any known Pancreas-CT")
    _err(["-i", mcnet80, "-d", "310", "--variant", "pancreas_msd"], "unknown --variant")
    _err(["-i", mcnet80, "-d", "310", "--variant", "pancreas_coranet_h5"], "no pancreas_coranet_h5 files")
    _err(["-i", mcnet80, "-d", "310", "--num-labeled", "63"], "larger than the train list .* which has 62")
    # the Decathlon task is refused
    msd = tmp_path / "Task07_Pancreas"
    (msd / "imagesTr").mkdir(parents=True)
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(msd / "imagesTr" / "pancreas_001.nii.gz"))
    _err(["-i", str(msd), "-d", "310"], "Medical Segmentation Decathlon Task07_Pancreas")
    os.remove(msd / "imagesTr" / "pancreas_001.nii.gz")
    (msd / "dataset.json").write_text(json.dumps({"name": "Pancreas", "labels": {"0": "background", "1": "pancreas",
                                                                                  "2": "cancer"}}))
    _err(["-i", str(msd), "-d", "310"], "Medical Segmentation Decathlon Task07_Pancreas")
    # raw: missing label / image, mismatched sizes, unexpected label values
    src = make_pancreas_raw(str(tmp_path / "raw"), ["0001", "0002"], "nifti")
    lst = tmp_path / "lab.txt"
    lst.write_text("0001\n0002\n")
    args = ["-i", src, "-d", "310", "--split", "custom", "--labeled-list", str(lst)]
    lab2 = os.path.join(src, "TCIA_pancreas_labels-02-05-2017", "label0002.nii.gz")
    good = sitk.ReadImage(lab2)
    os.remove(lab2)
    _err(args, "case 0002 \\(labeled\\): label missing; expected label0002.nii.gz")
    small = sitk.Image(12, 12, 7, sitk.sitkUInt8)
    sitk.WriteImage(small, lab2)
    _err(args, "case pancreas_0002: image and label sizes differ: image \\(12, 12, 8\\), label \\(12, 12, 7\\)")
    bad = sitk.Image(good)
    bad[0, 0, 0] = 2
    sitk.WriteImage(bad, lab2)
    _err(args, "case pancreas_0002: unexpected label values \\[2\\]")
    sitk.WriteImage(good, lab2)
    os.remove(os.path.join(src, "Pancreas-CT", "PANCREAS_0002.nii.gz"))
    _err(args, "labels without an image: label0002; expected images for cases pancreas_0002")
    assert leftovers(conv_env) == []
    # two DICOM series in one patient folder
    dcm = make_pancreas_raw(str(tmp_path / "dcm"), ["0001", "0002"], "dicom")
    from conversion_fakes import write_dicom_series
    write_dicom_series(os.path.join(dcm, "Pancreas-CT", "PANCREAS_0002", "s", "second"), ct_body_volume()[0],
                       PANCREAS_SPACING, PANCREAS_ORIGIN, "X")
    _err(["-i", dcm, "-d", "310", "--split", "custom", "--labeled-list", str(lst)],
         "case pancreas_0002: expected exactly one DICOM series below .*PANCREAS_0002, found 2")
    assert leftovers(conv_env) == []
    # no labels folder at all
    shutil.rmtree(os.path.join(src, "TCIA_pancreas_labels-02-05-2017"))
    _err(args, "no label files labelXXXX.nii.gz found")
