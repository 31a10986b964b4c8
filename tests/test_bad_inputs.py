"""What a user sees on bad input : NaN/Inf/constant unlabeled scans refused with the file and the count,
channel grids that differ, a non-finite loss that stops training without touching the last checkpoint, and a
truncated preprocessed case that names the file and is redone by a normal re-run. Each through the real command.

The tests work on a copy of the session's planned synthetic dataset under another ID, so they can break it.
"""
import glob
import json
import os
import shutil
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import copy_planned_dataset, run_cli

from nnunetv2_semisup.data.image_checks import array_problems, direction_problem, grid_mismatch

COPY_ID = 981
COPY_NAME = f"Dataset{COPY_ID}_BadInputs"
UNLABELED_PP = "nnUNetPlans_3d_fullres_unlabeled"


@pytest.fixture()
def copied(planned_dataset):
    """Raw and preprocessed copy of dataset 990 as 981 (fresh for every test)."""
    raw, pp = copy_planned_dataset(planned_dataset, COPY_ID, "BadInputs")
    return planned_dataset.env, raw, pp


def _unlabeled_files(raw):
    return sorted(glob.glob(os.path.join(raw, "imagesUnlabeled", "*_0000.nii.gz")))


def _rewrite(path, change):
    img = sitk.ReadImage(path)
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    change(arr)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, path)


# ------------------------------------------------------------------------------------------------ unit checks
def test_array_and_direction_checks():
    a = np.ones((2, 3, 4), np.float32)
    p = array_problems(a)
    assert len(p) == 1 and "same value" in p[0] and "constant image" in p[0]
    a[0, 0, :3] = np.nan
    a[1, 2, 3] = np.inf
    a[1, 0, 0] = 5
    problems = array_problems(a)
    assert problems == ["3 NaN voxel(s) of 24", "1 infinite voxel(s) of 24"]
    assert array_problems(np.zeros((0, 4))) == ["the image has no voxels (shape (0, 4))"]
    assert array_problems(np.arange(8, dtype=np.int16)) == []
    assert direction_problem((1, 0, 0, 0, 1, 0, 0, 0, 1)) is None
    assert "not invertible" in direction_problem((1, 0, 0, 1, 0, 0, 0, 0, 1))
    assert grid_mismatch({"shape": (2, 3), "spacing": (1, 1)}, {"shape": (2, 3), "spacing": (1, 2)}).startswith(
        "spacing (1.0, 2.0) differs")


@pytest.mark.parametrize("field,value", [("shape", (2, 4, 4)), ("spacing", (1.0, 1.0, 2.5)),
                                         ("origin", (0.0, 0.0, 5.0)),
                                         ("direction", (-1, 0, 0, 0, 1, 0, 0, 0, 1))])
