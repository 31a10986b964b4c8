"""End-to-end through the real nnU-Net CLI: Mean Teacher training, stock prediction, and exact resume."""
import os
import shutil
import subprocess
import time

import numpy as np
import SimpleITK as sitk
import torch

from conftest import bin_path, run_cli

TRAINER = "nnUNetTrainerMeanTeacher_short"


def _env(ds, tmp_path, epochs, iterations):
    env = dict(ds.env)
    env.update({"nnUNet_results": str(tmp_path / "results"), "nnUNet_semisup_short_epochs": str(epochs),
                "nnUNet_semisup_short_iterations": str(iterations)})
    return env


def _fold_dir(env, ds):
    return os.path.join(env["nnUNet_results"], ds.name, f"{TRAINER}__nnUNetPlans__3d_fullres", "fold_all")


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_mean_teacher_trains_and_stock_predict_works(planned_dataset, tmp_path):
    ds = planned_dataset
    # nnU-Net first predicts all-background for a stochastic 25-200 iterations on this tiny data: seed the run
    env = _env(ds, tmp_path, epochs=30, iterations=10)
    env["nnUNet_semisup_seed"] = "12345"
    env["nnUNet_semisup_short_skip_validation"] = "0"  # exercise nnU-Net's final validation with our trainer
    run_cli(["nnUNetv2_train", ds.dataset_id, "3d_fullres", "all", "-tr", TRAINER, "-device", "cpu"], env)
    fold = _fold_dir(env, ds)
    assert os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    assert os.path.isfile(os.path.join(fold, "progress.png"))
    log = open([os.path.join(fold, f) for f in os.listdir(fold) if f.startswith("training_log")][0]).read()
    assert "loss terms: sup=" in log and "Batch composition: 2 labeled + 2 unlabeled" in log  # B + B (UA-MT)
    ckpt = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    for key in ("loss_sup", "loss_cons", "batch_labeled", "batch_unlabeled"):
        assert len(ckpt["logging"][key]) == 30
    assert "mt_teacher_weights" in ckpt and ckpt["semisup_state"]["method"]["mt_global_step"] == 300
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))

    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", os.path.join(ds.raw_folder, "imagesTs"), "-o", out, "-d", ds.dataset_id,
             "-c", "3d_fullres", "-f", "all", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", 1,
             "-nps", 1], env)
    dices = []
    for f in sorted(os.listdir(os.path.join(ds.raw_folder, "labelsTs"))):
        ref = sitk.ReadImage(os.path.join(ds.raw_folder, "labelsTs", f))
        pred = sitk.ReadImage(str(out / f))
        assert pred.GetSize() == ref.GetSize()
        assert np.allclose(pred.GetSpacing(), ref.GetSpacing()) and np.allclose(pred.GetOrigin(), ref.GetOrigin())
        assert np.allclose(pred.GetDirection(), ref.GetDirection())
        r, p = sitk.GetArrayFromImage(ref), sitk.GetArrayFromImage(pred)
        assert set(np.unique(p)) <= {0, 1, 2, 3}
        dices.append(_dice(r == 1, p == 1))
    # trivial floors: all-background scores 0, all-organ about 0.1 (the organ is ~5 % of the volume)
    assert np.mean(dices) > 0.3, dices

    # stock --val (re-run of the final validation) and predict_from_modelfolder find the plugin trainer too
    shutil.rmtree(os.path.join(fold, "validation"))
    run_cli(["nnUNetv2_train", ds.dataset_id, "3d_fullres", "all", "-tr", TRAINER, "-device", "cpu", "--val"], env)
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))
    out2 = tmp_path / "pred_modelfolder"
    run_cli(["nnUNetv2_predict_from_modelfolder", "-i", os.path.join(ds.raw_folder, "imagesTs"), "-o", out2,
             "-m", os.path.dirname(fold), "-f", "all", "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1], env)
    for f in sorted(os.listdir(os.path.join(ds.raw_folder, "labelsTs"))):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out2 / f))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(out / f))))


