"""AMOS 2022 converter: official amos22 release and DHC npy, the DHC/SKCDF lists, CT-only option, bad inputs."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fakes import (AMOS_NPY_SHAPE_ZYX, AMOS_SHAPE_ZYX, AMOS_SPACING, MARK_XYZ, amos_ids, cases_in,
                              conv_env, dataset_json, leftovers, make_amos_npy, make_amos_raw,  # noqa: F401
                              read_array, verify_integrity)
from nnunetv2_semisup_conversion import convert_amos
from nnunetv2_semisup_conversion.errors import ConversionError
from nnunetv2_semisup_conversion.splits import load_list

TR, VA = amos_ids()
TRAIN, EVAL, TEST = (load_list("AMOS", f"dhc_{n}.txt") for n in ("train", "eval", "test"))
TS = ["amos_0002", "amos_0901"]                     # release imagesTs: one CT, one MRI (IDs not in any list)
LAB5 = ["amos_0078", "amos_0158", "amos_0170", "amos_0192", "amos_0391", "amos_0396", "amos_0410", "amos_0514",
        "amos_0548", "amos_0578"]                       # SKCDF Table 2's 10 labeled cases (docs/spec/datasets_more.md §1.3)
MRI = lambda ids: [i for i in ids if int(i[-4:]) >= 500]  # noqa: E731
CT = lambda ids: [i for i in ids if int(i[-4:]) < 500]  # noqa: E731


def _err(argv, match):
    with pytest.raises(ConversionError, match=match):
        convert_amos.run(argv)


@pytest.fixture(scope="module")
def raw_src(tmp_path_factory):
    return make_amos_raw(str(tmp_path_factory.mktemp("amos")), TR, VA, ts_ids=TS)


def test_published_list_counts():
    assert (len(TRAIN), len(EVAL), len(TEST)) == (216, 24, 120)
    assert load_list("AMOS", "dhc_labeled_5p.txt") == LAB5
    assert (len(MRI(TRAIN)), len(MRI(EVAL)), len(MRI(TEST))) == (34, 6, 20)
    assert not set(TRAIN) & set(EVAL) and not set(TRAIN + EVAL) & set(TEST)


def test_raw_default_is_the_skcdf_5_percent_setting(raw_src, conv_env):
    folder = convert_amos.run(["-i", raw_src, "-d", "601"])
    assert cases_in(folder, "imagesTr") == sorted(LAB5 + EVAL) == cases_in(folder, "labelsTr")
    unl = cases_in(folder, "imagesUnlabeled")
    assert unl == sorted(load_list("AMOS", "dhc_unlabeled_5p.txt")) and len(unl) == 206
    assert cases_in(folder, "imagesTs") == sorted(TEST) == cases_in(folder, "labelsTs") and len(TEST) == 120
    assert not set(TS) & set(unl) and not set(TS) & set(TR + VA)   # the release's imagesTs is not in the protocol
    with open(os.path.join(folder, "splits_semisup.json")) as f:
        assert json.load(f) == [{"train": LAB5, "val": EVAL}]
    dj = dataset_json(folder)
    assert dj["channel_names"] == {"0": "CT_or_MRI"} and dj["numTraining"] == 34 and len(dj["labels"]) == 16
    assert dj["labels"]["duodenum"] == 13 and dj["labels"]["prostate_uterus"] == 15 and dj["labels"]["pancreas"] == 10
    r = dj["semisup"]
    assert r["source"] == "AMOS2022" and r["source_variant"] == "amos_raw" and r["split"] == "dhc_amos"
    assert r["labeled_selection"] == "list:dhc_labeled_5p.txt" and r["spacing_source"] == "header"
    assert sum(v == "MRI" for v in r["case_modality"].values()) == 60 and len(r["case_modality"]) == 360
    assert r["case_modality"]["amos_0514"] == "MRI" and r["case_modality"]["amos_0410"] == "CT"
    # absent classes recorded per case (MRI fakes lack bladder and prostate/uterus)
    assert r["present_labels"]["amos_0514"] == [1, 6] and r["present_labels"]["amos_0078"] == [1, 6, 14, 15]
    assert set(r["present_labels"]) == set(LAB5 + EVAL + TEST)   # unlabeled labels are never read
    # native geometry and data unchanged
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", "amos_0548_0000.nii.gz"))
    src = sitk.ReadImage(os.path.join(raw_src, "amos22", "imagesTr", "amos_0548.nii.gz"))
    assert img.GetSpacing() == pytest.approx(AMOS_SPACING["MRI"]) and img.GetOrigin() == pytest.approx((1, 2, 3))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(src))
    lab = read_array(os.path.join(folder, "labelsTs", "amos_0008.nii.gz"))
    assert lab.shape == AMOS_SHAPE_ZYX and set(np.unique(lab)) == {0, 1, 6, 14, 15}
    verify_integrity(folder)


def test_ct_only_drops_every_mri_case_and_other_labeled_lists(raw_src, conv_env):
    folder = convert_amos.run(["-i", raw_src, "-d", "602", "--amos-modality", "ct", "--amos-testing-set", "unlabeled"])
    assert cases_in(folder, "imagesTr") == sorted(CT(LAB5) + CT(EVAL))
    assert len(CT(LAB5)) == 7 and len(CT(EVAL)) == 18
    assert cases_in(folder, "imagesTs") == sorted(CT(TEST)) and len(CT(TEST)) == 100
    assert cases_in(folder, "imagesUnlabeled") == sorted(CT(load_list("AMOS", "dhc_unlabeled_5p.txt")) + ["amos_0002"])
    assert len(CT(load_list("AMOS", "dhc_unlabeled_5p.txt"))) == 175
    dj = dataset_json(folder)
    assert dj["channel_names"] == {"0": "CT"}
    r = dj["semisup"]
    assert r["amos_modality"] == "ct" and "MRI" not in r["case_modality"].values()
    assert "MRI scans" in r["protocol_deviations"][0] and r["amos_testing_set"] == "unlabeled"
    folder = convert_amos.run(["-i", raw_src, "-d", "603", "--num-labeled", "21"])
    assert cases_in(folder, "imagesTr") == sorted(load_list("AMOS", "dhc_labeled_10p.txt") + EVAL)
    assert len(cases_in(folder, "imagesUnlabeled")) == 195
    folder = convert_amos.run(["-i", raw_src, "-d", "604", "--num-labeled", "4"])
    assert len(cases_in(folder, "imagesUnlabeled")) == 212 and len(cases_in(folder, "imagesTr")) == 28


def test_refused_label_budgets(raw_src, tmp_path, conv_env):
    with pytest.raises(ConversionError) as e:
        convert_amos.run(["-i", raw_src, "-d", "605", "--num-labeled", "38"])
    assert "20 of the 24 eval cases" in str(e.value) and "--labeled-list" in str(e.value)
    _err(["-i", raw_src, "-d", "605", "--num-labeled", "5"], "Allowed values: 4, 10, 21")
    lst = tmp_path / "lab.txt"
    # any spelling of an ID (number, file name) is accepted; the IDs must come from the train list
    lst.write_text(f"{int(TRAIN[0][-4:])}\n{TRAIN[1]}.nii.gz\n{TRAIN[2]}\n")
    folder = convert_amos.run(["-i", raw_src, "-d", "605", "--labeled-list", str(lst)])
    assert cases_in(folder, "imagesTr") == sorted(TRAIN[:3] + EVAL) and len(cases_in(folder, "imagesUnlabeled")) == 213
    lst.write_text(EVAL[0] + "\n")
    _err(["-i", raw_src, "-d", "606", "--labeled-list", str(lst)], f"not in the train list .*{EVAL[0]}")
    assert leftovers(conv_env) == ["Dataset605_AMOS"]


def test_npy_variant_assumed_and_derived_spacing(raw_src, tmp_path, conv_env):
    npy = make_amos_npy(str(tmp_path / "dhc"), TR + VA)
    folder = convert_amos.run(["-i", npy, "-d", "607"])
    r = dataset_json(folder)["semisup"]
    assert r["source_variant"] == "amos_dhc_npy" and r["resized"] is True and r["resize_shape"] == [5, 8, 8]
    assert r["spacing_source"] == "assumed" and r["assumed_spacing"] == [1.0, 1.0, 1.0]
    assert "clip [-75, 275]" in r["intensity"] and "differs" in r["resize_shape_note"]
    assert dataset_json(folder)["channel_names"] == {"0": "CT_or_MRI"}
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", "amos_0078_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), np.load(os.path.join(npy, "npy", "amos_0078_image.npy")))
    assert img.GetPixel(*MARK_XYZ) == 1234.0          # (z, y, x) arrays are not transposed
    verify_integrity(folder)
    folder = convert_amos.run(["-i", npy, "-d", "608", "--raw-dir", raw_src])
    img = sitk.ReadImage(os.path.join(folder, "imagesTs", "amos_0544_0000.nii.gz"))   # an MRI test case
    expected = [s * n / m for s, n, m in zip(AMOS_SPACING["MRI"], AMOS_SHAPE_ZYX[::-1], AMOS_NPY_SHAPE_ZYX[::-1])]
    assert img.GetSpacing() == pytest.approx(expected) and img.GetOrigin() == pytest.approx((1, 2, 3))
    assert dataset_json(folder)["semisup"]["derived_spacing"]["amos_0544"] == pytest.approx(expected)


def test_bad_inputs_name_the_case_and_leave_nothing(raw_src, tmp_path, conv_env):
    (tmp_path / "empty").mkdir()
    _err(["-i", str(tmp_path / "empty"), "-d", "609"], "does not look like any known AMOS 2022 download")
    _err(["-i", str(tmp_path / "nope"), "-d", "609"], "input folder not found")
    _err(["-i", raw_src, "-d", "609", "--assume-spacing", "1,1,1"], "for the npy variant")
    src = str(tmp_path / "raw")
    shutil.copytree(raw_src, src)
    base = os.path.join(src, "amos22")
    lab = os.path.join(base, "labelsTr", "amos_0078.nii.gz")
    good = sitk.ReadImage(lab)
    bad = sitk.Image(good)
    bad[1, 1, 1] = 16
    sitk.WriteImage(bad, lab)
    _err(["-i", src, "-d", "609"], r"case amos_0078: unexpected label values \[16\]; expected a subset of \[0, 1, .*15\]")
    moved = sitk.Image(good)
    moved.SetOrigin((50.0, 2.0, 3.0))
    sitk.WriteImage(moved, lab)
    _err(["-i", src, "-d", "609"], "case amos_0078: image and label geometry differ")
    os.remove(lab)
    _err(["-i", src, "-d", "609"], r"case amos_0078 \(labeled\): label missing")
    sitk.WriteImage(good, lab)
    os.remove(os.path.join(base, "imagesVa", "amos_0008.nii.gz"))       # a test case the download lacks
    _err(["-i", src, "-d", "609"], "labels without an image: amos_0008")
    os.remove(os.path.join(base, "labelsVa", "amos_0008.nii.gz"))
    _err(["-i", src, "-d", "609"], "not found in the source: amos_0008")
    npy = make_amos_npy(str(tmp_path / "npy"), TR + VA)
    np.save(os.path.join(npy, "npy", "amos_0078_label.npy"), np.zeros((5, 8, 7), np.int8))
    _err(["-i", npy, "-d", "609"], r"case amos_0078: image shape \(5, 8, 8\) and label shape \(5, 8, 7\) differ")
    np.save(os.path.join(npy, "npy", "amos_0078_image.npy"), np.zeros(AMOS_NPY_SHAPE_ZYX, bool))
    _err(["-i", npy, "-d", "609"], "case amos_0078: .* has dtype bool; expected a numeric image array")
    np.save(os.path.join(npy, "npy", "amos_0078_image.npy"), np.zeros((4, 8, 8), np.float32))
    _err(["-i", npy, "-d", "609"], "mixes npy volumes of different shapes")
    assert leftovers(conv_env) == []