def test_grid_mismatch_checks_every_field(field, value):
    """One field at a time differs from channel 0's grid: each is caught and named."""
    ref = {"shape": (2, 3, 4), "spacing": (1.0, 1.0, 2.0), "origin": (0.0, 0.0, 0.0),
           "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}
    assert grid_mismatch(ref, dict(ref)) is None
    msg = grid_mismatch(ref, dict(ref, **{field: value}))
    assert msg is not None and msg.startswith(field + " ")


# ------------------------------------------------------------------------------------------------ preprocessing
@pytest.mark.parametrize("kind,expected", [
    ("nan", r"7 NaN voxel\(s\)"), ("inf", r"2 infinite voxel\(s\)"), ("constant", r"constant image"),
    ("truncated", r"is damaged or not an image \(.*\); re-export it"),
    ("not_an_image", r"is damaged or not an image \(.*\); re-export it")])
def test_preprocess_refuses_a_bad_unlabeled_scan(copied, kind, expected):
    import re
    env, raw, pp = copied
    victim = _unlabeled_files(raw)[2]
    case = os.path.basename(victim)[: -len("_0000.nii.gz")]
    if kind == "nan":
        _rewrite(victim, lambda a: a.__setitem__((slice(0, 1), slice(0, 1), slice(0, 7)), np.nan))
    elif kind == "inf":
        _rewrite(victim, lambda a: a.__setitem__((0, 0, slice(0, 2)), np.inf))
    elif kind == "constant":
        _rewrite(victim, lambda a: a.__setitem__(Ellipsis, 3.0))
    elif kind == "truncated":  # SimpleITK reads this without a word, the lost slices blank
        data = open(victim, "rb").read()
        open(victim, "wb").write(data[: len(data) // 2])
    else:
        open(victim, "w").write("not an image\n")
    out = os.path.join(pp, UNLABELED_PP)
    shutil.rmtree(out)
    proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", COPY_ID, "-c", "3d_fullres", "-np", 1], env,
                   expect_ok=False)
    assert proc.returncode == 1
    assert victim in proc.stderr and re.search(expected, proc.stderr), proc.stderr
    assert "remove the case" in proc.stderr and "Traceback" not in proc.stderr
    # nothing of the bad case was written; no temporary leftovers
    assert not [f for f in os.listdir(out) if f.startswith(case + ".") or f.startswith(".tmp")]


def test_preprocess_refuses_channels_on_different_grids(copied):
    env, raw, pp = copied
    dj_path = os.path.join(raw, "dataset.json")
    for f in _unlabeled_files(raw):  # make the dataset two-channel: channel 1 = channel 0 ...
        shutil.copyfile(f, f.replace("_0000.nii.gz", "_0001.nii.gz"))
    # the first case (preprocessed first): later cases would need intensity statistics of a second channel
    victim = _unlabeled_files(raw)[0].replace("_0000.nii.gz", "_0001.nii.gz")
    img = sitk.ReadImage(victim)
    img.SetSpacing((1.0, 1.0, 5.0))  # ... except for one case whose second channel has another spacing
    sitk.WriteImage(img, victim)
    with open(dj_path) as f:
        dj = json.load(f)
    dj["channel_names"] = {"0": "CT", "1": "CT2"}
    for path in (dj_path, os.path.join(pp, "dataset.json")):
        with open(path, "w") as f:
            json.dump(dj, f)
    proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", COPY_ID, "-c", "3d_fullres", "-np", 1, "--overwrite"],
                   env, expect_ok=False)
    assert proc.returncode == 1
    assert victim in proc.stderr and "channel 1 spacing" in proc.stderr and "differs from channel 0" in proc.stderr


# ------------------------------------------------------------------------------------------------ add / --check
def test_add_unlabeled_and_check_refuse_nan_scans(copied, tmp_path):
    env, raw, pp = copied
    src = tmp_path / "new_scans"
    src.mkdir()
    good = _unlabeled_files(raw)[0]
    shutil.copyfile(good, src / "fresh1.nii.gz")
    shutil.copyfile(good, src / "fresh2.nii.gz")
    _rewrite(str(src / "fresh2.nii.gz"), lambda a: a.__setitem__((0, 0, slice(0, 4)), np.nan))
    before = sorted(os.listdir(os.path.join(raw, "imagesUnlabeled")))
    dj_before = open(os.path.join(raw, "dataset.json")).read()
    proc = run_cli(["nnUNetv2_semisup_add_unlabeled", "-d", COPY_ID, "-i", src], env, expect_ok=False)
    assert proc.returncode != 0
    assert "fresh2.nii.gz" in proc.stderr and "4 NaN voxel(s)" in proc.stderr and "Nothing was added" in proc.stderr
    assert sorted(os.listdir(os.path.join(raw, "imagesUnlabeled"))) == before  # all or nothing: fresh1 not added
    assert open(os.path.join(raw, "dataset.json")).read() == dj_before
    # a NaN scan copied in by hand is caught by convert_own --check, which then leaves dataset.json alone
    bad = _unlabeled_files(raw)[3]
    _rewrite(bad, lambda a: a.__setitem__((0, 1, slice(0, 5)), np.nan))
    proc = run_cli(["nnUNetv2_semisup_convert_own", "--check", "-d", COPY_ID], env, expect_ok=False)
    assert proc.returncode != 0 and bad in proc.stderr and "5 NaN voxel(s)" in proc.stderr
    assert open(os.path.join(raw, "dataset.json")).read() == dj_before


# ------------------------------------------------------------------------------------------------ NaN loss
NAN_TRAINER = '''
import torch
from nnunetv2_semisup.methods.mean_teacher.variants import nnUNetTrainerMeanTeacher_short


class nnUNetTrainerMeanTeacher_nanLoss(nnUNetTrainerMeanTeacher_short):
    """Test only: the labeled input of epoch 1, iteration 3 is NaN, so the supervised loss is NaN."""

    def train_step(self, batch):
        if self.current_epoch == 1 and self.dataloader_train.iteration == 3:
            batch["data"] = torch.full_like(batch["data"], float("nan"))
        return super().train_step(batch)
'''


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(copied, tmp_path):
    env, raw, pp = copied
    ext = tmp_path / "ext_trainers"
    ext.mkdir()
    (ext / "nan_trainer.py").write_text(textwrap.dedent(NAN_TRAINER))
    env = {**env, "nnUNet_extTrainer": env["nnUNet_extTrainer"] + os.pathsep + str(ext),
           "nnUNet_semisup_short_epochs": "3", "nnUNet_semisup_short_iterations": "4",
           "nnUNet_semisup_short_val_iterations": "1"}
    proc = run_cli(["nnUNetv2_train", COPY_ID, "3d_fullres", "all", "-tr", "nnUNetTrainerMeanTeacher_nanLoss",
                    "-device", "cpu"], env, expect_ok=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "non-finite training loss" in err and "epoch 1, iteration 3 of 4" in err, err[-3000:]
    assert "sup=nan" in err
    out = os.path.join(env["nnUNet_results"], COPY_NAME, "nnUNetTrainerMeanTeacher_nanLoss__nnUNetPlans__3d_fullres",
                       "fold_all")
    import torch
    ckpt = torch.load(os.path.join(out, "checkpoint_latest.pth"), map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 1  # written after epoch 0, not overwritten by the failing epoch
    assert all(torch.isfinite(v).all() for v in ckpt["network_weights"].values())
    assert not os.path.exists(os.path.join(out, "checkpoint_final.pth"))


# ------------------------------------------------------------------------------------------------ broken files
def test_truncated_preprocessed_case_is_named_and_redone(copied):
    env, raw, pp = copied
    out = os.path.join(pp, UNLABELED_PP)
    data_files = sorted(os.path.join(out, f) for f in os.listdir(out)
                        if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))
    intact = {f: open(f, "rb").read() for f in data_files}
    for f in data_files:  # an interrupted copy of every case, so the first unlabeled patch drawn hits one
        with open(f, "r+b") as fh:
            fh.truncate(len(intact[f]) // 3)
    env = {**env, "nnUNet_semisup_short_epochs": "1", "nnUNet_semisup_short_iterations": "2"}
    proc = run_cli(["nnUNetv2_train", COPY_ID, "3d_fullres", "all", "-tr", "nnUNetTrainerMeanTeacher_short",
                    "-device", "cpu"], env, expect_ok=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "cannot be read" in err and any(f in err for f in data_files), err[-3000:]
    assert f"nnUNetv2_semisup_preprocess -d {COPY_NAME} -c 3d_fullres" in err
    # a normal re-run (no --overwrite) finds the unreadable cases and preprocesses them again
    proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", COPY_ID, "-c", "3d_fullres", "-np", 1], env)
    n = len(data_files)
    assert f"{n} unusable removed" in proc.stdout and f"{n} to preprocess" in proc.stdout, proc.stdout
    assert all(open(f, "rb").read() == intact[f] for f in data_files)


def test_preprocess_refuses_a_label_value_missing_from_dataset_json(copied):
    """Planned without --verify_dataset_integrity, a labeled case with an undeclared label value would crash the
    semi-supervised losses deep in epoch 0; the unlabeled preprocessing names the case and the value instead."""
    env, raw, pp = copied
    label = os.path.join(raw, "labelsTr", "syn_002.nii.gz")
    img = sitk.ReadImage(label)
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, :2] = 7
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, label)
    proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", COPY_ID, "-c", "3d_fullres", "-np", 1, "--overwrite"], env,
                   expect_ok=False)
    assert proc.returncode == 1
    assert "Labeled case 'syn_002'" in proc.stderr and "label value(s) [7]" in proc.stderr
    assert "--verify_dataset_integrity" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------ stale state
def _preprocess(env):
    return run_cli(["nnUNetv2_semisup_preprocess", "-d", COPY_ID, "-c", "3d_fullres", "-np", 1], env)


def test_missing_state_file_never_vouches_for_stale_cases(copied):
    """Each unlabeled case carries the fingerprint of the plans it was made with: when the folder's state file is
    lost, cases of the current plans stay done, cases of a re-plan (same folder name) are made again, never used."""
    import pickle
    env, raw, pp = copied
    out = os.path.join(pp, UNLABELED_PP)
    state = os.path.join(out, "semisup_preprocess.json")
    cases = sorted(f[:-5] for f in os.listdir(out) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))
    n = len(cases)
    # 1. state lost, plans unchanged: every case vouches for itself, nothing is redone, the state file comes back
    saved_state = open(state).read()
    os.remove(state)
    proc = _preprocess(env)
    assert f"{n} already done, 0 to preprocess" in proc.stdout, proc.stdout
    assert json.loads(open(state).read())["sha256"] == json.loads(saved_state)["sha256"]
    # 2. a re-plan to another spacing (the folder keeps its name), and the state file lost: every case is redone
    import blosc2
    before = blosc2.open(urlpath=os.path.join(out, cases[0] + ".b2nd"), mode="r").shape
    plans_file = os.path.join(pp, "nnUNetPlans.json")
    plans = json.load(open(plans_file))
    spacing = plans["configurations"]["3d_fullres"]["spacing"]
    plans["configurations"]["3d_fullres"]["spacing"] = [s * 2 for s in spacing]
    json.dump(plans, open(plans_file, "w"), indent=2)
    os.remove(state)
    proc = _preprocess(env)
    assert proc.stdout.count("preprocessed with other plans than the current ones") == n, proc.stdout
    assert f"0 already done ({n} unusable removed), {n} to preprocess" in proc.stdout, proc.stdout
    after = blosc2.open(urlpath=os.path.join(out, cases[0] + ".b2nd"), mode="r").shape
    assert after != before and after[1] < before[1]  # coarser spacing, fewer voxels
    # 3. a case written before cases carried a fingerprint, with no state file: nothing vouches for it -> redone
    pkl = os.path.join(out, cases[1] + ".pkl")
    props = pickle.load(open(pkl, "rb"))
    del props["semisup_preprocessing_sha256"]
    pickle.dump(props, open(pkl, "wb"))
    os.remove(state)
    proc = _preprocess(env)
    assert f"{cases[1]}: the preprocessed case is not usable (it records no plans fingerprint" in proc.stdout
    assert f"{n - 1} already done (1 unusable removed), 1 to preprocess" in proc.stdout, proc.stdout
    # ... but with the state file present, such an older case is trusted (no mass re-run after an upgrade)
    props = pickle.load(open(pkl, "rb"))
    del props["semisup_preprocessing_sha256"]
    pickle.dump(props, open(pkl, "wb"))
    proc = _preprocess(env)
    assert f"{n} already done, 0 to preprocess" in proc.stdout, proc.stdout


