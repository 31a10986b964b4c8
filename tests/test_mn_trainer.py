"""M&N training mechanics in-process on the planned synthetic dataset (docs/spec/mn.md §5 properties 13, 21, 22
(uniform crops before the first refresh), 23, 26). The tiny SegFormer is loaded through
``nnUNet_semisup_segformer``."""
import copy
import json
import os

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunetv2_semisup.methods.mn.segformer import SEGFORMER_ENV, save_tiny_segformer
from nnunetv2_semisup.methods.mn.schedule import TRAIN_2D, TRAIN_3D, WARMUP
from nnunetv2_semisup.methods.mn.lrg import epoch_composition, iteration_unlabeled
from nnunetv2_semisup.training.semisup_base import unwrap


@pytest.fixture(scope="module")
def mn_env(planned_dataset, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny_segformer_trainer"))
    save_tiny_segformer(folder)
    old = os.environ.get(SEGFORMER_ENV)
    os.environ[SEGFORMER_ENV] = folder
    yield planned_dataset
    if old is None:
        os.environ.pop(SEGFORMER_ENV, None)
    else:
        os.environ[SEGFORMER_ENV] = old


def make_trainer(ds, trainer="nnUNetTrainerMN", dataset_json=None):
    from nnunetv2.run.run_training import get_trainer_from_args
    if dataset_json is None:
        return get_trainer_from_args(str(ds.dataset_id), "3d_fullres", "all", trainer, device=torch.device("cpu"))
    from nnunetv2_semisup.methods.mn.trainer import nnUNetTrainerMN
    plans = load_json(os.path.join(ds.preprocessed_folder, "nnUNetPlans.json"))
    plans["continue_training"] = False
    return nnUNetTrainerMN(plans=plans, configuration="3d_fullres", fold="all", dataset_json=dataset_json,
                           device=torch.device("cpu"))


@pytest.fixture(scope="module")
def trainer(mn_env):
    t = make_trainer(mn_env)
    t.initialize()
    return t


def fake_batch(t, b_l=2, b_u=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = list(t.configuration_manager.patch_size)
    batch = {"b_l": b_l, "b_u": b_u}
    if b_l:
        batch["data"] = torch.randn(b_l, 1, *shape, generator=g)
        batch["target"] = [torch.randint(0, 4, (b_l, 1, *[s // f for s, f in zip(shape, fac)]), generator=g).float()
                           for fac in t.mn_ds_factors]
    if b_u:
        batch["unlabeled"] = {"data": torch.randn(b_u, 1, *shape, generator=g)}
    return batch


def count_steps(optimizer):
    counter = {"n": 0}

    def hook(*_):
        counter["n"] += 1
    return counter, optimizer.register_step_post_hook(hook)


def snapshot(module):
    return {k: v.detach().clone() for k, v in unwrap(module).state_dict().items()}


def assert_unchanged_without_grad(module, before):
    for n, p in unwrap(module).named_parameters():
        assert p.grad is None, n
    for k, v in unwrap(module).state_dict().items():
        assert torch.equal(v, before[k]), k


def test_setup(trainer):
    assert trainer.mn_plan.warmup_epochs == 67 and trainer.mn_plan.T_3d == 534 and trainer.mn_plan.T_2d == 533
    assert trainer.network_2d.model.segformer.__class__.__name__ == "PeftModel"
    assert set(trainer.extra_checkpoint_objects) >= {"mn_segformer_state", "mn_segformer_optimizer_state"}
    assert isinstance(trainer.optimizer, torch.optim.SGD) and isinstance(trainer.optimizer_2d, torch.optim.AdamW)
    assert trainer.optimizer_2d.defaults["weight_decay"] == 0.01 and trainer.mn_2d_lr == 1e-3
    assert trainer.mn_ds_factors == [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    assert np.allclose(trainer.mn_ds_weights, [2 / 3, 1 / 3, 0])  # nnU-Net's 1, 1/2, 0 normalised
    assert trainer.mn_ds_weights == list(trainer.loss.weight_factors)


def test_soft_targets_from_teachers_in_eval_mode(trainer):  # property 13
    x = fake_batch(trainer)["unlabeled"]["data"]
    for owner, inner, produce in ((unwrap(trainer.network_2d), unwrap(trainer.network_2d).model,
                                   trainer.soft_targets_2d),
                                  (unwrap(trainer.network), unwrap(trainer.network), trainer.soft_targets_3d)):
        modes = []
        handle = inner.register_forward_pre_hook(lambda m, _: modes.append(m.training))
        owner.train()
        y = produce(x)
        handle.remove()
        assert modes and not any(modes)  # produced in eval mode
        assert owner.training and inner.training  # previous mode restored
        assert not y.requires_grad and y.shape == (2, 4, *trainer.configuration_manager.patch_size)
        assert torch.allclose(y.sum(1), torch.ones_like(y[:, 0]), atol=1e-6)
        owner.eval()
        produce(x)
        assert not owner.training
        owner.train()


def test_which_optimiser_steps(trainer):  # properties 21 and 13 (teacher untouched)
    c3, h3 = count_steps(trainer.optimizer)
    c2, h2 = count_steps(trainer.optimizer_2d)
    try:
        trainer.mn_phase = TRAIN_3D
        before_2d = snapshot(trainer.network_2d)
        out = trainer.train_step(fake_batch(trainer, seed=1))
        assert (c3["n"], c2["n"]) == (1, 0)
        assert_unchanged_without_grad(trainer.network_2d, before_2d)
        assert {"loss", "3d", "dice_3d", "kl_3d"} <= set(out) and "2d" not in out

        trainer.mn_phase = TRAIN_2D
        before_3d = snapshot(trainer.network)
        out = trainer.train_step(fake_batch(trainer, seed=2))
        assert (c3["n"], c2["n"]) == (1, 1)
        assert_unchanged_without_grad(trainer.network, before_3d)
        assert {"loss", "2d", "dice_2d", "kl_2d"} <= set(out) and "3d" not in out

        trainer.mn_phase = WARMUP
        out = trainer.train_step(fake_batch(trainer, b_u=0, seed=3))
        assert (c3["n"], c2["n"]) == (2, 2)
        assert np.isclose(out["loss"], (out["3d"] + out["2d"]) / 2)
        # labeled-only and unlabeled-only batches of a co-training epoch
        trainer.mn_phase = TRAIN_3D
        trainer.train_step(fake_batch(trainer, b_l=0, b_u=2, seed=4))
        trainer.mn_phase = TRAIN_2D
        trainer.train_step(fake_batch(trainer, b_l=2, b_u=0, seed=5))
        assert (c3["n"], c2["n"]) == (3, 3)
    finally:
        h3.remove()
        h2.remove()
        trainer.mn_phase = None


def test_unlabeled_stream_before_refresh_and_no_test_cases(trainer, mn_env):  # properties 22 (part), 23
    ds = trainer.get_unlabeled_dataset()
    assert trainer.class_locations_file is None
    for case in ds.identifiers:
        locations = ds.load_case(case)[3]["class_locations"]
        assert all(len(v) == 0 for v in locations.values())  # uniform crops until the first refresh
    raw = mn_env.raw_folder
    unlabeled = {f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(raw, "imagesUnlabeled"))}
    test = {f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(raw, "imagesTs"))}
    with open(os.path.join(raw, "dataset.json")) as f:
        assert json.load(f)["semisup"]["transductive"] is False
    assert set(ds.identifiers) == unlabeled and not (set(ds.identifiers) & test)


@pytest.mark.parametrize("kind", ["ignore", "regions"])
def test_region_or_ignore_label_rejected(mn_env, kind):  # property 26
    dataset_json = copy.deepcopy(load_json(os.path.join(mn_env.preprocessed_folder, "dataset.json")))
    if kind == "ignore":
        dataset_json["labels"]["ignore"] = 4
    else:
        dataset_json["labels"] = {"background": 0, "organs": [1, 2], "organ2": 2, "lesion": 3}
        dataset_json["regions_class_order"] = [1, 2, 3]
    t = make_trainer(mn_env, dataset_json=dataset_json)
    with pytest.raises(ValueError, match="label-based datasets only"):
        t.initialize()


@pytest.mark.parametrize("variant", ["nnUNetTrainerMN_whole", "nnUNetTrainerMN_decoder", "nnUNetTrainerMN_freeze",
                                     "nnUNetTrainerMN_scratch", "nnUNetTrainerMN_lrglinear",
                                     "nnUNetTrainerMN_uniform", "nnUNetTrainerMN_fixedpseudo", "nnUNetTrainerMN_paper",
                                     "nnUNetTrainerMN_paper_lrglinear", "nnUNetTrainerMN_short",
                                     "nnUNetTrainerMN_labeledIntact", "nnUNetTrainerMN_labeledIntact_short"])
def test_variants(mn_env, variant):  # docs/spec/mn.md §4, found by name through nnU-Net's own trainer lookup
    import math
    from nnunetv2_semisup.methods.mn.schedule import ReferenceCompositeSchedule
    t = make_trainer(mn_env, variant)
    t.initialize()
    seg = t.network_2d.model
    n_trainable = sum(p.requires_grad for p in seg.parameters())
    if variant.endswith("_whole") or variant.endswith("_scratch"):
        assert t.mn_2d_finetune == "whole" and all(p.requires_grad for p in seg.parameters())
        assert t.mn_2d_pretrained == (not variant.endswith("_scratch"))
    elif variant.endswith("_freeze"):
        assert t.mn_2d_finetune == "freeze"
        assert {n.split(".")[0] for n, p in seg.named_parameters() if p.requires_grad} == {"head"}
        assert not any(p.requires_grad for p in seg.hf_model().parameters())
    elif variant.endswith("_decoder"):
        assert t.mn_2d_finetune == "decoder"
        assert not any(p.requires_grad for p in seg.hf_model().segformer.parameters())
        assert all(p.requires_grad for p in seg.hf_model().decode_head.parameters())
    else:
        assert t.mn_2d_finetune == "lora" and 0 < n_trainable < len(list(seg.parameters()))
    if variant.endswith("_lrglinear"):
        assert t.mn_lrg_mode == "linear"
    if variant.endswith("_uniform"):
        assert t.mn_lrg_mode == "uniform"
        t.mn_phase = TRAIN_3D
        t._labeled_stream = type("S", (), {"dataset": type("D", (), {"identifiers": ["a"] * 4})})()
        t._unlabeled_stream = type("S", (), {"dataset": type("D", (), {"identifiers": ["b"] * 6})})()
        t.train_step(fake_batch(t, b_l=2, b_u=2, seed=6))
        assert len(t._mn_batch_unlabeled) == 1 and 0 <= t._mn_batch_unlabeled[0] <= 2
    if variant.endswith("_fixedpseudo"):
        assert not t.mn_cotraining and t.mn_plan.T_3d == 1000 and t.mn_plan.T_2d == 125
        assert {t.mn_plan.phase(e) for e in range(125, 1000)} == {TRAIN_3D}
    if "_paper" in variant:
        assert t.batch_size == 5 and t.num_iterations_per_epoch == 8 and t.num_epochs == 7500
        assert t.num_val_iterations_per_epoch == 8
        assert (t.mn_plan.warmup_epochs, t.mn_plan.T_3d, t.mn_plan.T_2d) == (500, 4000, 4000)
        assert isinstance(t.optimizer, torch.optim.AdamW) and t.optimizer.defaults["lr"] == 1e-4
        assert t.optimizer.defaults["weight_decay"] == 0.01 and t.optimizer_2d.defaults["lr"] == 1e-3
        for sched in (t.lr_scheduler.schedule, t.mn_scheduler_2d.schedule):
            assert isinstance(sched, ReferenceCompositeSchedule)
            assert (sched.total, sched.warmup, sched.restart) == (4000, 50, 500)
        assert t.grad_clip is None and t.mn_2d_grad_clip is None
        assert t.oversample_foreground_percent == 0.5 and t.unlabeled_oversample_foreground_percent == 0.5
        assert [math.ceil(f * t.mn_plan.T_3d) for f in t.mn_pseudo_refresh_fractions] == [1000, 1500, 2000, 3000]
        assert t.mn_2d_input_mapping == "unit" and t.lrg_batch_size == t.batch_size == 5
        assert t.mn_lrg_mode == ("linear" if variant.endswith("_lrglinear") else "paper")
    assert t.mn_labeled_batch_intact == ("_labeledIntact" in variant)
    if variant.endswith("_short"):
        assert t.mn_2d_chunk_size == 16 and t.save_every == 1


def test_no_unlabeled_patches_while_a_models_lr_is_still_rising(mn_env):
    """Co-training from epoch 0 (mn_warmup_epochs = 0): the 2D model's first epochs are its LR warm-up, where
    η < η₀ would make eq. 10 give b_u = B − 1 at once; LRG counts only the decay, so b_u = 0 there."""
    from nnunetv2_semisup.methods.mn.lrg import lrg_paper
    t = make_trainer(mn_env)
    t.mn_warmup_epochs = 0
    t.initialize()
    B = t.batch_size
    assert t.mn_plan.warmup_epochs == 0 and t.mn_plan.phase(1) == TRAIN_2D
    t.current_epoch, t.mn_phase = 1, TRAIN_2D
    t.mn_scheduler_2d.step(1)
    lr = t.optimizer_2d.param_groups[0]["lr"]
    assert lr == pytest.approx(1e-5) and lrg_paper(B, lr, 1e-3) == B - 1  # what eq. 10 alone would give
    assert t.get_batch_composition() == (B, 0)


def test_lrg_reads_the_learning_rate_of_the_model_being_trained(trainer):
    """Eq. 10 uses the trained model's own LR: a 2D epoch must not see the 3D model's decayed LR and vice versa."""
    t = trainer
    B = t.batch_size
    e2 = next(e for e in range(t.mn_plan.warmup_epochs, t.num_epochs) if t.mn_plan.phase(e) == TRAIN_2D
              and t.mn_plan.own_epoch(e, TRAIN_2D) >= t.mn_scheduler_2d.schedule.warmup)
    saved = (t.current_epoch, t.mn_phase, t.optimizer.param_groups[0]["lr"], t.optimizer_2d.param_groups[0]["lr"])
    try:
        t.optimizer.param_groups[0]["lr"] = 1e-6 * t.initial_lr      # 3D: almost fully decayed -> r ≈ 1
        t.optimizer_2d.param_groups[0]["lr"] = t.mn_2d_lr             # 2D: at its peak -> r = 0
        t.current_epoch, t.mn_phase = e2, TRAIN_2D
        assert t.get_batch_composition() == (B, 0)
        t.current_epoch, t.mn_phase = e2 + 1, TRAIN_3D
        assert t.mn_plan.phase(e2 + 1) == TRAIN_3D
        assert t.get_batch_composition() == epoch_composition(0.8, B) and t.mn_unlabeled_share == pytest.approx(0.8)
    finally:
        t.current_epoch, t.mn_phase = saved[0], saved[1]
        t.optimizer.param_groups[0]["lr"], t.optimizer_2d.param_groups[0]["lr"] = saved[2], saved[3]


def epoch_profile(t, B, iterations=250):
    """Walk a whole default run (E = 1000) as nnU-Net does at each epoch start (3D and 2D schedulers step, then
    the composition is chosen) and return per global epoch (trained model, own epoch, mean b_l, mean b_u) over
    ``iterations`` iterations of B patches."""
    saved = (t.current_epoch, t.mn_phase, t.batch_size, t.optimizer.param_groups[0]["lr"],
             t.optimizer_2d.param_groups[0]["lr"], t.lr_scheduler.state_dict(), t.mn_scheduler_2d.state_dict())
    rows = []
    try:
        t.batch_size = B
        for e in range(t.num_epochs):
            t.current_epoch, t.mn_phase = e, t.mn_plan.phase(e)
            t.lr_scheduler.step(e)
            t.mn_scheduler_2d.step(e)
            b_l_max, b_u_max = t.get_batch_composition()
            per_it = [iteration_unlabeled(i, t.mn_unlabeled_share, B) for i in range(iterations)]
            assert max(per_it) <= b_u_max and all(B - u <= b_l_max for u in per_it)
            model = TRAIN_3D if t.mn_phase == WARMUP else t.mn_phase
            b_u = float(np.mean(per_it))
            rows.append((t.mn_phase, t.mn_plan.own_epoch(e, model), B - b_u, b_u))
    finally:
        t.current_epoch, t.mn_phase, t.batch_size = saved[:3]
        t.optimizer.param_groups[0]["lr"], t.optimizer_2d.param_groups[0]["lr"] = saved[3], saved[4]
        t.lr_scheduler.load_state_dict(saved[5])
        t.mn_scheduler_2d.load_state_dict(saved[6])
    return rows


@pytest.mark.parametrize("B", [2, 5])
def test_lrg_profile_follows_the_paper_at_nnunet_batch_sizes(trainer, B):
    """Issue 12 §3: at nnU-Net's planned B, including B = 2, each model's unlabeled share over its co-training goes
    0 at its start → about half (2/5, the paper's ⌊5·½⌋/5) at its middle → 4/5 at its end, as the paper's B = 5
    profile; warm-up epochs are all labeled. With B = 5 every epoch is exactly the paper's (b_l, b_u)."""
    t = trainer
    rows = epoch_profile(t, B)
    W = t.mn_plan.warmup_epochs
    assert all(r[3] == 0 and r[2] == B for r in rows[:W])
    for model in (TRAIN_3D, TRAIN_2D):
        mine = [(own, b_l, b_u) for phase, own, b_l, b_u in rows if phase == model]
        T = t.mn_plan.schedule_length(model)
        assert [own for own, _, _ in mine] == list(range(W, T))
        shares = [b_u / B for _, _, b_u in mine]
        assert shares[0] == 0 and all(a <= b + 1e-12 for a, b in zip(shares, shares[1:]))
        assert shares[len(shares) // 2] == pytest.approx(0.4) and shares[-1] == pytest.approx(0.8)
        assert set(round(x, 6) for x in shares) == {0.0, 0.2, 0.4, 0.6, 0.8}
        assert all(b_l + b_u == pytest.approx(B) for _, b_l, b_u in mine)
        if B == 5:
            assert all(b_u == int(b_u) for _, _, b_u in mine)  # one composition per epoch, as the paper


class FakeStream:
    """Stands in for an AugmentedStream: a batch size and batches of fake_batch's layout, seeded per call."""

    def __init__(self, t, batch_size, part):
        self.t, self.batch_size, self.part, self.calls = t, batch_size, part, 0

    def __next__(self):
        self.calls += 1
        n = self.batch_size
        b = fake_batch(self.t, b_l=n if self.part == "labeled" else 0, b_u=n if self.part == "unlabeled" else 0,
                       seed=self.calls)
        if self.part == "labeled":
            return {"data": b["data"], "target": b["target"], "keys": [f"l{self.calls}_{i}" for i in range(n)]}
        return {"data": b["unlabeled"]["data"], "keys": [f"u{self.calls}_{i}" for i in range(n)]}


def test_an_lrg_epoch_spreads_its_share_over_its_iterations(trainer):
    """B = 2, share 4/5: the loaders deliver (1, 2) patches; iteration i uses ⌊1.6(i+1)⌋ − ⌊1.6i⌋ unlabeled ones
    (1, 2, 1, 2, 2, …) and fills the rest of B with labeled ones, so 5 iterations hold 8 unlabeled of 10. The batch
    iterator applies it (both streams read every iteration) and train_step trains on exactly those patches."""
    from nnunetv2_semisup.data.unlabeled_loader import SemiSupBatchIterator
    t = trainer
    saved = (t.mn_phase, t.mn_unlabeled_share, t.mn_composition, list(t._mn_batch_unlabeled), t.batch_size)
    seen = []
    orig = t.step_3d

    def spy(x_u, soft_u, x_l, targets_l):
        seen.append((0 if x_u is None else x_u.shape[0], 0 if x_l is None else x_l.shape[0],
                     0 if targets_l is None else targets_l[0].shape[0]))
        return {"3d": np.float32(0), "dice_3d": np.float32(0), "kl_3d": np.float32(0)}
    try:
        t.step_3d = spy
        t.batch_size, t.mn_phase, t.mn_unlabeled_share = 2, TRAIN_3D, 0.8
        t.mn_composition = epoch_composition(0.8, 2)
        assert t.mn_composition == (1, 2)
        assert [t.iteration_composition(i) for i in range(5)] == [(1, 1), (0, 2), (1, 1), (0, 2), (0, 2)]
        labeled, unlabeled = FakeStream(t, 1, "labeled"), FakeStream(t, 2, "unlabeled")
        it = SemiSupBatchIterator(labeled, unlabeled, t.iteration_composition)
        t._mn_batch_unlabeled = []
        batches = [next(it) for _ in range(5)]
        assert [(b["b_l"], b["b_u"]) for b in batches] == [(1, 1), (0, 2), (1, 1), (0, 2), (0, 2)]
        assert batches[0]["unlabeled"]["keys"] == ["u1_0"] and batches[1]["unlabeled"]["keys"] == ["u2_0", "u2_1"]
        assert "data" not in batches[1] and labeled.calls == unlabeled.calls == 5
        for b in batches:
            t.train_step(b)
        assert seen == [(1, 1, 1), (2, 0, 0), (1, 1, 1), (2, 0, 0), (2, 0, 0)]
        assert t._mn_batch_unlabeled == [1, 2, 1, 2, 2]
        t.mn_phase = WARMUP  # warm-up epochs use the whole (all-labeled) batch
        assert t.iteration_composition(0) is None
    finally:
        del t.step_3d
        assert t.step_3d == orig
        t.mn_phase, t.mn_unlabeled_share, t.mn_composition, t._mn_batch_unlabeled, t.batch_size = saved


def test_labeled_batch_intact_adds_lrgs_unlabeled_patches_on_top_of_the_whole_labeled_batch(mn_env):
    """``_labeledIntact`` (benchmark variant): B = 2, share 4/5 → the same b_u per iteration as the paper's batch
    (⌊1.6(i+1)⌋ − ⌊1.6i⌋ = 1, 2, 1, 2, 2) but every step keeps both labeled patches: the loaders deliver (2, 2),
    the student trains on 2 labeled + b_u unlabeled, 8 unlabeled and 10 labeled patches over 5 iterations (the
    paper's batch: 8 and 2). Share 0 → (2, 0); warm-up → the whole labeled batch; uniform mode → (B, max draw)."""
    from nnunetv2_semisup.data.unlabeled_loader import SemiSupBatchIterator
    t = make_trainer(mn_env, "nnUNetTrainerMN_labeledIntact")
    t.initialize()
    seen = []

    def spy(x_u, soft_u, x_l, targets_l):
        seen.append((0 if x_u is None else x_u.shape[0], 0 if x_l is None else x_l.shape[0],
                     0 if targets_l is None else targets_l[0].shape[0]))
        return {"3d": np.float32(0), "dice_3d": np.float32(0), "kl_3d": np.float32(0)}
    t.step_3d = spy
    t.batch_size, t.mn_phase, t.mn_unlabeled_share = 2, TRAIN_3D, 0.8
    t.current_epoch = next(e for e in range(t.num_epochs) if t.mn_plan.phase(e) == TRAIN_3D)
    t.mn_composition = (2, 2)
    assert [t.iteration_composition(i) for i in range(5)] == [(2, 1), (2, 2), (2, 1), (2, 2), (2, 2)]
    labeled, unlabeled = FakeStream(t, 2, "labeled"), FakeStream(t, 2, "unlabeled")
    it = SemiSupBatchIterator(labeled, unlabeled, t.iteration_composition)
    for _ in range(5):
        t.train_step(next(it))
    assert seen == [(1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert sum(u for u, _, _ in seen) == 8 and sum(l for _, l, _ in seen) == 10
    assert t._mn_batch_unlabeled == [1, 2, 1, 2, 2]
    t.mn_composition, t.mn_unlabeled_share = (2, 0), 0.0
    assert all(t.iteration_composition(i) in (None, (2, 0)) for i in range(3))
    t.mn_phase = WARMUP
    assert t.iteration_composition(0) is None
    # the epoch's loader composition: LRG's share from the learning rate, B labeled kept
    t.mn_phase = None
    t.mn_lrg_mode, t.batch_size, t.num_iterations_per_epoch, t._has_unlabeled = "uniform", 4, 30, True
    t._labeled_stream = type("S", (), {"dataset": type("D", (), {"identifiers": ["a"] * 2})})()
    t._unlabeled_stream = type("S", (), {"dataset": type("D", (), {"identifiers": ["b"] * 6})})()
    b_l, b_u = t.get_batch_composition()
    assert b_l == 4 and b_u == max(t._mn_uniform_draws) >= 1
    t.mn_phase, t.mn_composition = TRAIN_3D, (b_l, b_u)
    assert [t.iteration_composition(i) for i in range(30)] == [(4, u) for u in t._mn_uniform_draws]
    del t.step_3d


def test_uniform_mode_draws_an_epoch_at_its_start_and_loads_only_what_it_uses(mn_env):
    """'No LRG' ablation: b_u ~ Binomial(B, |U|/(|L|+|U|)) per iteration. The epoch's draws are made at its start
    (the same sequence from the same seed as one draw per step), the loaders deliver (B − min b_u, max b_u), and
    iteration i uses exactly draw i."""
    t = make_trainer(mn_env, "nnUNetTrainerMN_uniform")
    t.initialize()
    n = 40
    t.batch_size, t.num_iterations_per_epoch, t._has_unlabeled = 4, n, True
    t._labeled_stream = type("S", (), {"dataset": type("D", (), {"identifiers": ["a"] * 2})})()
    t._unlabeled_stream = type("S", (), {"dataset": type("D", (), {"identifiers": ["b"] * 6})})()
    rng = np.random.default_rng(t.mn_uniform_seed)
    expected = np.array([rng.binomial(4, 6 / 8) for _ in range(n)])  # Binomial(B, |U|/(|L|+|U|)), drawn here
    t.current_epoch = next(e for e in range(t.num_epochs) if t.mn_plan.phase(e) == TRAIN_3D)
    t.mn_phase = TRAIN_3D
    b_l, b_u = t.get_batch_composition()
    assert t._mn_uniform_draws == list(expected)
    assert (b_l, b_u) == (4 - expected.min(), expected.max()) and b_u >= 1
    assert [t.iteration_composition(i) for i in range(n)] == [(4 - u, u) for u in expected]


def test_resume_with_other_settings_names_the_variant_and_a_legacy_window_is_adopted(mn_env):
    """A checkpoint whose M&N settings differ stops with the attribute lines of the variant that continues it; one
    trained with another named window names that window's variant; one from before the window existed (no
    ``input_window``) continues with the per-patch mapping it was trained with."""
    t = make_trainer(mn_env)
    t.initialize()
    state = t.get_method_state()
    with pytest.raises(ValueError, match=r"nnUNetTrainerMN_resume.*self\.mn_warmup_epochs = 3"):
        t.set_method_state({**state, "W": 3})
    with pytest.raises(ValueError, match=r"self\.mn_labeled_batch_intact = True"):
        t.set_method_state({**state, "labeled_batch_intact": True})
    with pytest.raises(ValueError, match=r"'reference' window.*-tr nnUNetTrainerMN_paper"):
        t.set_method_state({**state, "input_window": "reference"})
    legacy = {k: v for k, v in state.items() if k != "input_window"}
    t.set_method_state(legacy)
    assert t.mn_2d_input_window == "patch" and t.network_2d.per_patch and t.network_2d.window_low is None
    assert t.get_method_state()["input_window"] == "patch"
