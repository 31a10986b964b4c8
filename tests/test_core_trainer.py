"""Trainer base and Mean Teacher: discovery through nnU-Net's finder, env errors, batch composition, the
unlabeled-data error, EMA formula, consistency schedule, teacher gradients, logging of loss terms."""
import math
import os

import numpy as np
import pytest
import torch

from conftest import run_cli
from nnunetv2_semisup.training.helpers import ema_update
from nnunetv2_semisup.methods.mean_teacher.trainer import mean_teacher_ema_decay, sigmoid_rampup, softmax_mse


def make_trainer(ds, name="nnUNetTrainerMeanTeacher_short", fold="all"):
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(str(ds.dataset_id), "3d_fullres", fold, name, device=torch.device("cpu"))


def test_plugin_trainers_found_by_nnunets_own_finder(nnunet_env):
    """Guards the pitfall where a torch/torchvision mismatch breaks every external lookup."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2_semisup.methods.mean_teacher.trainer import nnUNetTrainerMeanTeacher
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerMeanTeacher")
    assert cls is nnUNetTrainerMeanTeacher  # the real class, not a copy from the shim folder
    assert recursive_find_trainer_class_by_name("nnUNetTrainerSemiSup").__module__.startswith("nnunetv2_semisup")


def test_trainer_dir_command_and_check(nnunet_env):
    from nnunetv2_semisup.trainer_dir import TRAINER_DIR
    assert run_cli(["nnUNetv2_semisup_trainer_dir"], nnunet_env).stdout.strip() == TRAINER_DIR
    env = {k: v for k, v in nnunet_env.items() if k != "nnUNet_extTrainer"}
    proc = run_cli(["nnUNetv2_semisup_trainer_dir", "--check"], env, expect_ok=False)
    assert proc.returncode == 1 and "export nnUNet_extTrainer=$(nnUNetv2_semisup_trainer_dir)" in proc.stderr


def test_training_without_ext_trainer_env_says_what_to_export(planned_dataset, monkeypatch):
    trainer, other = make_trainer(planned_dataset), make_trainer(planned_dataset)
    monkeypatch.delenv("nnUNet_extTrainer")
    with pytest.raises(RuntimeError, match=r"export nnUNet_extTrainer=\$\(nnUNetv2_semisup_trainer_dir\)"):
        trainer.initialize()
    monkeypatch.setenv("nnUNet_extTrainer", "/somewhere/else")
    with pytest.raises(RuntimeError, match="does not contain the nnunetv2_semisup trainer folder"):
        other.initialize()


def test_training_before_unlabeled_preprocessing_names_the_command(planned_dataset, tmp_path):
    from nnunetv2_semisup.training.semisup_base import MissingUnlabeledDataError
    trainer = make_trainer(planned_dataset)
    trainer.initialize()
    trainer.unlabeled_preprocessed_folder = str(tmp_path / "missing")
    with pytest.raises(MissingUnlabeledDataError, match="nnUNetv2_semisup_preprocess -d Dataset990"):
        trainer.get_unlabeled_dataset()
    trainer.allow_labeled_only = True  # documented labeled-only path
    assert trainer.get_unlabeled_dataset() is None


def test_training_on_unlabeled_cases_of_older_plans_names_the_overwrite_command(planned_dataset, tmp_path):
    """Re-planning keeps the data_identifier (same folder name): the trainer compares the preprocessing
    fingerprint, so unlabeled cases preprocessed with other spacing/normalisation are refused."""
    import shutil
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2_semisup.training.semisup_base import MissingUnlabeledDataError
    trainer = make_trainer(planned_dataset)
    trainer.initialize()
    stale = str(tmp_path / "stale_unlabeled")
    shutil.copytree(trainer.unlabeled_preprocessed_folder, stale)
    trainer.unlabeled_preprocessed_folder = stale
    assert trainer.get_unlabeled_dataset() is not None  # identical copy: accepted
    trainer.configuration_manager.configuration["batch_size"] = 7  # network/batch changes do not matter
    trainer.configuration_manager.configuration["patch_size"] = [8, 8, 8]
    assert trainer.get_unlabeled_dataset() is not None
    state = load_json(os.path.join(stale, "semisup_preprocess.json"))
    save_json(dict(state, sha256="0" * 64), os.path.join(stale, "semisup_preprocess.json"))
    with pytest.raises(MissingUnlabeledDataError, match=r"different plans .* Run `nnUNetv2_semisup_preprocess -d "
                                                        r"Dataset990_SemiSupSynthetic -c 3d_fullres --overwrite`"):
        trainer.get_unlabeled_dataset()


@pytest.fixture(scope="module")
def started_trainer(planned_dataset):
    trainer = make_trainer(planned_dataset)
    trainer.on_train_start()
    yield trainer
    trainer.dataloader_train.finish()


@pytest.mark.parametrize("b_l,b_u", [(2, 1), (1, 2), (3, 0), (0, 2)])
def test_batches_hold_exactly_b_l_labeled_and_b_u_unlabeled(started_trainer, planned_dataset, b_l, b_u):
    trainer = started_trainer
    trainer.set_batch_composition(b_l, b_u)
    labeled_ids = {f[:-12] for f in os.listdir(os.path.join(planned_dataset.raw_folder, "imagesTr"))}
    unlabeled_ids = {f[:-12] for f in os.listdir(os.path.join(planned_dataset.raw_folder, "imagesUnlabeled"))}
    for _ in range(2):
        batch = next(trainer.dataloader_train)
        assert (batch["b_l"], batch["b_u"]) == (b_l, b_u)
        if b_l:
            assert batch["data"].shape[0] == b_l and batch["target"][0].shape[0] == b_l
            assert set(batch["keys"]) <= labeled_ids
        else:
            assert "data" not in batch
        if b_u:
            assert batch["unlabeled"]["data"].shape == (b_u, 1, *trainer.configuration_manager.patch_size)
            assert set(batch["unlabeled"]["keys"]) <= unlabeled_ids
        else:
            assert "unlabeled" not in batch


def test_worker_pools_are_reused_when_the_composition_alternates(started_trainer):
    """M&N's 3D and 2D epochs alternate between two compositions: the last two pools per stream stay alive."""
    trainer = started_trainer
    labeled = trainer.dataloader_train.labeled
    trainer.set_batch_composition(1, 1)
    first = labeled.augmenter
    trainer.set_batch_composition(2, 1)
    second = labeled.augmenter
    assert second is not first
    trainer.set_batch_composition(1, 1)
    assert labeled.augmenter is first and next(trainer.dataloader_train)["data"].shape[0] == 1
    trainer.set_batch_composition(3, 1)  # a third size evicts the least recently used pool (size 2)
    assert set(labeled._augmenters) == {1, 3}


