"""CML trainer tests on the planned synthetic dataset: docs/spec/cml.md §5 properties 10, 11, 13, 14, 16 and the
end-to-end run through the real CLI (train the short variant on CPU, resume with --c, stock predict)."""
import math
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import DATASET_ID, run_cli

from nnunetv2_semisup.methods.cml import trainer as cml_module
from nnunetv2_semisup.methods.cml.variants import (nnUNetTrainerCML, nnUNetTrainerCML_hetero,
                                                    nnUNetTrainerCML_identical, nnUNetTrainerCML_paper)
from nnunetv2_semisup.methods.cml.trainer import pretrain_epochs_for
from nnunetv2_semisup.methods.cml.cutmix import ds_targets

SHORT = "nnUNetTrainerCML_short"


def make_trainer(name: str = SHORT):
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(str(DATASET_ID), "3d_fullres", "all", name, device=torch.device("cpu"))


def fake_batch(trainer, b: int = 2, with_unlabeled: bool = True, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    patch = tuple(trainer.configuration_manager.patch_size)
    y = torch.randint(0, 4, (b, 1) + patch, generator=g).to(torch.int16)
    batch = {"data": torch.randn((b, 1) + patch, generator=g),
             "target": ds_targets(y, trainer._get_deep_supervision_scales()), "b_l": b, "b_u": 0}
    if with_unlabeled:
        batch["unlabeled"] = {"data": torch.randn((b, 1) + patch, generator=g)}
        batch["b_u"] = b
    return batch


# ---------------------------------------------------------------- 11. networks from the plans
def test_subnets_independent_and_hetero_shapes(planned_dataset):
    t = make_trainer()
    args = (t.plans_manager, t.configuration_manager, 1, t.label_manager.num_segmentation_heads, True)
    torch.manual_seed(0)
    dual = nnUNetTrainerCML_identical.build_network_architecture(*args)
    p1, p2 = dict(dual.net1.named_parameters()), dict(dual.net2.named_parameters())
    assert p1.keys() == p2.keys()
    assert not {p.data_ptr() for p in p1.values()} & {p.data_ptr() for p in p2.values()}
    conv_weights = [k for k in p1 if k.endswith("weight") and p1[k].ndim == 5]
    assert conv_weights and all(not torch.equal(p1[k], p2[k]) for k in conv_weights)

    assert all(any(isinstance(m, torch.nn.ConvTranspose3d) for m in net.modules()) for net in (dual.net1, dual.net2))
    hetero = nnUNetTrainerCML_hetero.build_network_architecture(*args)
    default = nnUNetTrainerCML.build_network_architecture(*args)
    for net in (hetero, default):  # the default is the reference's heterogeneous pair
        assert any(isinstance(m, torch.nn.ConvTranspose3d) for m in net.net1.modules())
        assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in net.net2.modules())
    assert default.state_dict().keys() == hetero.state_dict().keys()
    x = torch.randn((1, 1) + tuple(t.configuration_manager.patch_size))
    with torch.no_grad():
        o1, o2, f1, f2 = hetero(x, return_all=True)
    assert [o.shape for o in o1] == [o.shape for o in o2] and f1.shape == f2.shape


# ---------------------------------------------------------------- 13./14. stages and batch composition
def test_batch_composition_and_stages(planned_dataset):
    t = make_trainer()
    t.initialize()
    e_pre = t.cml_pretrain_epochs
    assert e_pre == max(1, math.floor(0.12 * t.num_epochs + 0.5)) == 1  # 4 epochs: one of pretraining
    t.batch_size = 3  # odd planned size -> pairs
    t.current_epoch = e_pre - 1
    assert t.get_batch_composition() == (2, 0)  # pretraining: the unlabeled stream stays idle
    t.current_epoch = e_pre
    assert t.get_batch_composition() == (2, 2)
    t.batch_size = 1
    assert t.get_batch_composition() == (2, 2)
    t.batch_size_override = t.batch_size = 3  # asked for (not planned): refused instead of rounded
    with pytest.raises(ValueError, match="batch_size_override=3 is invalid for CML"):
        t.get_batch_composition()
    t.batch_size_override = None
    t.cml_lambda1 = t.cml_lambda2 = 0.0  # _supOnly: no unlabeled patches at all
    assert t.get_batch_composition() == (2, 0)


