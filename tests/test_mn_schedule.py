"""M&N schedules, LRG and epoch bookkeeping (docs/spec/mn.md §5 properties 1–8, 22 first half)."""
import math

import numpy as np
import pytest

from nnunetv2_semisup.methods.mn.schedule import (TRAIN_2D, TRAIN_3D, WARMUP, MNEpochPlan, ModelLRScheduler,
                                                  PolySchedule, ReferenceCompositeSchedule, WarmupCosineSchedule,
                                                  due_pseudo_label_refreshes, lr_warmup_epochs, warmup_stage_epochs)

from nnunetv2_semisup.methods.mn.lrg import (cotraining_lr_peak, epoch_composition, iteration_unlabeled, lrg_linear,
                                             lrg_paper, lrg_ratio, lrg_uniform, unlabeled_share)


def first_epochs(values, offset=0):
    """{value: first index at which it occurs}."""
    out = {}
    for i, v in enumerate(values):
        out.setdefault(v, i + offset)
    return out


def test_reference_schedule_values():  # property 1
    s = ReferenceCompositeSchedule(1.0, total=4000, warmup=50, restart=500)
    # lr(499) = sin²(π/900) = 1.21846e-5, lr(3999) = sin²(π/7000) = 2.01420e-7 (the spec rounds the latter to
    # 2.01e-7, which is 2e-3 away in relative terms, so the exact value is used with the spec's tolerance 1e-3)
    expected = {0: 0.01, 25: 0.505, 50: 1.0, 499: 1.21846e-5, 500: 1.0, 3999: 2.01420e-7}
    for e, v in expected.items():
        assert s(e) == pytest.approx(v, rel=1e-3), e


def test_paper_lrg_with_reference_schedule():  # property 2
    s = ReferenceCompositeSchedule(1.0, 4000, 50, 500)
    b_u = [lrg_paper(5, s(500 + t), s.initial_lr, s.final_lr) for t in range(3500)]
    assert first_epochs(b_u) == {0: 0, 1: 1034, 2: 1526, 3: 1975, 4: 2467}
    assert max(b_u) == 4


def test_linear_lrg():  # property 3
    b_u = [lrg_linear(5, 500 + t, 500, 4000) for t in range(3500)]
    assert first_epochs(b_u) == {0: 0, 1: 700, 2: 1400, 3: 2100, 4: 2800}
    assert 5 not in b_u


def test_port_default_lrg_from_the_cotraining_start():  # property 4, corrected (docs/mn.md)
    """3D poly schedule at E = 1000 (W = 67, T = 534): r = (η(W) − η(e))/η(W) = 1 − ((1 − e/T)/(1 − W/T))^0.9, so
    the share ⌊5r⌋/5 first reaches k/5 at e = T − (T − W)·(1 − k/5)^(1/0.9) (derived by hand from the formula)."""
    W, T = 67, 534
    s = PolySchedule(0.01, T)
    peak = cotraining_lr_peak(s, W, T)
    assert peak == (W, pytest.approx(0.01 * (1 - W / T) ** 0.9))
    shares = [unlabeled_share(lrg_ratio("paper", e, W, T, lr=s(e), peak_epoch=peak[0], peak_lr=peak[1]), 5)
              for e in range(W, T)]
    assert shares[0] == 0 and max(shares) == pytest.approx(0.8)
    assert all(a <= b for a, b in zip(shares, shares[1:]))
    firsts = first_epochs([round(5 * x) for x in shares], offset=W)
    for k in (1, 2, 3, 4):
        expected = T - (T - W) * (1 - k / 5) ** (1 / 0.9)
        assert abs(firsts[k] - expected) <= 1, (k, firsts[k], expected)


def test_lrg_measured_from_the_peak_after_an_lr_warmup():
    """Co-training that starts inside a model's LR warm-up (W = 0): r = 0 until the LR peak, then the decay."""
    s = WarmupCosineSchedule(1e-3, 100, 10)
    peak = cotraining_lr_peak(s, 0, 100)
    assert peak == (10, pytest.approx(1e-3))
    rs = [lrg_ratio("paper", e, 0, 100, lr=s(e), peak_epoch=peak[0], peak_lr=peak[1]) for e in range(100)]
    assert rs[:11] == [0.0] * 11 and rs[55] == pytest.approx(0.5) and 0.99 < rs[99] < 1
    # eq. 10 with the restart schedule starts at 0 by itself: the peak is η₀ at the restart
    ref = ReferenceCompositeSchedule(1.0, 4000, 50, 500)
    assert cotraining_lr_peak(ref, 500, 4000) == (500, 1.0)


