"""ACDC converter: official release (ED/ES from Info.cfg) and SSL4MIS h5 (volumes and restacked slices), patient-level
roles of the SSL4MIS split, the frame-mapping check, bad inputs."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run_cli, shrink_plans
from conversion_fakes import (ACDC_SHAPE_ZYX, ACDC_SPACING, acdc_label_zyx, acdc_patients, cases_in,  # noqa: F401
                              conv_env, dataset_json, leftovers, make_acdc_h5, make_acdc_raw, read_array,
                              verify_integrity, write_h5)
from nnunetv2_semisup_conversion import convert_acdc
from nnunetv2_semisup_conversion.errors import ConversionError
from nnunetv2_semisup_conversion.splits import load_list

TRAIN, VAL, TEST = (load_list("ACDC", f"ssl4mis_{n}.list") for n in ("train", "val", "test"))
A = lambda vols: sorted(f"acdc_{v}" for v in vols)  # noqa: E731
FRAMES = lambda patients: [f"{p}_frame0{n}" for p in patients for n in (1, 2)]  # noqa: E731
TRAIN_PATIENTS = sorted({v[:10] for v in TRAIN})


def _err(argv, match):
    with pytest.raises(ConversionError, match=match):
        convert_acdc.run(argv)


@pytest.fixture(scope="module")
def raw_src(tmp_path_factory):
    return make_acdc_raw(str(tmp_path_factory.mktemp("acdc")), acdc_patients(), testing=["patient101", "patient102"])


@pytest.fixture(scope="module")
def h5_src(tmp_path_factory):
    """As released: val/test patients as volume files, training patients as slice files only."""
    return make_acdc_h5(str(tmp_path_factory.mktemp("acdc_h5")), acdc_patients(), slice_patients=TRAIN_PATIENTS)


def test_published_lists_are_patient_grouped():
    assert (len(TRAIN), len(VAL), len(TEST)) == (140, 20, 40)
    for vols in (TRAIN, VAL, TEST):
        assert FRAMES(sorted({v[:10] for v in vols})) == sorted(vols)    # both frames of every patient
    assert len({v[:10] for v in TRAIN + VAL + TEST}) == 100
    assert load_list("ACDC", "derived_labeled_3patients.list") == FRAMES(["patient099", "patient038", "patient050"])


def test_raw_three_labeled_patients(raw_src, conv_env):
    folder = convert_acdc.run(["-i", raw_src, "-d", "621", "--num-labeled", "3"])
    labeled = FRAMES(["patient099", "patient038", "patient050"])
    assert cases_in(folder, "imagesTr") == A(labeled + VAL) == cases_in(folder, "labelsTr")
    assert cases_in(folder, "imagesUnlabeled") == A(load_list("ACDC", "derived_unlabeled_3patients.list"))
    assert len(cases_in(folder, "imagesUnlabeled")) == 134
    assert cases_in(folder, "imagesTs") == A(TEST) == cases_in(folder, "labelsTs")
    roles = {}
    for sub in ("imagesTr", "imagesUnlabeled", "imagesTs"):
        for c in cases_in(folder, sub):
            roles.setdefault(c[:15], set()).add(sub if c not in A(VAL) else "val")
    assert all(len(r) == 1 for r in roles.values())                   # no patient in two roles
    with open(os.path.join(folder, "splits_semisup.json")) as f:
        assert json.load(f) == [{"train": [f"acdc_{v}" for v in labeled], "val": [f"acdc_{v}" for v in VAL]}]
    dj = dataset_json(folder)
    assert dj["channel_names"] == {"0": "MRI"} and dj["labels"] == {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
    r = dj["semisup"]
    assert r["source"] == "ACDC" and r["source_variant"] == "acdc_raw" and r["split"] == "ssl4mis_acdc"
    assert r["labeled_selection"] == "first_patients:3" and r["case_patient"]["acdc_patient099_frame02"] == "patient099"
    # frame01 = ED (frame 1 in Info.cfg), frame02 = ES (frame 10 + n % 5)
    es = sitk.ReadImage(os.path.join(folder, "imagesTr", "acdc_patient038_frame02_0000.nii.gz"))
    src = sitk.ReadImage(os.path.join(raw_src, "database", "training", "patient038", "patient038_frame13.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(es), sitk.GetArrayFromImage(src))
    assert es.GetSpacing() == pytest.approx(ACDC_SPACING)
    np.testing.assert_array_equal(read_array(os.path.join(folder, "labelsTr", "acdc_patient038_frame01.nii.gz")),
                                  acdc_label_zyx("patient038", "ED"))
    verify_integrity(folder)


def test_raw_default_seven_patients_testing_set_and_h5_mapping_check(raw_src, h5_src, conv_env):
    folder = convert_acdc.run(["-i", raw_src, "-d", "622", "--acdc-testing-set", "test", "--h5-dir",
                               os.path.join(h5_src, "ACDC")])
    assert cases_in(folder, "imagesTr") == A(load_list("ACDC", "derived_labeled_7patients.list") + VAL)
    assert len(cases_in(folder, "imagesUnlabeled")) == 126
    assert cases_in(folder, "imagesTs") == A(TEST + FRAMES(["patient101", "patient102"]))
    r = dataset_json(folder)["semisup"]
    assert r["labeled_selection"] == "first_patients:7" and r["acdc_testing_set"] == "test"
    assert len(r["frame_mapping_verified"]) == 200                      # every case with an h5 counterpart
    folder = convert_acdc.run(["-i", raw_src, "-d", "623", "--num-labeled", "1", "--acdc-testing-set", "unlabeled"])
    assert cases_in(folder, "imagesTr") == A(FRAMES(["patient099"]) + VAL)
    assert set(A(FRAMES(["patient101", "patient102"]))) <= set(cases_in(folder, "imagesUnlabeled"))


def test_swapped_frames_are_detected(raw_src, tmp_path, conv_env):
    swapped = make_acdc_h5(str(tmp_path / "sw"), acdc_patients(), swap=["patient050"])
    _err(["-i", raw_src, "-d", "624", "--h5-dir", swapped], "case acdc_patient050_frame01: the h5 label equals the "
                                                             "raw ES frame, not the ED frame: .* swapped")
    _err(["-i", swapped, "-d", "624", "--raw-dir", raw_src], "acdc_patient050_frame01: .* swapped")
    assert leftovers(conv_env) == []


def test_h5_volumes_and_restacked_slices(raw_src, h5_src, conv_env):
    folder = convert_acdc.run(["-i", h5_src, "-d", "625", "--num-labeled", "3"])
    dj = dataset_json(folder)
    assert dj["channel_names"] == {"0": "noNorm"}
    r = dj["semisup"]
    assert r["spacing_source"] == "assumed" and r["assumed_spacing"] == [1.0, 1.0, 10.0]
    assert r["restacked_from_slices"] == A(TRAIN)                       # training volumes exist only as slices
    assert cases_in(folder, "imagesTr") == A(FRAMES(["patient099", "patient038", "patient050"]) + VAL)
    lab = read_array(os.path.join(folder, "labelsTr", "acdc_patient050_frame02.nii.gz"))   # restacked along z
    np.testing.assert_array_equal(lab, acdc_label_zyx("patient050", "ES"))
    assert sitk.ReadImage(os.path.join(folder, "imagesTr", "acdc_patient050_frame02_0000.nii.gz")).GetSpacing() == (
        1.0, 1.0, 10.0)
    verify_integrity(folder)
    folder = convert_acdc.run(["-i", h5_src, "-d", "626", "--raw-dir", raw_src])
    img = sitk.ReadImage(os.path.join(folder, "imagesTs", f"acdc_{TEST[0]}_0000.nii.gz"))
    assert img.GetSpacing() == pytest.approx(ACDC_SPACING) and img.GetOrigin() == pytest.approx((0.5, 0.5, -3.0))
    r = dataset_json(folder)["semisup"]
    assert r["spacing_source"] == "copied_from_raw" and len(r["frame_mapping_verified"]) == 200


def test_bad_inputs(raw_src, h5_src, tmp_path, conv_env):
    (tmp_path / "empty").mkdir()
    _err(["-i", str(tmp_path / "empty"), "-d", "627"], "does not look like any known ACDC download")
    _err(["-i", raw_src, "-d", "627", "--num-labeled", "5"], "--num-labeled 5: for ACDC it counts patients .* 1, 3, 7")
    lst = tmp_path / "l.txt"
    lst.write_text("patient099_frame01\npatient038_frame01\npatient038_frame02\n")
    _err(["-i", raw_src, "-d", "627", "--labeled-list", str(lst)], "1 patient.* in two roles, e.g. patient099")
    src = str(tmp_path / "raw")
    shutil.copytree(raw_src, src)
    p = os.path.join(src, "database", "training", "patient099")
    gt = os.path.join(p, "patient099_frame01_gt.nii.gz")
    good = sitk.ReadImage(gt)
    bad = sitk.Image(good)
    bad[1, 1, 1] = 4
    sitk.WriteImage(bad, gt)
    _err(["-i", src, "-d", "627"], r"case acdc_patient099_frame01: unexpected label values \[4\]")
    shifted = sitk.Image(good)
    shifted.SetSpacing((1.5, 1.5, 5.0))
    sitk.WriteImage(shifted, gt)
    _err(["-i", src, "-d", "627"], "case acdc_patient099_frame01: image and label geometry differ")
    os.remove(gt)
    _err(["-i", src, "-d", "627"], r"case patient099_frame01 \(labeled\): label missing")
    sitk.WriteImage(good, gt)
    with open(os.path.join(p, "Info.cfg"), "w") as f:
        f.write("ED: 1\nGroup: NOR\n")
    _err(["-i", src, "-d", "627"], "Info.cfg: no integer 'ES:' entry")
    with open(os.path.join(p, "Info.cfg"), "w") as f:
        f.write("ED: 1\nES: 3\n")
    _err(["-i", src, "-d", "627"], "case acdc_patient099_frame02: image .*patient099_frame03.nii.gz not found")
    shutil.rmtree(p)
    _err(["-i", src, "-d", "627"], "not found in the source: patient099_frame01, patient099_frame02")
    h5 = str(tmp_path / "h5")
    shutil.copytree(h5_src, h5)
    os.remove(os.path.join(h5, "ACDC", "data", "slices", "patient099_frame01_slice_1.h5"))
    _err(["-i", h5, "-d", "627"], r"acdc_patient099_frame01: slice files .* not consecutive .*missing K \[1\]")
    write_h5(os.path.join(h5, "ACDC", "data", "slices", "patient099_frame01_slice_1.h5"),
             {"image": np.zeros((4, 4), np.float32), "label": np.zeros((4, 4), np.uint8)})
    _err(["-i", h5, "-d", "627"], "acdc_patient099_frame01: its slice files have different or non-2D shapes")
    write_h5(os.path.join(h5, "ACDC", "data", f"{TEST[0]}.h5"), {"image": np.zeros((2, 3, 3), np.float32),
                                                                 "label": np.zeros((2, 3, 3), np.float64) + 0.5})
    write_h5(os.path.join(h5, "ACDC", "data", "slices", "patient099_frame01_slice_1.h5"),
             {"image": np.zeros(ACDC_SHAPE_ZYX[1:], np.float32), "label": np.zeros(ACDC_SHAPE_ZYX[1:], np.uint8)})
    _err(["-i", h5, "-d", "627", "--labeled-list", _ids(tmp_path, FRAMES(["patient038"]))],
         f"acdc_{TEST[0]}: .* key 'label' has dtype float64; expected an integer array")
    assert leftovers(conv_env) == []


def test_acdc_through_nnunets_2d_configuration(nnunet_env, tmp_path):
    """The papers' 2D ACDC experiment as nnU-Net runs it: converter console command, stock planning and integrity check
    for ``2d``, the unlabeled preprocessing, CML (the paper's ACDC method) trained in ``2d`` on the patient-grouped
    folds, stock prediction."""
    env = dict(nnunet_env)
    patients = [f"patient{i:03d}" for i in range(1, 9)]
    src = make_acdc_raw(str(tmp_path / "acdc"), patients, upscale=4)
    labeled = _ids(tmp_path, FRAMES(patients[:3]))
    test = tmp_path / "test.txt"
    test.write_text("\n".join(FRAMES(patients[7:])) + "\n")
    run_cli(["nnUNetv2_semisup_convert_ACDC", "-i", src, "-d", 987, "--split", "custom", "--labeled-list", labeled,
             "--test-list", test, "--quiet"], env)
    raw = os.path.join(env["nnUNet_raw"], "Dataset987_ACDC")
    with open(os.path.join(raw, "splits_semisup.json")) as f:
        folds = json.load(f)
    assert len(folds) == 3                                              # three labeled patients -> three folds
    for fold in folds:                                                  # ED and ES of a patient never split up
        assert len(fold["val"]) == 2 and fold["val"][0][:15] == fold["val"][1][:15]
        assert sorted(fold["train"] + fold["val"]) == A(FRAMES(patients[:3]))
    assert len(cases_in(raw, "imagesUnlabeled")) == 8 and cases_in(raw, "imagesTs") == A(FRAMES(patients[7:]))
    plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}  # planning fails with 0 workers
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", 987, "-c", "2d", "-np", 1, "--verify_dataset_integrity"], plan_env)
    pp = os.path.join(env["nnUNet_preprocessed"], "Dataset987_ACDC")
    shrink_plans(os.path.join(pp, "nnUNetPlans.json"))
    run_cli(["nnUNetv2_semisup_preprocess", "-d", 987, "-c", "2d", "-np", 1], env)
    with open(os.path.join(pp, "splits_final.json")) as f:
        assert json.load(f) == folds
    env.update({"nnUNet_semisup_short_epochs": "1", "nnUNet_semisup_short_iterations": "1",
                "nnUNet_semisup_short_val_iterations": "1"})
    run_cli(["nnUNetv2_train", 987, "2d", 0, "-tr", "nnUNetTrainerCML_short", "-device", "cpu"], env)
    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", 987, "-c", "2d", "-f", 0,
             "-tr", "nnUNetTrainerCML_short", "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1], env)
    pred = read_array(out / "acdc_patient008_frame01.nii.gz")
    assert pred.shape == (ACDC_SHAPE_ZYX[0], ACDC_SHAPE_ZYX[1] * 4, ACDC_SHAPE_ZYX[2] * 4)
    assert set(np.unique(pred)) <= {0, 1, 2, 3}


def _ids(tmp_path, ids):
    f = tmp_path / "ids.txt"
    f.write_text("\n".join(ids) + "\n")
    return str(f)