def test_resume_with_c_restores_epoch_teacher_and_optimizer(planned_dataset, tmp_path):
    from nnunetv2.run.run_training import get_trainer_from_args
    ds = planned_dataset
    env = _env(ds, tmp_path, epochs=4, iterations=3)
    fold = _fold_dir(env, ds)
    latest = os.path.join(fold, "checkpoint_latest.pth")
    cmd = [bin_path("nnUNetv2_train"), str(ds.dataset_id), "3d_fullres", "all", "-tr", TRAINER, "-device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not os.path.isfile(latest) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
    finally:
        proc.kill()  # interrupt the run mid-training
        proc.wait()
    assert os.path.isfile(latest) and not os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    saved = torch.load(latest, map_location="cpu", weights_only=False)
    assert 1 <= saved["current_epoch"] < 4

    os.environ["nnUNet_results"] = env["nnUNet_results"]
    try:
        trainer = get_trainer_from_args(str(ds.dataset_id), "3d_fullres", "all", TRAINER, device=torch.device("cpu"))
        trainer.load_checkpoint(latest)
    finally:
        os.environ["nnUNet_results"] = ds.env["nnUNet_results"]
    assert trainer.current_epoch == saved["current_epoch"]
    assert trainer.mt_global_step == saved["semisup_state"]["method"]["mt_global_step"] == 3 * saved["current_epoch"]
    for k, v in trainer.teacher.state_dict().items():
        assert torch.equal(v, saved["mt_teacher_weights"][k]), k
    for k, v in trainer.network.state_dict().items():
        assert torch.equal(v, saved["network_weights"][k]), k
    opt = trainer.optimizer.state_dict()
    assert opt["param_groups"][0]["lr"] == saved["optimizer_state"]["param_groups"][0]["lr"]
    for idx, state in saved["optimizer_state"]["state"].items():
        assert torch.equal(opt["state"][idx]["momentum_buffer"], state["momentum_buffer"])
    assert trainer.logger.get_value("loss_cons", None) == saved["logging"]["loss_cons"]

    run_cli(["nnUNetv2_train", ds.dataset_id, "3d_fullres", "all", "-tr", TRAINER, "-device", "cpu", "--c"], env)
    final = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 4
    assert final["semisup_state"]["method"]["mt_global_step"] == 4 * 3  # no step lost or repeated
    assert len(final["logging"]["loss_sup"]) == 4 and len(final["logging"]["train_losses"]) == 4


def test_short_stop_after_ends_the_run_like_a_kill_and_c_finishes_it(planned_dataset, tmp_path):
    """``nnUNet_semisup_short_stop_after=K`` (smoke runs of ``--c``, benchmarks/gpu_check.py): the process exits 0
    after epoch K with checkpoint_latest.pth of epoch K and no final checkpoint; ``--c`` trains the rest."""
    ds = planned_dataset
    env = _env(ds, tmp_path, epochs=3, iterations=2)
    fold = _fold_dir(env, ds)
    cmd = ["nnUNetv2_train", ds.dataset_id, "3d_fullres", "all", "-tr", TRAINER, "-device", "cpu"]
    proc = run_cli(cmd, {**env, "nnUNet_semisup_short_stop_after": "2", "nnUNet_semisup_short_keep_every": "2"})
    assert "Stopping after epoch 2" in proc.stdout
    assert not os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    latest = torch.load(os.path.join(fold, "checkpoint_latest.pth"), map_location="cpu", weights_only=False)
    assert latest["current_epoch"] == 2
    run_cli(cmd + ["--c"], {**env, "nnUNet_semisup_short_keep_every": "1"})
    final = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3 and len(final["logging"]["train_losses"]) == 3
    # nnUNet_semisup_short_keep_every=K (benchmarks/pseudo_label_quality.py): a kept copy every K epochs, holding
    # the weights after that epoch; epoch 1 was not a multiple of 2 in the first run, epoch 3 is one of 1 in --c's
    kept = sorted(f for f in os.listdir(fold) if f.startswith("checkpoint_epoch"))
    assert kept == ["checkpoint_epoch2.pth", "checkpoint_epoch3.pth"]
    for name, reference in (("checkpoint_epoch2.pth", latest), ("checkpoint_epoch3.pth", final)):
        copy = torch.load(os.path.join(fold, name), map_location="cpu", weights_only=False)
        assert copy["current_epoch"] == reference["current_epoch"]
        for k, v in reference["network_weights"].items():
            assert torch.equal(copy["network_weights"][k], v), (name, k)