def test_invalid_composition_is_refused(started_trainer):
    with pytest.raises(ValueError, match="b_l=0, b_u=0"):
        started_trainer.set_batch_composition(0, 0)


def test_ema_update_formula():
    teacher, student = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.fill_(1.0), teacher.bias.fill_(-2.0)
        student.weight.fill_(3.0), student.bias.fill_(4.0)
    ema_update(teacher, student, 0.99)
    assert torch.allclose(teacher.weight, torch.full((1, 2), 0.99 * 1 + 0.01 * 3))
    assert torch.allclose(teacher.bias, torch.tensor([0.99 * -2 + 0.01 * 4]))
    assert torch.equal(student.weight, torch.full((1, 2), 3.0))  # the source is untouched


@pytest.mark.parametrize("old, new", [("skcdf_grad_clip", "grad_clip"), ("cml_grad_clip", "grad_clip"),
                                      ("mn_3d_grad_clip", "grad_clip"), ("mn_batch_size", "batch_size_override"),
                                      ("skcdf_batch_size", "batch_size_override"),
                                      ("cml_batch_size", "batch_size_override")])
def test_a_renamed_attribute_stops_with_its_new_name(planned_dataset, old, new):
    t = make_trainer(planned_dataset)
    setattr(t, old, None)  # what a subclass written for the old name does; it would otherwise be ignored
    with pytest.raises(ValueError, match=f"{old} \\(now {new}"):
        t.initialize()


def test_batch_size_override_replaces_the_planned_batch_and_leaves_the_plans_alone(planned_dataset):
    t = make_trainer(planned_dataset)
    planned = t.configuration_manager.batch_size
    t.batch_size_override = planned + 3
    t.initialize()
    assert t.batch_size == planned + 3  # nnU-Net's batch (one process: the whole global batch)
    assert t.get_batch_composition() == (planned + 3, planned + 3)  # Mean Teacher: B labeled + B unlabeled
    assert t.configuration_manager.batch_size == planned
    assert t.plans_manager.plans["configurations"][t.configuration_name]["batch_size"] == planned
    for bad in (0, -2, 2.5, True, "4"):
        t = make_trainer(planned_dataset)
        t.batch_size_override = bad
        with pytest.raises(ValueError, match="batch_size_override="):
            t.initialize()


