"""M&N end to end through the real CLI (docs/spec/mn.md §5 properties 24, 25; 7 and 22 on a real run).

A tiny SegFormer is written with ``save_pretrained`` and loaded through ``nnUNet_semisup_segformer``;
``nnUNetTrainerMN_short`` trains on CPU (4 epochs: W = 1 warm-up, then 3D, 2D, 3D; T_3D = 3, T_2D = 2); the run is
killed after a checkpoint, resumed with ``--c`` and compared with the checkpoint it resumed from; stock
``nnUNetv2_predict`` then predicts the test images with the 3D network only.
"""
import math
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import bin_path, run_cli

from nnunetv2_semisup.methods.mn.segformer import SEGFORMER_ENV, save_tiny_segformer
from nnunetv2_semisup.methods.mn.schedule import (TRAIN_2D, TRAIN_3D, MNEpochPlan, PolySchedule, WarmupCosineSchedule)
from nnunetv2_semisup.training.semisup_base import unwrap

TRAINER = "nnUNetTrainerMN_short"
EPOCHS = 4
SHORT_ENV = {"nnUNet_semisup_short_epochs": str(EPOCHS), "nnUNet_semisup_short_iterations": "2",
             "nnUNet_semisup_short_val_iterations": "1"}


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def train_until_checkpoint(cmd, env, latest, min_epoch, timeout=900):
    """Start training, wait until checkpoint_latest.pth records ≥ min_epoch finished epochs, then kill the run
    (an interrupted job) and return the checkpoint it left."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    start, seen_mtime = time.time(), None
    try:
        while time.time() - start < timeout:
            if proc.poll() is not None:
                raise AssertionError(f"training ended before it could be interrupted:\n{proc.stdout.read()[-6000:]}")
            if os.path.isfile(latest) and os.path.getmtime(latest) != seen_mtime:
                seen_mtime = os.path.getmtime(latest)
                if load(latest)["current_epoch"] >= min_epoch:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("no checkpoint in time")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return load(latest)


def expected_series(plan, B):
    """Per-epoch trained model, 3D lr, 2D lr and unlabeled share of an uninterrupted run (pure functions of the
    plan): share = ⌊5r⌋/5 with r = (η_peak − η)/η_peak of the trained model, η_peak its highest LR from own epoch W
    on (docs/mn.md, "Learning-rate-guided sampling")."""
    s3 = PolySchedule(0.01, plan.T_3d)
    s2 = WarmupCosineSchedule(1e-3, plan.T_2d, 1)
    W = plan.warmup_epochs
    peak = {TRAIN_3D: max(s3(e) for e in range(W, plan.T_3d)), TRAIN_2D: max(s2(e) for e in range(W, plan.T_2d))}
    codes, lr3, lr2, share = [], [], [], []
    last3 = last2 = None
    for e in range(plan.num_epochs):
        phase = plan.phase(e)
        if plan.trains(e, TRAIN_3D):
            last3 = s3(plan.own_epoch(e, TRAIN_3D))
        if plan.trains(e, TRAIN_2D):
            last2 = s2(plan.own_epoch(e, TRAIN_2D))
        codes.append({"warmup": 0, "2d": 2, "3d": 3}[phase])
        lr3.append(last3)
        lr2.append(last2)
        if phase == "warmup":
            share.append(0.0)
        else:
            lr = last3 if phase == TRAIN_3D else last2
            share.append(math.floor(5 * (peak[phase] - lr) / peak[phase] + 1e-9) / 5)
    return codes, lr3, lr2, share


@pytest.fixture(scope="module")
def tiny_segformer_dir(tmp_path_factory):
    return save_tiny_segformer(str(tmp_path_factory.mktemp("tiny_segformer_e2e")))


def test_train_resume_predict(planned_dataset, tiny_segformer_dir, tmp_path, monkeypatch):
    ds = planned_dataset
    env = dict(ds.env, **SHORT_ENV, **{SEGFORMER_ENV: tiny_segformer_dir})
    out = os.path.join(ds.results, ds.name, f"{TRAINER}__nnUNetPlans__3d_fullres", "fold_all")
    shutil.rmtree(out, ignore_errors=True)
    latest = os.path.join(out, "checkpoint_latest.pth")
    cmd = [bin_path("nnUNetv2_train"), str(ds.dataset_id), "3d_fullres", "all", "-tr", TRAINER, "-device", "cpu"]

    # ---- 1. train, interrupted after ≥ 2 epochs (warm-up + first 3D epoch done)
    ckpt = train_until_checkpoint(cmd, env, latest, min_epoch=2)
    saved = str(tmp_path / "resume_from.pth")
    shutil.copyfile(latest, saved)
    ckpt = load(saved)
    k = ckpt["current_epoch"]
    assert 2 <= k < EPOCHS
    plan = MNEpochPlan(EPOCHS, 1)
    state = ckpt["semisup_state"]["method"]
    assert state["epoch_3d"] == plan.own_epoch(k, TRAIN_3D) and state["epoch_2d"] == plan.own_epoch(k, TRAIN_2D)
    assert (state["W"], state["T_3d"], state["T_2d"]) == (1, 3, 2)
    assert state["scheduler_3d"]["num_steps"] == plan.own_epoch(k, TRAIN_3D)
    assert state["scheduler_2d"]["num_steps"] == plan.own_epoch(k, TRAIN_2D)
    assert state["segformer_checkpoint"] == tiny_segformer_dir
    assert state["segformer_config"]["hidden_sizes"] == [8, 16]
    lora_b = [v for n, v in ckpt["mn_segformer_state"].items() if ".lora_B." in n]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA was trained (B starts at 0)
    assert ckpt["semisup_state"]["method"]["pseudo_label_round"] == 1  # end of warm-up (+ 25 % of T_3D, same epoch)

    # ---- 2. property 24: a fresh trainer restores everything from that checkpoint; resuming rebuilds the 2D model
    # from the saved config and weights, so an unloadable nnUNet_semisup_segformer (offline, hub gone) is no problem
    gone = str(tmp_path / "segformer_no_longer_here")
    for key, value in {**SHORT_ENV, SEGFORMER_ENV: gone}.items():
        monkeypatch.setenv(key, value)
    from nnunetv2.run.run_training import get_trainer_from_args
    t = get_trainer_from_args(str(ds.dataset_id), "3d_fullres", "all", TRAINER, device=torch.device("cpu"))
    t.load_checkpoint(saved)
    restored = unwrap(t.network_2d).state_dict()
    assert restored.keys() == ckpt["mn_segformer_state"].keys()
    for name, value in ckpt["mn_segformer_state"].items():
        assert torch.equal(restored[name], value), name
    for opt, key in ((t.optimizer_2d, "mn_segformer_optimizer_state"), (t.optimizer, "optimizer_state")):
        sd, ref = opt.state_dict(), ckpt[key]
        assert sd["param_groups"] == ref["param_groups"] and sd["state"].keys() == ref["state"].keys()
        assert len(sd["state"]) > 0
        for i in ref["state"]:
            for name, value in ref["state"][i].items():
                assert torch.equal(torch.as_tensor(sd["state"][i][name]), torch.as_tensor(value)), (key, i, name)
    assert t.current_epoch == k
    assert t.lr_scheduler.state_dict() == state["scheduler_3d"] and t.mn_scheduler_2d.state_dict() == state[
        "scheduler_2d"]
    assert tuple(t.mn_composition) == tuple(state["composition"])
    assert t.mn_rng.bit_generator.state == state["uniform_rng"]
    assert t.mn_refreshes == [tuple(r) for r in state["refreshes"]]
    assert t.pseudo_label_round == 1 and t.class_locations_file == ckpt["semisup_state"]["method"]["class_locations_file"]
    assert os.path.isfile(t.class_locations_file)
    del t

    # ---- 3. resume to the end
    run_cli(["nnUNetv2_train", ds.dataset_id, "3d_fullres", "all", "-tr", TRAINER, "-device", "cpu", "--c"],
            dict(env, **{SEGFORMER_ENV: gone}))
    final = load(os.path.join(out, "checkpoint_final.pth"))
    fstate = final["semisup_state"]["method"]
    assert final["current_epoch"] == EPOCHS
    # property 7 on a real (interrupted + resumed) run: each scheduler stepped exactly T_m times
    assert fstate["scheduler_3d"]["num_steps"] == 3 and fstate["scheduler_2d"]["num_steps"] == 2
    # property 22: refreshes at the end of warm-up (epoch 1, with 25 %) and at own 3D epoch ⌈0.375·3⌉ = 2
    # (epoch 3, with 50 %); none repeated after resuming
    assert [tuple(r) for r in fstate["refreshes"]] == [("warmup", 1, 1), (0.25, 1, 1), (0.375, 3, 2), (0.5, 3, 2)]
    assert final["semisup_state"]["method"]["pseudo_label_round"] == 2
    for r in (1, 2):
        round_dir = os.path.join(out, "pseudo_labels", f"round_{r}")
        assert len([f for f in os.listdir(round_dir) if f.endswith(".nii.gz")]) == 6  # NIfTI per unlabeled case
        assert len([f for f in os.listdir(os.path.join(round_dir, "png")) if f.endswith(".png")]) == 6  # pictures
    # the resumed epochs have the same trained model, learning rates and b_u as an uninterrupted run
    log = final["logging"]
    codes, lr3, lr2, share = expected_series(plan, 2)
    assert log["mn_trained_model"] == codes == [0, 3, 2, 3]
    assert np.allclose(log["lrs"], lr3, rtol=1e-12) and np.allclose(log["lr_2d"], lr2, rtol=1e-12)
    # 3D own epoch 2 of T = 3 (W = 1): r = 1 − ((1 − 2/3)/(1 − 1/3))^0.9 = 0.464 → share 2/5; the others start
    # their co-training (r = 0)
    assert share == [0, 0, 0, 0.4]
    # loaders deliver (B − ⌊2s⌋, ⌈2s⌉); the 2 iterations use ⌊0.8⌋ − 0 = 0 and ⌊1.6⌋ − ⌊0.8⌋ = 1 unlabeled patches
    assert log["batch_labeled"] == [2, 2, 2, 2] and log["batch_unlabeled"] == [0, 0, 0, 1]
    assert np.allclose(log["mn_mean_batch_unlabeled"], [0, 0, 0, 0.5])  # last 3D epoch learns from the 2D teacher

    # ---- 4. property 25: network_weights is exactly the stock 3D network; stock predict works without SegFormer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_semisup.methods.mn.trainer import nnUNetTrainerMN
    pm = PlansManager(os.path.join(ds.preprocessed_folder, "nnUNetPlans.json"))
    net = nnUNetTrainerMN.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 4, False)
    result = net.load_state_dict(final["network_weights"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert not any("segformer" in key or "lora" in key for key in final["network_weights"])
    pred = tmp_path / "pred"
    # an unloadable SegFormer location: any attempt to build the 2D model at inference would fail
    predict_env = dict(env, **{SEGFORMER_ENV: str(tmp_path / "no_segformer_here")})
    run_cli(["nnUNetv2_predict", "-i", os.path.join(ds.raw_folder, "imagesTs"), "-o", pred, "-d", ds.dataset_id,
             "-c", "3d_fullres", "-f", "all", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", 1,
             "-nps", 1], predict_env)
    images = sorted(os.listdir(os.path.join(ds.raw_folder, "imagesTs")))
    assert len(images) == 3
    for name in images:
        img = sitk.ReadImage(os.path.join(ds.raw_folder, "imagesTs", name))
        seg = sitk.ReadImage(os.path.join(pred, name.replace("_0000.nii.gz", ".nii.gz")))
        assert seg.GetSize() == img.GetSize()
        assert np.allclose(seg.GetSpacing(), img.GetSpacing()) and np.allclose(seg.GetOrigin(), img.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2, 3}
