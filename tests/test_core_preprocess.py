"""Unlabeled preprocessing: equality with nnU-Net's preprocessor, idempotence, atomic re-runs, splits, errors."""
import json
import os
import shutil

import numpy as np
import pytest
from batchgenerators.utilities.file_and_folder_operations import load_json, load_pickle

from conftest import run_cli
from nnunetv2_semisup.data.preprocess_unlabeled import install_semisup_splits, preprocess_unlabeled_case
from nnunetv2_semisup.data.unlabeled_raw import UnlabeledDataError, find_unlabeled_cases


def _blosc(path):
    import blosc2
    return np.asarray(blosc2.open(urlpath=path, mode="r")[:])


def test_unlabeled_output_matches_nnunet_preprocessing_of_the_same_image(planned_dataset, tmp_path):
    """A labeled image preprocessed as unlabeled gives nnU-Net's own preprocessed array and geometry."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    ds = planned_dataset
    plans = load_json(os.path.join(ds.preprocessed_folder, "nnUNetPlans.json"))
    dataset_json = load_json(os.path.join(ds.preprocessed_folder, "dataset.json"))
    case = "syn_000"
    image = os.path.join(ds.raw_folder, "imagesTr", f"{case}_0000.nii.gz")
    preprocess_unlabeled_case(case, [image], str(tmp_path), plans, "3d_fullres", dataset_json, nnUNetDatasetBlosc2)
    ours = _blosc(str(tmp_path / f"{case}.b2nd"))
    reference = _blosc(os.path.join(ds.preprocessed_folder, "nnUNetPlans_3d_fullres", f"{case}.b2nd"))
    assert ours.shape == reference.shape
    np.testing.assert_array_equal(ours, reference)
    p_ours = load_pickle(str(tmp_path / f"{case}.pkl"))
    p_ref = load_pickle(os.path.join(ds.preprocessed_folder, "nnUNetPlans_3d_fullres", f"{case}.pkl"))
    for key in ("spacing", "shape_before_cropping", "bbox_used_for_cropping",
                "shape_after_cropping_and_before_resampling"):
        assert np.array_equal(np.asarray(p_ours[key]), np.asarray(p_ref[key])), key
    assert set(p_ours["class_locations"]) == set(p_ref["class_locations"]) == {1, 2, 3}
    assert all(len(v) == 0 for v in p_ours["class_locations"].values())
    seg = _blosc(str(tmp_path / f"{case}_seg.b2nd"))
    assert set(np.unique(seg)) <= {0, -1}  # no label information, only nnU-Net's nonzero mask
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_preprocess_writes_every_unlabeled_case_and_is_idempotent(planned_dataset):
    ds = planned_dataset
    out = os.path.join(ds.preprocessed_folder, "nnUNetPlans_3d_fullres_unlabeled")
    cases = sorted(f[:-5] for f in os.listdir(out) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))
    raw_cases = sorted({f[:-12] for f in os.listdir(os.path.join(ds.raw_folder, "imagesUnlabeled"))})
    assert cases == raw_cases and len(cases) == 6
    # labeled folder untouched: nnU-Net's split / fold all only see labeled cases
    labeled = os.listdir(os.path.join(ds.preprocessed_folder, "nnUNetPlans_3d_fullres"))
    assert not set(raw_cases) & {f.split(".")[0] for f in labeled}
    mtimes = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
    proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", ds.dataset_id, "-c", "3d_fullres", "-np", 1], ds.env)
    assert "6 already done, 0 to preprocess" in proc.stdout
    assert {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)} == mtimes


def test_interrupted_case_is_redone_and_leftovers_removed(planned_dataset):
    ds = planned_dataset
    out = os.path.join(ds.preprocessed_folder, "nnUNetPlans_3d_fullres_unlabeled")
    victim = sorted(f for f in os.listdir(out) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))[0][:-5]
    before = _blosc(os.path.join(out, victim + ".b2nd"))
    os.remove(os.path.join(out, victim + ".b2nd"))  # as if killed before the final rename
    os.makedirs(os.path.join(out, f".tmp_{victim}_999"))
    with open(os.path.join(out, f".tmp_{victim}_999", victim + ".pkl"), "w") as f:
        f.write("half written")
    proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", ds.dataset_id, "-c", "3d_fullres", "-np", 1], ds.env)
    assert "5 already done, 1 to preprocess" in proc.stdout
    np.testing.assert_array_equal(_blosc(os.path.join(out, victim + ".b2nd")), before)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_changed_plans_require_overwrite(planned_dataset, tmp_path):
    ds = planned_dataset
    state = os.path.join(ds.preprocessed_folder, "nnUNetPlans_3d_fullres_unlabeled", "semisup_preprocess.json")
    original = load_json(state)
    try:
        with open(state, "w") as f:
            json.dump({**original, "sha256": "0" * 64}, f)
        proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", ds.dataset_id, "-c", "3d_fullres", "-np", 1], ds.env,
                       expect_ok=False)
        assert proc.returncode == 1 and "--overwrite" in proc.stderr
    finally:
        with open(state, "w") as f:
            json.dump(original, f)


def _fake_raw(tmp_path, files, channels=1, test_files=(), labeled_files=(), transductive=None):
    raw = tmp_path / "Dataset999_Fake"
    for sub, names in (("imagesUnlabeled", files), ("imagesTs", test_files), ("imagesTr", labeled_files)):
        if names is not None:
            (raw / sub).mkdir(parents=True, exist_ok=True)
            for n in names:
                (raw / sub / n).write_bytes(b"")
    dj = {"channel_names": {str(i): f"c{i}" for i in range(channels)}, "labels": {"background": 0, "a": 1},
          "numTraining": 1, "file_ending": ".nii.gz"}
    if transductive is not None:
        dj["semisup"] = {"transductive": transductive}
    return str(raw), dj


def test_discovery_groups_channels_in_order(tmp_path):
    raw, dj = _fake_raw(tmp_path, ["b_0001.nii.gz", "a_0000.nii.gz", "b_0000.nii.gz", "a_0001.nii.gz"], channels=2)
    cases = find_unlabeled_cases(raw, dj)
    assert list(cases) == ["a", "b"]
    assert [os.path.basename(f) for f in cases["b"]] == ["b_0000.nii.gz", "b_0001.nii.gz"]


@pytest.mark.parametrize("files,channels,expected", [
    (None, 1, "does not exist"),
    ([], 1, "is empty"),
    (["a_0000.nii"], 1, "unexpected file name"),
    (["a_0000.nrrd"], 1, "unexpected file name"),
    (["a_0000.nii.gz"], 2, "missing: [1]"),
    (["a_0000.nii.gz", "a_0001.nii.gz"], 1, "unexpected: [1]"),
])
def test_discovery_errors_name_the_problem(tmp_path, files, channels, expected):
    raw, dj = _fake_raw(tmp_path, files, channels)
    with pytest.raises(UnlabeledDataError) as e:
        find_unlabeled_cases(raw, dj)
    assert expected in str(e.value)
    if files is None or files == []:
        assert "nnUNetv2_semisup_add_unlabeled" in str(e.value)


def test_test_cases_need_the_transductive_flag(tmp_path):
    raw, dj = _fake_raw(tmp_path, ["t1_0000.nii.gz", "u1_0000.nii.gz"], test_files=["t1_0000.nii.gz"])
    with pytest.raises(UnlabeledDataError, match="transductive"):
        find_unlabeled_cases(raw, dj)
    raw, dj = _fake_raw(tmp_path / "ok", ["t1_0000.nii.gz"], test_files=["t1_0000.nii.gz"], transductive=True)
    assert list(find_unlabeled_cases(raw, dj)) == ["t1"]


def test_labeled_case_cannot_also_be_unlabeled(tmp_path):
    raw, dj = _fake_raw(tmp_path, ["x_0000.nii.gz"], labeled_files=["x_0000.nii.gz"])
    with pytest.raises(UnlabeledDataError, match="both in imagesTr"):
        find_unlabeled_cases(raw, dj)


def test_preprocess_before_planning_names_the_command(nnunet_env, tmp_path):
    from nnunetv2_semisup.synthetic import make_synthetic_dataset
    make_synthetic_dataset(os.path.join(nnunet_env["nnUNet_raw"], "Dataset991_NotPlanned"), 1, 1, 0,
                           shape=(8, 16, 16))
    proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", 991, "-c", "3d_fullres"], nnunet_env, expect_ok=False)
    assert proc.returncode == 1
    assert "nnUNetv2_plan_and_preprocess -d 991 -c 3d_fullres" in proc.stderr
    # plans a planner makes: the command names that planner, not plan_and_preprocess (which never writes them)
    proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", 991, "-c", "3d_fullres", "-p", "nnUNetResEncUNetMPlans"],
                   nnunet_env, expect_ok=False)
    assert proc.returncode == 1 and "nnUNetv2_plan_experiment -d 991 -pl nnUNetPlannerResEncM" in proc.stderr
    proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", 12345, "-c", "3d_fullres"], nnunet_env, expect_ok=False)
    assert proc.returncode == 1 and "12345" in proc.stderr


def test_splits_semisup_installed_unless_split_exists(tmp_path):
    raw, pp = tmp_path / "raw", tmp_path / "pp"
    raw.mkdir(), pp.mkdir()
    split = [{"train": ["a", "b"], "val": ["c"]}]
    (raw / "splits_semisup.json").write_text(json.dumps(split))
    assert install_semisup_splits(str(raw), str(pp), verbose=False)
    assert load_json(str(pp / "splits_final.json")) == split
    (raw / "splits_semisup.json").write_text(json.dumps([{"train": ["x"], "val": ["y"]}]))
    assert not install_semisup_splits(str(raw), str(pp), verbose=False)
    assert load_json(str(pp / "splits_final.json")) == split  # an existing nnU-Net split is never replaced


def test_multichannel_dataset_in_2d_3d_fullres_and_3d_lowres(nnunet_env):
    """Every configuration and both channels: unlabeled arrays equal nnU-Net's preprocessing of the same image."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2_semisup.synthetic import make_synthetic_dataset
    raw = os.path.join(nnunet_env["nnUNet_raw"], "Dataset992_MultiChannel")
    make_synthetic_dataset(raw, 2, 2, 0, seed=3, shape=(12, 24, 24), num_channels=2)
    plan_env = {k: v for k, v in nnunet_env.items() if k != "nnUNet_n_proc_DA"}
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", 992, "-c", "2d", "3d_fullres", "-np", 1], plan_env)
    pp = os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset992_MultiChannel")
    plans_file = os.path.join(pp, "nnUNetPlans.json")
    plans = load_json(plans_file)
    # nnU-Net only plans 3d_lowres for large images; add one the way nnU-Net writes it (coarser spacing)
    fullres = plans["configurations"]["3d_fullres"]
    plans["configurations"]["3d_lowres"] = {
        "inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
        "spacing": [s * 2 for s in fullres["spacing"]], "patch_size": [8, 16, 16],
        "median_image_size_in_voxels": [6, 12, 12]}
    with open(plans_file, "w") as f:
        json.dump(plans, f, indent=2)
    run_cli(["nnUNetv2_preprocess", "-d", 992, "-c", "3d_lowres", "-np", 1], plan_env)
    run_cli(["nnUNetv2_semisup_preprocess", "-d", 992, "-c", "2d", "3d_fullres", "3d_lowres", "-np", 2],
            nnunet_env)

    dataset_json = load_json(os.path.join(pp, "dataset.json"))
    images = [os.path.join(raw, "imagesTr", f"syn_000_{c:04d}.nii.gz") for c in range(2)]
    shapes = {}
    for conf, ident in (("2d", "nnUNetPlans_2d"), ("3d_fullres", "nnUNetPlans_3d_fullres"),
                        ("3d_lowres", "nnUNetPlans_3d_lowres")):
        out = os.path.join(pp, ident + "_unlabeled")
        unlabeled = sorted(f for f in os.listdir(out) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))
        assert unlabeled == ["syn_002.b2nd", "syn_003.b2nd"], conf
        arr = _blosc(os.path.join(out, "syn_002.b2nd"))
        assert arr.shape[0] == 2 and np.isfinite(arr).all()
        shapes[conf] = arr.shape
        check = os.path.join(pp, f"check_{conf}")
        os.makedirs(check)
        preprocess_unlabeled_case("syn_000", images, check, plans, conf, dataset_json, nnUNetDatasetBlosc2)
        np.testing.assert_array_equal(_blosc(os.path.join(check, "syn_000.b2nd")),
                                      _blosc(os.path.join(pp, ident, "syn_000.b2nd")))
        shutil.rmtree(check)
    assert shapes["2d"] == shapes["3d_fullres"] == (2, 12, 24, 24)
    assert shapes["3d_lowres"] == (2, 6, 12, 12)  # resampled to twice the spacing

    # Mean Teacher trains on this 2-channel dataset with the same machinery (any number of channels)
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args("992", "3d_fullres", "all", "nnUNetTrainerMeanTeacher_short",
                                    device=torch.device("cpu"))
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    try:
        batch = next(trainer.dataloader_train)
        assert batch["data"].shape[1] == 2 and batch["unlabeled"]["data"].shape[1] == 2
        teacher_before = [p.clone() for p in trainer.teacher.parameters()]
        out = trainer.train_step(batch)
        assert np.isfinite(out["loss"]) and np.isfinite(out["cons"])
        assert any(not torch.equal(a, b) for a, b in zip(teacher_before, trainer.teacher.parameters()))
    finally:
        trainer.dataloader_train.finish()