def test_batch_iterator_keeps_the_first_patches_of_each_part():
    """``keep_first``: the first b_l labeled patches (image, every deep-supervision target, keys) and the first b_u
    unlabeled ones; a part with 0 disappears; more than the streams delivered is refused."""
    from nnunetv2_semisup.data.unlabeled_loader import keep_first
    batch = {"data": torch.arange(3).view(3, 1), "target": [torch.arange(3) * 10, torch.arange(3) * 100],
             "keys": ["a", "b", "c"], "unlabeled": {"data": torch.arange(2) + 7, "keys": ["u", "v"]}, "b_l": 3, "b_u": 2}
    out = keep_first(batch, 2, 1)
    assert out["data"].flatten().tolist() == [0, 1] and [t.tolist() for t in out["target"]] == [[0, 10], [0, 100]]
    assert out["keys"] == ["a", "b"] and out["unlabeled"]["data"].tolist() == [7] and out["unlabeled"]["keys"] == ["u"]
    assert (out["b_l"], out["b_u"]) == (2, 1)
    only_u = keep_first(batch, 0, 2)
    assert set(only_u) == {"unlabeled", "b_l", "b_u"} and only_u["unlabeled"]["keys"] == ["u", "v"]
    assert "unlabeled" not in keep_first(batch, 3, 0)
    with pytest.raises(ValueError, match="get_batch_composition"):
        keep_first(batch, 1, 3)


def test_mean_teacher_decay_warmup():
    assert mean_teacher_ema_decay(0, 0.99) == 0.0  # first step: teacher := student
    assert mean_teacher_ema_decay(1, 0.99) == 0.5
    assert mean_teacher_ema_decay(9, 0.99) == pytest.approx(0.9)
    assert mean_teacher_ema_decay(99, 0.99) == pytest.approx(0.99)
    assert mean_teacher_ema_decay(10_000, 0.99) == 0.99


def test_consistency_weight_schedule(planned_dataset):
    trainer = make_trainer(planned_dataset)
    trainer.num_epochs = 100  # ramp-up over the first 40 epochs
    assert trainer.consistency_weight(0) == pytest.approx(0.1 * math.exp(-5))
    assert trainer.consistency_weight(20) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert trainer.consistency_weight(40) == pytest.approx(0.1)
    assert trainer.consistency_weight(99) == pytest.approx(0.1)
    assert sigmoid_rampup(5, 0) == 1.0
    uamt = make_trainer(planned_dataset, "nnUNetTrainerMeanTeacher_uamtRamp_short")
    uamt.num_epochs = 100  # UA-MT: the ramp spans the whole run
    assert uamt.consistency_weight(40) == pytest.approx(0.1 * math.exp(-5 * 0.36))
    assert uamt.consistency_weight(50) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert uamt.consistency_weight(100) == pytest.approx(0.1)


def test_softmax_mse_value():
    s = torch.tensor([[[0.0]], [[0.0]]])[None]  # (1, 2, 1, 1): softmax 0.5 / 0.5
    t = torch.tensor([[[math.log(3.0)]], [[0.0]]])[None]  # softmax 0.75 / 0.25
    assert softmax_mse(s, t).item() == pytest.approx(0.25 ** 2)


def test_mean_teacher_step_teacher_gets_no_gradient_and_follows_ema(started_trainer):
    trainer = started_trainer
    trainer.set_batch_composition(1, 1)
    batch = next(trainer.dataloader_train)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    step = trainer.mt_global_step
    out = trainer.train_step(batch)
    assert set(out) == {"loss", "sup", "cons"} and np.isfinite(out["loss"])
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    alpha = mean_teacher_ema_decay(step, 0.99)
    student = trainer.network.state_dict()
    for k, v in trainer.teacher.state_dict().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, alpha * teacher_before[k] + (1 - alpha) * student[k])
    assert trainer.mt_global_step == step + 1
    assert any(p.grad is not None for p in trainer.network.parameters())