def test_share_composition_and_iterations():
    """The share is realised at any B with B patches per iteration: over n iterations ⌊n·s·B⌋ unlabeled, each
    iteration ⌊s·B⌋ or ⌈s·B⌉; the loaders deliver (B − ⌊s·B⌋, ⌈s·B⌉)."""
    assert unlabeled_share(0.999999, 5) == pytest.approx(0.8) and unlabeled_share(0.5, 5) == pytest.approx(0.4)
    assert unlabeled_share(0.19, 5) == 0 and unlabeled_share(1.0, 5) == 1
    for B in (1, 2, 3, 5, 8):
        for k in range(6):
            s = k / 5
            per_it = [iteration_unlabeled(i, s, B) for i in range(250)]
            assert sum(per_it) == math.floor(250 * s * B + 1e-9)
            assert set(per_it) <= {math.floor(s * B + 1e-9), math.ceil(s * B - 1e-9)}
            b_l, b_u = epoch_composition(s, B)
            assert b_u == max(per_it) and all(B - u <= b_l for u in per_it)
            if (s * B) % 1 == 0:
                assert (b_l, b_u) == (B - round(s * B), round(s * B))  # e.g. B = 5: exactly the paper's batch


@pytest.mark.parametrize("mode", ["paper", "linear"])
def test_ratio_in_unit_interval_and_zero_at_cotraining_start(mode):  # property 5
    E = 1000
    plan = MNEpochPlan(E, warmup_stage_epochs(E))
    for m, sched in ((TRAIN_3D, PolySchedule(0.01, plan.T_3d)),
                     (TRAIN_2D, WarmupCosineSchedule(1e-3, plan.T_2d, lr_warmup_epochs(plan.T_2d, 50 / 4000)))):
        T = plan.schedule_length(m)
        peak = cotraining_lr_peak(sched, plan.warmup_epochs, T)
        rs = [lrg_ratio(mode, e, plan.warmup_epochs, T, lr=sched(e), peak_epoch=peak[0], peak_lr=peak[1])
              for e in range(plan.warmup_epochs, T)]
        assert rs[0] == 0 and all(0 <= r < 1 for r in rs) and all(a <= b for a, b in zip(rs, rs[1:]))
    # uniform mode keeps every draw in [0, B] (b_l = B − b_u); warm-up is handled before drawing
    rng = np.random.default_rng(0)
    assert all(0 <= lrg_uniform(rng, 5, 4, 6) <= 5 for _ in range(100))


def test_uniform_mean():  # property 6
    rng = np.random.default_rng(123)
    B, n_l, n_u, n = 5, 4, 16, 10_000
    draws = np.array([lrg_uniform(rng, B, n_l, n_u) for _ in range(n)])
    p = n_u / (n_l + n_u)
    se = math.sqrt(B * p * (1 - p) / n)
    assert abs(draws.mean() - B * p) < 3 * se
    assert set(np.unique(draws)) <= set(range(B + 1))


class _Opt:
    def __init__(self):
        self.param_groups = [{"lr": 0.0}]


def test_warmup_is_the_papers_share_of_each_models_schedule():  # §3.3 correction
    """Paper: 500 of each model's 4000 epochs (12.5 %) are supervised; the default W gives each model that share."""
    for E in (100, 250, 1000, 3000, 7500):
        plan = MNEpochPlan(E, warmup_stage_epochs(E, 0.125))
        for T in (plan.T_3d, plan.T_2d):
            assert abs(plan.warmup_epochs / T - 0.125) <= 1 / T
    assert warmup_stage_epochs(1000, 0.125) == 67  # 1000/15
    fixed = MNEpochPlan(1000, warmup_stage_epochs(1000, 0.125, cotraining=False), cotraining=False)
    assert fixed.warmup_epochs == 125 and fixed.T_3d == 1000  # the 3D model trains every epoch: W = f·E
    assert warmup_stage_epochs(1000, 0.125, absolute=500) == 500 and warmup_stage_epochs(6, 0.125) == 1


def test_epoch_bookkeeping_E1000():  # property 7
    plan = MNEpochPlan(1000, warmup_stage_epochs(1000))
    assert plan.warmup_epochs == 67 and plan.T_3d == 534 and plan.T_2d == 533
    assert plan.phase(66) == WARMUP and plan.phase(67) == TRAIN_3D and plan.phase(68) == TRAIN_2D  # j = 1, 2
    steps = {}
    for m, T in ((TRAIN_3D, plan.T_3d), (TRAIN_2D, plan.T_2d)):
        sch = ModelLRScheduler(_Opt(), PolySchedule(1.0, T), plan, m)
        own = [sch.last_own_epoch for e in range(1000) if sch.step(e)]
        assert sch.num_steps == T and own == list(range(T))  # each own epoch exactly once, in order
        steps[m] = sch.num_steps
    assert steps == {TRAIN_3D: 534, TRAIN_2D: 533}
    fixed = MNEpochPlan(1000, 125, cotraining=False)
    assert fixed.T_3d == 1000 and fixed.T_2d == 125
    sch = ModelLRScheduler(_Opt(), PolySchedule(1.0, 125), fixed, TRAIN_2D)
    assert sum(sch.step(e) for e in range(1000)) == 125
    assert fixed.own_epoch(999, TRAIN_2D) == 125 and fixed.own_epoch(1000, TRAIN_2D) == 125
    assert all(fixed.phase(e) == TRAIN_3D for e in range(125, 1000))