def test_plans_sharing_the_data_identifier_share_the_unlabeled_cases(planned_dataset):
    """nnU-Net's residual-encoder presets (nnUNetResEncUNet*Plans) reuse nnUNetPlans' preprocessed data (same
    data_identifier, same preprocessing, another network): the unlabeled cases preprocessed for one serve the other
    instead of being reported as stale."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_semisup.data.preprocess_unlabeled import stale_preprocessing_problem
    ds = planned_dataset
    plans = load_json(os.path.join(ds.preprocessed_folder, "nnUNetPlans.json"))
    other = {**plans, "plans_name": "nnUNetResEncUNetMPlans"}
    other["configurations"] = json.loads(json.dumps(plans["configurations"]))
    other["configurations"]["3d_fullres"]["batch_size"] = 3  # a network/batch change, no preprocessing change
    other_file = os.path.join(ds.preprocessed_folder, "nnUNetResEncUNetMPlans.json")
    with open(other_file, "w") as f:
        json.dump(other, f)
    try:
        conf = PlansManager(other).get_configuration("3d_fullres")
        folder = os.path.join(ds.preprocessed_folder, "nnUNetPlans_3d_fullres_unlabeled")
        assert stale_preprocessing_problem(folder, other, conf, "nnUNetResEncUNetMPlans", "3d_fullres") is None
        proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", ds.dataset_id, "-c", "3d_fullres", "-p",
                        "nnUNetResEncUNetMPlans", "-np", 1], ds.env)
        assert "0 to preprocess" in proc.stdout
        other["configurations"]["3d_fullres"]["spacing"] = [s * 2 for s in plans["configurations"]["3d_fullres"]
                                                             ["spacing"]]  # preprocessing changed: stale
        conf = PlansManager(other).get_configuration("3d_fullres")
        assert "different plans" in stale_preprocessing_problem(folder, other, conf, "nnUNetResEncUNetMPlans",
                                                                "3d_fullres")
    finally:
        os.remove(other_file)