def test_train_step_terms_and_pseudo_label_pass(planned_dataset, monkeypatch):
    t = make_trainer()
    t.initialize()
    t.set_deep_supervision_enabled(True)
    calls = []
    t.network.register_forward_hook(lambda m, inp, out: calls.append((inp[0].detach().clone(),
                                                                       torch.is_grad_enabled())))
    spy = []
    real = cml_module.cml_pseudo_labels

    def spy_pseudo_labels(logits, *a, **k):
        pl, r = real(logits, *a, **k)
        spy.append((logits.requires_grad, pl.requires_grad, tuple(logits.shape)))
        return pl, r

    monkeypatch.setattr(cml_module, "cml_pseudo_labels", spy_pseudo_labels)

    # pretraining: unlabeled data (even if present) is ignored, no unlabeled terms
    t.cml_stage = "pretrain"
    batch = fake_batch(t)
    out = t.train_step(batch)
    assert len(calls) == 1 and calls[0][0].shape[0] == 1 and not spy  # one forward on the B_l/2 mixed pair
    assert set(out) == {"loss", "sup_l1", "sup_l2", "dis_l", "stage"} and out["stage"] == 0.0
    assert np.isfinite(out["loss"]) and 0 <= out["dis_l"] <= 4
    assert t.cml_selftrain_iterations == 0

    # self-training: pseudo-labels from the unmixed unlabeled batch under no_grad, then one forward of both pairs
    calls.clear()
    t.cml_stage = "selftrain"
    batch = fake_batch(t, seed=1)
    out = t.train_step(batch)
    assert len(calls) == 2
    assert torch.equal(calls[0][0], batch["unlabeled"]["data"]) and calls[0][1] is False
    assert calls[1][0].shape[0] == 2 and calls[1][1] is True
    assert len(spy) == 2 and all(not lg and not pl for lg, pl, _ in spy)
    assert spy[0][2][0] == 2 and spy[0][2][2:] == tuple(t.configuration_manager.patch_size)  # full resolution
    assert set(out) == {"loss", "sup_l1", "sup_l2", "sup_u1", "sup_u2", "dis_l", "dis_u", "stage", "lcc_removed"}
    expected = (out["sup_l1"] + out["sup_l2"] + out["sup_u1"] + out["sup_u2"] + 0.2 * (out["dis_l"] + out["dis_u"]))
    assert out["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert t.cml_selftrain_iterations == 1 and t.cml_mask_draws == 3


def test_no_unsup_variant_self_training_step(planned_dataset, monkeypatch):
    """_noUnsup (λ1 = 0): self-training mixes unlabeled pairs for the discrepancy only; no pseudo-label pass."""
    t = make_trainer("nnUNetTrainerCML_noUnsup")
    assert (t.cml_lambda1, t.cml_lambda2) == (0.0, 0.2)
    t.initialize()
    t.set_deep_supervision_enabled(True)
    monkeypatch.setattr(cml_module, "cml_pseudo_labels", lambda *a, **k: pytest.fail("pseudo-labels computed"))
    calls = []
    t.network.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    t.cml_stage = "selftrain"
    out = t.train_step(fake_batch(t, seed=2))
    assert calls == [2]  # one forward: the labeled and the unlabeled mixed pair
    assert set(out) == {"loss", "sup_l1", "sup_l2", "dis_l", "dis_u", "stage"}
    assert out["loss"] == pytest.approx(float(out["sup_l1"] + out["sup_l2"] + 0.2 * (out["dis_l"] + out["dis_u"])),
                                        rel=1e-5)


def test_architecture_switch_set_in_init_is_refused(planned_dataset):
    """cml_hetero is read by the static build_network_architecture at prediction time: an instance value in
    __init__ would train one architecture and predict with another."""
    t = make_trainer()
    t.cml_hetero = True
    with pytest.raises(ValueError, match="cml_hetero must be set as class attributes"):
        t.initialize()


def test_paper_variant_lr(planned_dataset):
    t = make_trainer("nnUNetTrainerCML_paper")
    assert (t.batch_size_override, t.num_epochs, t.num_iterations_per_epoch, t.grad_clip) == (4, 85, 200, None)
    t.initialize()
    assert t.cml_pretrain_epochs == 10
    t.current_epoch = 10
    assert t.batch_size == 4 and t.get_batch_composition() == (4, 4)  # LA reference: 4 labeled + 4 unlabeled
    opt = t.optimizer.param_groups[0]
    assert (opt["momentum"], opt["nesterov"], opt["weight_decay"]) == (0.9, False, 1e-4)
    t.cml_stage = "pretrain"
    assert t.cml_iteration_lr() == 0.01
    t.cml_stage = "selftrain"
    for k, lr in ((0, 1e-2), (2499, 1e-2), (2500, 1e-3), (5000, 1e-4)):
        t.cml_selftrain_iterations = k
        assert t.cml_iteration_lr() == pytest.approx(lr)
    t.lr_scheduler.step(t.num_epochs - 1)
    assert opt["lr"] == pytest.approx(1e-4)
    assert isinstance(t, nnUNetTrainerCML_paper)


def test_paper_variant_in_2d_is_the_acdc_script(planned_dataset):
    """docs/spec/cml.md §1.1, ACDC column: batch 12 + 12, 10000 + 30000 iterations, constant LR 0.01, λ1/λ2/β
    0.5/0.1/1/2."""
    from nnunetv2.run.run_training import get_trainer_from_args
    t = get_trainer_from_args(str(DATASET_ID), "2d", "all", "nnUNetTrainerCML_paper", device=torch.device("cpu"))
    assert (t.batch_size_override, t.num_epochs * t.num_iterations_per_epoch, t.grad_clip) == (12, 40000, None)
    assert round(t.cml_pretrain_fraction * t.num_epochs) * t.num_iterations_per_epoch == 10000
    assert (t.cml_lambda1, t.cml_lambda2, t.cml_beta) == (0.5, 0.1, 0.5)
    t.cml_stage = "selftrain"
    for k in (0, 2500, 29999):
        t.cml_selftrain_iterations = k
        assert t.cml_iteration_lr() == 0.01


def test_paper_short_spreads_the_references_six_lr_levels_over_its_selftraining(planned_dataset, monkeypatch):
    """Reference: 15000 self-training iterations at 0.01·0.1^⌊k/2500⌋, i.e. six levels 1e-2 … 1e-7. The benchmark's
    80 × 50 schedule pretrains round(0.12 · 80) = 10 epochs, so 70 · 50 = 3500 self-training iterations hold six
    levels of ⌈3500 / 6⌉ = 584 (the last one 3500 − 5 · 584 = 580 long)."""
    monkeypatch.setenv("nnUNet_semisup_short_epochs", "80")
    monkeypatch.setenv("nnUNet_semisup_short_iterations", "50")
    t = make_trainer("nnUNetTrainerCML_paper_short")
    t.initialize()
    assert (t.num_epochs, t.num_iterations_per_epoch, t.cml_pretrain_epochs, t.batch_size) == (80, 50, 10, 4)
    assert t.cml_paper_decay_every == 584
    opt = t.optimizer.param_groups[0]
    assert (opt["momentum"], opt["nesterov"], opt["weight_decay"], t.grad_clip) == (0.9, False, 1e-4, None)
    t.cml_stage = "selftrain"
    for k, lr in ((0, 1e-2), (583, 1e-2), (584, 1e-3), (2919, 1e-6), (2920, 1e-7), (3499, 1e-7)):
        t.cml_selftrain_iterations = k
        assert t.cml_iteration_lr() == pytest.approx(lr), k


# ---------------------------------------------------------------- end to end: train, restore, resume, predict
@pytest.fixture(scope="module")
def cml_run(planned_dataset, tmp_path_factory):
    env = dict(planned_dataset.env, nnUNet_semisup_short_epochs="2", nnUNet_semisup_short_iterations="2")
    run_cli(["nnUNetv2_train", DATASET_ID, "3d_fullres", "all", "-tr", SHORT, "-device", "cpu"], env)
    folder = os.path.join(planned_dataset.results, planned_dataset.name, f"{SHORT}__nnUNetPlans__3d_fullres",
                          "fold_all")
    first = str(tmp_path_factory.mktemp("cml") / "after_2_epochs.pth")
    shutil.copy(os.path.join(folder, "checkpoint_final.pth"), first)
    return planned_dataset, folder, first


def test_checkpoint_restores_both_subnets_stage_and_optimizer(cml_run):
    ds, folder, first = cml_run
    ckpt = torch.load(first, map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == SHORT and ckpt["current_epoch"] == 2
    assert ckpt["semisup_state"]["method"]["stage"] == "selftrain" and ckpt["semisup_state"]["method"]["pretrain_epochs"] == 1
    assert ckpt["semisup_state"]["method"]["selftrain_iterations"] == 2
    weights = ckpt["network_weights"]
    assert any(k.startswith("net1.") for k in weights) and any(k.startswith("net2.") for k in weights)
    # property 13 through the real loop: epoch 0 pretraining without unlabeled patches, epoch 1 self-training
    log = ckpt["logging"]
    assert log["batch_unlabeled"][:2] == [0, 2] and log["monitor_stage"][:2] == [0.0, 1.0]
    assert np.isnan(log["loss_sup_u1"][0]) and np.isfinite(log["loss_sup_u1"][1])

    t = make_trainer()
    t.load_checkpoint(first)
    state = t.network.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    opt, ref = t.optimizer.state_dict(), ckpt["optimizer_state"]
    n_params = len(list(t.network.parameters()))
    assert n_params == len(opt["param_groups"][0]["params"]) == len(ref["param_groups"][0]["params"])
    assert n_params == 2 * len(list(t.network.net1.parameters()))  # one optimiser over both subnets
    # momentum buffers exist for every parameter that got a gradient (not the DS head of weight 0)
    assert opt["state"].keys() == ref["state"].keys() and len(ref["state"]) >= n_params - 4
    for i, s in ref["state"].items():
        assert torch.equal(opt["state"][i]["momentum_buffer"], s["momentum_buffer"])
    assert any(torch.count_nonzero(s["momentum_buffer"]) for s in ref["state"].values())
    assert opt["param_groups"][0]["lr"] == ref["param_groups"][0]["lr"]
    assert (t.cml_stage, t.cml_pretrain_epochs, t.cml_selftrain_iterations, t.cml_mask_draws) == (
        "selftrain", 1, 2, ckpt["semisup_state"]["method"]["mask_draws"])
    assert t.current_epoch == 2 and t.cml_stage_for_epoch(t.current_epoch) == "selftrain"


def test_resume_from_pretraining_keeps_the_saved_switch_point(cml_run, tmp_path):
    """A checkpoint written during pretraining resumes in pretraining, and the stage switch comes from the
    checkpoint (fixed at the first start), not from recomputing it with the current settings."""
    ds, folder, first = cml_run
    ckpt = torch.load(first, map_location="cpu", weights_only=False)
    ckpt["current_epoch"] = 1
    ckpt["semisup_state"]["method"].update(stage="pretrain", pretrain_epochs=3, selftrain_iterations=0)
    edited = str(tmp_path / "pretraining.pth")
    torch.save(ckpt, edited)
    t = make_trainer()
    t.load_checkpoint(edited)
    assert pretrain_epochs_for(t.num_epochs, t.cml_pretrain_fraction) != 3  # recomputing would differ
    assert (t.current_epoch, t.cml_pretrain_epochs, t.cml_stage) == (1, 3, "pretrain")
    stages = []
    for e in (1, 2, 3):
        t.current_epoch = e
        stages.append((t.cml_stage_for_epoch(e), t.get_batch_composition()[1]))
    assert stages == [("pretrain", 0), ("pretrain", 0), ("selftrain", 2)]


def test_resume_with_c_and_stock_predict(cml_run, tmp_path):
    ds, folder, first = cml_run
    env = dict(ds.env, nnUNet_semisup_short_epochs="3", nnUNet_semisup_short_iterations="2")
    run_cli(["nnUNetv2_train", DATASET_ID, "3d_fullres", "all", "-tr", SHORT, "-device", "cpu", "--c"], env)
    ckpt = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 3
    # resumed in the self-training stage; counters continued from the checkpoint
    assert ckpt["semisup_state"]["method"]["pretrain_epochs"] == 1 and ckpt["semisup_state"]["method"]["selftrain_iterations"] == 4
    assert ckpt["logging"]["batch_unlabeled"] == [0, 2, 2]
    assert np.isfinite(ckpt["logging"]["loss_sup_u2"][2])

    # property 16: strict load into the wrapper that inference builds
    t = make_trainer()
    net = type(t).build_network_architecture(t.plans_manager, t.configuration_manager, 1,
                                             t.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    net.load_state_dict(ckpt["network_weights"], strict=True)

    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", os.path.join(ds.raw_folder, "imagesTs"), "-o", out, "-d", DATASET_ID,
             "-c", "3d_fullres", "-f", "all", "-tr", SHORT, "-device", "cpu", "--disable_tta", "-npp", 1,
             "-nps", 1], ds.env)
    images = sorted(os.listdir(os.path.join(ds.raw_folder, "imagesTs")))
    assert images
    for name in images:
        ref = sitk.ReadImage(os.path.join(ds.raw_folder, "imagesTs", name))
        pred = sitk.ReadImage(str(out / name.replace("_0000.nii.gz", ".nii.gz")))
        assert pred.GetSize() == ref.GetSize()
        assert np.allclose(pred.GetSpacing(), ref.GetSpacing()) and np.allclose(pred.GetOrigin(), ref.GetOrigin())
        assert np.allclose(pred.GetDirection(), ref.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}


def test_variant_attributes(planned_dataset):
    expected = {  # (λ1, λ2, l_w, β, pretrain fraction, hetero, lcc, batch override)
        "nnUNetTrainerCML": (1.0, 0.2, 1.0, 2 / 3, 0.12, True, True, None),
        "nnUNetTrainerCML_identical": (1.0, 0.2, 1.0, 2 / 3, 0.12, False, True, None),
        "nnUNetTrainerCML_hetero": (1.0, 0.2, 1.0, 2 / 3, 0.12, True, True, None),
        "nnUNetTrainerCML_noDis": (1.0, 0.0, 1.0, 2 / 3, 0.12, True, True, None),
        "nnUNetTrainerCML_noUnsup": (0.0, 0.2, 1.0, 2 / 3, 0.12, True, True, None),
        "nnUNetTrainerCML_supOnly": (0.0, 0.0, 1.0, 2 / 3, 0.12, True, True, None),
        "nnUNetTrainerCML_paper": (1.0, 0.2, 1.0, 2 / 3, 0.12, True, True, 4),
        "nnUNetTrainerCML_paper_short": (1.0, 0.2, 1.0, 2 / 3, 0.12, True, True, 4),
        "nnUNetTrainerCML_short": (1.0, 0.2, 1.0, 2 / 3, 0.12, True, True, None),
        "nnUNetTrainerCML_hetero_short": (1.0, 0.2, 1.0, 2 / 3, 0.12, True, True, None),
        "nnUNetTrainerCML_identical_short": (1.0, 0.2, 1.0, 2 / 3, 0.12, False, True, None),
    }
    for name, values in expected.items():
        t = make_trainer(name)
        got = (t.cml_lambda1, t.cml_lambda2, t.cml_labeled_weight, t.cml_beta, t.cml_pretrain_fraction,
               type(t).cml_hetero, t.cml_lcc, t.batch_size_override)
        assert got == values, name
        assert t.cml_binary_threshold == 0.5
        assert t.uses_unlabeled() == (name != "nnUNetTrainerCML_supOnly")
    default = make_trainer("nnUNetTrainerCML")
    assert (default.grad_clip, default.initial_lr, default.weight_decay) == (12.0, 1e-2, 3e-5)


def test_2d_configuration_gets_the_papers_acdc_recipe(planned_dataset):
    """Paper: ACDC (2D) λ1 = 0.5, λ2 = 0.1, β = 1/2; LA/BraTS (3D) 1, 0.2, 2/3. The configuration decides; a
    variant's own values still win (they are set after the base __init__)."""
    from nnunetv2.run.run_training import get_trainer_from_args
    for name, expected in (("nnUNetTrainerCML", (0.5, 0.1, 1 / 2)), ("nnUNetTrainerCML_noDis", (0.5, 0.0, 1 / 2)),
                           ("nnUNetTrainerCML_supOnly", (0.0, 0.0, 1 / 2))):
        t = get_trainer_from_args(str(DATASET_ID), "2d", "all", name, device=torch.device("cpu"))
        assert len(t.configuration_manager.patch_size) == 2
        assert (t.cml_lambda1, t.cml_lambda2, t.cml_beta) == expected, name
    t3 = make_trainer("nnUNetTrainerCML")
    assert (t3.cml_lambda1, t3.cml_lambda2, t3.cml_beta) == (1.0, 0.2, 2 / 3)