# ------------------------------------------------------------------------------------------------ leak guard
def test_preprocess_refuses_a_renamed_copy_of_a_test_scan(copied):
    """A test scan copied into imagesUnlabeled under another name would train the model on its own test set: the
    voxels give it away; nothing of it is written; --allow-copies is the documented way through."""
    env, raw, pp = copied
    test_scan = sorted(glob.glob(os.path.join(raw, "imagesTs", "*_0000.nii.gz")))[0]
    copy = os.path.join(raw, "imagesUnlabeled", "innocent_0000.nii.gz")
    img = sitk.ReadImage(test_scan)
    img.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # also flipped: the same voxels still match
    sitk.WriteImage(img, copy)
    out = os.path.join(pp, UNLABELED_PP)
    proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", COPY_ID, "-c", "3d_fullres", "-np", 1], env,
                   expect_ok=False)
    name = os.path.basename(test_scan)[: -len("_0000.nii.gz")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"unlabeled case 'innocent' ({copy}) has the same voxels as imagesTs/{name}" in proc.stderr, proc.stderr
    assert "--transductive" in proc.stderr
    # the flip is named too (a warning: stock nnU-Net uses scans as stored)
    assert "WARNING: 1 unlabeled scan(s) are stored in another orientation than the labeled cases' LPS: " \
           "innocent (RPS)" in proc.stdout, proc.stdout
    assert not [f for f in os.listdir(out) if f.startswith("innocent") or f.startswith(".tmp")]
    proc = run_cli(["nnUNetv2_semisup_preprocess", "-d", COPY_ID, "-c", "3d_fullres", "-np", 1, "--allow-copies"],
                   env)
    assert os.path.isfile(os.path.join(out, "innocent.b2nd"))