def test_on_train_end_stops_the_unlabeled_workers(planned_dataset, monkeypatch):
    """nnU-Net's on_train_end only finishes its own two augmenters; the unlabeled stream's workers must stop too."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "2")  # real worker processes: one per stream
    trainer = make_trainer(planned_dataset)
    trainer.on_train_start()
    trainer.on_train_epoch_start()  # sets the composition (1 + 1) and starts the worker pools
    streams = trainer.dataloader_train
    batch = next(streams)
    assert "unlabeled" in batch
    workers = [p for s in (streams.labeled, streams.unlabeled) for p in s.augmenter._processes]
    assert workers and all(p.is_alive() for p in workers)
    monkeypatch.setattr(trainer, "save_checkpoint", lambda filename: None)
    trainer.on_train_end()
    for p in workers:
        p.join(timeout=10)
    assert not any(p.is_alive() for p in workers)
    assert streams.labeled.augmenter is None and streams.unlabeled.augmenter is None


def test_checkpoint_keys_are_nnunets_plus_the_extras(started_trainer, tmp_path):
    """The checkpoint dict is written by our atomic save_checkpoint (nnU-Net's own writes in place): its nnU-Net part
    must stay exactly what nnU-Net 2.8 writes — same keys, same network weights — so stock prediction and --c keep
    working when nnU-Net changes its key list."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2_semisup.training.semisup_base import NNUNET_CHECKPOINT_KEYS
    trainer = started_trainer
    ours, stock = str(tmp_path / "ours.pth"), str(tmp_path / "stock.pth")
    trainer.save_checkpoint(ours)
    nnUNetTrainer.save_checkpoint(trainer, stock)
    a = torch.load(ours, map_location="cpu", weights_only=False)
    b = torch.load(stock, map_location="cpu", weights_only=False)
    assert set(b) == set(NNUNET_CHECKPOINT_KEYS)
    assert set(a) == set(b) | set(trainer.extra_checkpoint_objects) | {"semisup_state"}
    for k in b:
        if k == "network_weights":
            assert all(torch.equal(a[k][n], b[k][n]) for n in b[k])
        elif k not in ("optimizer_state", "logging"):
            assert a[k] == b[k], k


@pytest.mark.parametrize("name,regions,ignore,dims,match", [
    ("nnUNetTrainerCML", True, False, 3, "label-based datasets only; dataset D is region-based"),
    ("nnUNetTrainerSKCDF", False, True, 3, "without an ignore label; dataset D has ignore label 4"),
    ("nnUNetTrainerMN", False, False, 2, "needs a 3D configuration .*'2d' has a 2D patch"),
    ("nnUNetTrainerSKCDF", False, False, 2, "needs a 3D configuration"),
    ("nnUNetTrainerMeanTeacher", True, True, 2, None),
    ("nnUNetTrainerCML", False, False, 2, None)])
def test_capabilities_are_class_attributes_checked_by_the_base(name, regions, ignore, dims, match):
    import types
    from nnunetv2_semisup import trainers as trainer_registry
    cls = getattr(trainer_registry, name)
    tr = cls.__new__(cls)
    tr.label_manager = types.SimpleNamespace(has_regions=regions, has_ignore_label=ignore, ignore_label=4)
    tr.plans_manager = types.SimpleNamespace(dataset_name="D")
    tr.configuration_manager = types.SimpleNamespace(patch_size=[8] * dims)
    tr.configuration_name = "2d" if dims == 2 else "3d_fullres"
    if match is None:
        tr.check_capabilities()
    else:
        with pytest.raises(ValueError, match=match):
            tr.check_capabilities()


@pytest.mark.parametrize("monitored", [False, True])
def test_progress_png_is_nnunets_plot_with_our_panels_below(tmp_path, monitored):
    """progress.png = nnU-Net's own plot_progress_png, pixel for pixel (drawn by its unmodified LocalLogger), with
    the loss terms + batch composition (and monitored values, if any) as rows of nnU-Net's panel size below it."""
    import numpy as np
    from PIL import Image
    from matplotlib.figure import Figure
    from nnunetv2.training.logging import nnunet_logger
    from nnunetv2.training.logging.nnunet_logger import LocalLogger
    from nnunetv2_semisup.training.progress_plot import SemiSupLocalLogger
    pyplot_before = nnunet_logger.plt
    logger = SemiSupLocalLogger()
    logger.register(["batch_labeled", "batch_unlabeled", "loss_sup", "loss_unsup"]
                    + (["monitor_w"] if monitored else []))
    stock = LocalLogger()
    for e in range(4):
        for k in logger.my_fantastic_logging:
            value = [0.5] if k == "dice_per_class_or_region" else 0.1 * e + (0.05 if k == "loss_unsup" else 0)
            logger.log(k, value, e)
            if k in stock.my_fantastic_logging:
                stock.log(k, value, e)
    saved = []
    real_savefig = Figure.savefig
    with pytest.MonkeyPatch.context() as mp:  # only to look at our figure's axes
        mp.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), real_savefig(fig, *a, **k)))
        logger.plot_progress_png(str(tmp_path))
    assert nnunet_logger.plt is pyplot_before  # nnU-Net's module is not patched
    (tmp_path / "stock").mkdir()
    stock.plot_progress_png(str(tmp_path / "stock"))
    ours = np.asarray(Image.open(tmp_path / "progress.png").convert("RGB"))
    theirs = np.asarray(Image.open(tmp_path / "stock" / "progress.png").convert("RGB"))
    rows = 5 if monitored else 4
    assert ours.shape[1] == theirs.shape[1]
    assert ours.shape[0] == pytest.approx(theirs.shape[0] * rows / 3, abs=2)  # nnU-Net's 3 rows + ours, same size
    assert np.array_equal(ours[:theirs.shape[0]], theirs)  # nnU-Net's plot on top, unchanged
    assert ours[theirs.shape[0]:].std() > 0  # something is drawn below
    assert not list(tmp_path.glob("*.partial*"))
    ylabels = [ax.get_ylabel() for ax in saved[-1].axes]
    assert ylabels[0] == "loss term" and "samples per batch" in ylabels
    assert ("monitored value" in ylabels) == monitored
    legend = [t.get_text() for ax in saved[-1].axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert {"loss_sup", "loss_unsup", "batch_labeled", "batch_unlabeled"} <= set(legend)
    assert ("monitor_w" in legend) == monitored


def test_mean_teacher_keeps_the_labeled_batch_and_adds_unlabeled_on_top(planned_dataset):
    """Default: nnU-Net's B = 2 labeled patches intact + 2 unlabeled (UA-MT's 2 + 2); ``mt_unlabeled_batch_size``
    changes B_u; ``_halfBatch`` keeps the old split of B (1 + 1)."""
    t = make_trainer(planned_dataset)
    t._set_batch_size_and_oversample()   # nnU-Net's initialize() does this
    assert t.batch_size == 2 and t.get_batch_composition() == (2, 2)
    t.mt_unlabeled_batch_size = 3
    assert t.get_batch_composition() == (2, 3)
    t.mt_unlabeled_batch_size = 1
    assert t.get_batch_composition() == (2, 1)
    t.mt_unlabeled_batch_size = 0
    with pytest.raises(ValueError, match="mt_unlabeled_batch_size"):
        t.get_batch_composition()
    half = make_trainer(planned_dataset, "nnUNetTrainerMeanTeacher_halfBatch_short")
    half._set_batch_size_and_oversample()
    assert half.get_batch_composition() == (1, 1)


def test_mean_teacher_after_step_moves_the_teacher_by_the_warmed_up_decay_and_counts_steps():
    """Teacher ← d·teacher + (1 − d)·student with d = min(1 − 1/(k + 1), α) at step k (α = 0.99), then k ← k + 1:
    from teacher 0 and student 4 at k = 1: d = 1/2 → 2; at k = 2: d = 2/3 → 2/3·2 + 1/3·4 = 8/3."""
    from nnunetv2_semisup.methods.mean_teacher.trainer import nnUNetTrainerMeanTeacher
    t = nnUNetTrainerMeanTeacher.__new__(nnUNetTrainerMeanTeacher)
    t.network, t.teacher = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        t.network.weight.fill_(4.0)
        t.teacher.weight.fill_(0.0)
    t.mt_ema_decay, t.mt_global_step = 0.99, 1
    t.after_step({})
    assert t.teacher.weight.item() == pytest.approx(2.0) and t.mt_global_step == 2
    t.after_step({})
    assert t.teacher.weight.item() == pytest.approx(8 / 3) and t.mt_global_step == 3
    assert t.network.weight.item() == 4.0  # the student is untouched
    t.batch_size, t.mt_unlabeled_batch_size = 2, None
    assert t.get_batch_composition() == (2, 2)  # B labeled + B unlabeled on top
    t.mt_unlabeled_batch_size = 3
    assert t.get_batch_composition() == (2, 3)
    t.mt_unlabeled_batch_size = 1
    assert t.get_batch_composition() == (2, 1)
    for bad in (0, -1):
        t.mt_unlabeled_batch_size = bad
        with pytest.raises(ValueError, match=f"mt_unlabeled_batch_size must be >= 1, got {bad}"):
            t.get_batch_composition()