def test_2d_schedule():  # property 8
    plan = MNEpochPlan(1000, 125)
    T = plan.T_2d
    w = lr_warmup_epochs(T, 50 / 4000)
    assert w == 7
    s = WarmupCosineSchedule(1e-3, T, w)
    assert s(0) == pytest.approx(1e-5, rel=1e-12)
    assert s(w) == pytest.approx(1e-3, rel=1e-12)
    lrs = [s(e) for e in range(w, T)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert s(T - 1) < 1e-3 * 1e-3


def test_pseudo_label_refresh_points():  # property 22 (schedule part)
    plan = MNEpochPlan(1000, 125)
    fractions = (0.25, 0.375, 0.5, 0.75)
    done, served = set(), []
    for e in range(1000):
        due = due_pseudo_label_refreshes(e, plan, fractions, done)
        if due:
            served.append((e, tuple(due)))
            done.update(due)
    assert served[0] == (125, ("warmup",))
    expected_own = {f: math.ceil(f * plan.T_3d) for f in fractions}  # 141, 212, 282, 423
    for e, due in served[1:]:
        assert len(due) == 1 and plan.phase(e) == TRAIN_3D
        own = plan.own_epoch(e, TRAIN_3D)
        assert own == expected_own[due[0]]  # the first 3D epoch with own counter ≥ ⌈f·T_3D⌉
    assert [d for _, ds in served for d in ds] == ["warmup", *fractions]  # exactly once each


def test_default_refresh_points_follow_the_papers_proportions():
    """E = 1000 default: warm-up refresh at W = 67, then at own 3D epochs ⌈f·534⌉ = 134, 201, 267, 401 — as the
    reference's 500 → 1000, 1500, 2000, 3000 of 4000 (the first fraction 67 own epochs after the warm-up one)."""
    plan = MNEpochPlan(1000, warmup_stage_epochs(1000))
    done, served = set(), []
    for e in range(1000):
        due = due_pseudo_label_refreshes(e, plan, (0.25, 0.375, 0.5, 0.75), done)
        if due:
            served.append((plan.own_epoch(e, TRAIN_3D), tuple(due)))
            done.update(due)
    assert served == [(67, ("warmup",)), (134, (0.25,)), (201, (0.375,)), (267, (0.5,)), (401, (0.75,))]


def test_lrg_ratios_by_hand_with_a_final_lr_above_zero():
    """Paper eq. 10 r = (η₀ − η)/(η₀ − η_final) with η_final ≠ 0 (a clamp at 1 below η_final), its default η_final = 0,
    and the reference's linear r = (e − W)/(T − W), 0 before W."""
    assert lrg_paper(5, 0.06, 0.1, 0.02) == 2  # r = 0.04 / 0.08 = 0.5, ⌊2.5⌋
    assert lrg_paper(5, 0.0, 0.1, 0.02) == 5  # below η_final: r = 1.25 clamped to 1
    assert lrg_paper(4, 0.05, 0.1) == 2  # default η_final = 0: r = 0.5
    assert lrg_ratio("paper", 3, 0, 10, lr=0.06, peak_epoch=1, peak_lr=0.1, final_lr=0.02) == pytest.approx(0.5)
    assert lrg_ratio("paper", 3, 0, 10, lr=0.01, peak_epoch=1, peak_lr=0.1, final_lr=0.02) == 1.0
    assert lrg_ratio("paper", 0, 0, 10, lr=0.05, peak_epoch=1, peak_lr=0.1) == 0.0  # before the co-training peak
    assert lrg_ratio("paper", 3, 0, 10, lr=0.01, peak_epoch=1, peak_lr=0.1, final_lr=0.1) == 0.0  # no decay left
    for e, r in ((0, 0.0), (3, 0.0), (4, 0.0), (6, 2 / 6), (9, 5 / 6), (12, 1.0)):  # W = 4, T = 10
        assert lrg_ratio("linear", e, 4, 10) == pytest.approx(r), e
    assert lrg_linear(5, 3, 4, 10) == 0 and lrg_linear(5, 4, 4, 10) == 0 and lrg_linear(6, 7, 4, 10) == 3
    with pytest.raises(ValueError, match="unknown mn_lrg_mode 'uniform'"):
        lrg_ratio("uniform", 3, 0, 10)
    # a schedule too short for co-training: its peak is the LR at W
    assert cotraining_lr_peak(lambda e: 1.0 / (e + 1), 5, 5) == (5, 1.0 / 6)


def test_schedule_bounds_and_the_per_model_scheduler_by_hand():
    # W: 0 and E are allowed, outside them refused; no fraction means no supervised stage
    assert warmup_stage_epochs(10, fraction=0) == 0 and warmup_stage_epochs(10, absolute=0) == 0
    assert warmup_stage_epochs(10, absolute=10) == 10
    for bad in (-1, 11):
        with pytest.raises(ValueError, match=f"warm-up stage of {bad} epochs does not fit into num_epochs=10"):
            warmup_stage_epochs(10, absolute=bad)
    # E = 10, W = 3 with co-training: epochs 3, 5, 7, 9 train the 3D model, 4, 6, 8 the 2D model
    plan = MNEpochPlan(10, 3)
    assert [plan.phase(e) for e in range(10)] == [WARMUP] * 3 + [TRAIN_3D, TRAIN_2D] * 3 + [TRAIN_3D]
    assert (plan.T_3d, plan.T_2d, plan.schedule_length(TRAIN_3D), plan.schedule_length(TRAIN_2D)) == (7, 6, 7, 6)
    assert [plan.own_epoch(e, TRAIN_3D) for e in (3, 4, 5, 6, 9)] == [3, 4, 4, 5, 6]
    assert [plan.own_epoch(e, TRAIN_2D) for e in (3, 4, 5, 6, 9)] == [3, 3, 4, 4, 6]
    alone = MNEpochPlan(10, 3, cotraining=False)  # the 3D model trains every epoch, the 2D model only in the warm-up
    assert [alone.own_epoch(e, TRAIN_3D) for e in (5, 9)] == [5, 9] and alone.own_epoch(9, TRAIN_2D) == 3
    assert (alone.T_3d, alone.T_2d) == (10, 3)
    # LR schedules: nnU-Net's poly ends at 0; the cosine ones refuse empty stages
    assert PolySchedule(0.01, 10).final_lr == 0.0 and PolySchedule(0.01, 10)(10) == 0.0
    for total, warmup in ((5, 0), (0, 1)):
        with pytest.raises(ValueError, match=f"total ≥ 1 and warm-up ≥ 1 epochs, got {total} and {warmup}"):
            WarmupCosineSchedule(1.0, total, warmup)
    assert WarmupCosineSchedule(1.0, 1, 1)(0) == pytest.approx(0.01)
    for warmup, restart, total in ((0, 5, 10), (5, 5, 10), (2, 10, 10)):
        with pytest.raises(ValueError, match=rf"0 < warm-up \({warmup}\) < restart \({restart}\) < total \({total}\)"):
            ReferenceCompositeSchedule(1.0, total, warmup, restart)
    ReferenceCompositeSchedule(1.0, 3, 1, 2)  # the smallest valid one
    assert lr_warmup_epochs(40, 50 / 4000) == 1 and lr_warmup_epochs(4000, 50 / 4000) == 50
    # the per-model scheduler sets lr = schedule(own epoch) only in the epochs its model trains
    import torch
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=99.0)
    sched = ModelLRScheduler(opt, lambda e: 0.1 * (e + 1), plan, TRAIN_2D)
    assert sched.get_last_lr() == [99.0] and sched.state_dict()["last_own_epoch"] is None
    assert sched.step(5) is False and opt.param_groups[0]["lr"] == 99.0  # a 3D epoch
    assert sched.step(6) is True and opt.param_groups[0]["lr"] == pytest.approx(0.5)  # own epoch 4
    assert sched.get_last_lr() == [pytest.approx(0.5)]
    assert sched.state_dict() == {"num_steps": 1, "last_own_epoch": 4, "last_lr": [pytest.approx(0.5)]}
    # refresh points: none at the end of a warm-up that does not exist
    assert "warmup" not in due_pseudo_label_refreshes(0, MNEpochPlan(10, 0), (), set())
    assert due_pseudo_label_refreshes(3, plan, (), set()) == ["warmup"]
    assert due_pseudo_label_refreshes(1, MNEpochPlan(10, 1), (), set()) == ["warmup"]  # a one-epoch warm-up too
    assert due_pseudo_label_refreshes(2, plan, (), set()) == []
