"""M&N schedules, LRG and epoch bookkeeping (spec mn.md §5 properties 1–8, 22 first half)."""
import math

import numpy as np
import pytest

from nnunetv2_semisup.training.mn_schedule import (TRAIN_2D, TRAIN_3D, WARMUP, MNEpochPlan, ModelLRScheduler,
                                                   PolySchedule, ReferenceCompositeSchedule, WarmupCosineSchedule,
                                                   batch_composition, due_pseudo_label_refreshes, lr_warmup_epochs,
                                                   lrg_linear, lrg_paper, lrg_uniform, warmup_stage_epochs)


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


@pytest.mark.parametrize("B,T", [(5, 563), (2, 1000), (3, 77)])
def test_port_default_poly_lrg(B, T):  # property 4
    s = PolySchedule(0.01, T)
    for e in range(T):
        b_u = lrg_paper(B, s(e), s.initial_lr, s.final_lr)
        assert b_u == math.floor(B * (1 - (1 - e / T) ** 0.9) + 1e-12)
        assert B - b_u >= 1
    if B == 5:
        firsts = first_epochs([lrg_paper(5, s(e), 0.01) for e in range(T)])
        for k, frac in zip((1, 2, 3, 4), (0.2196, 0.4331, 0.6387, 0.8327)):
            assert abs(firsts[k] - frac * T) <= 1 + 1e-9, (k, firsts[k], frac * T)


@pytest.mark.parametrize("mode", ["paper", "linear"])
def test_composition_sums_to_B_and_warmup_is_labeled_only(mode):  # property 5
    E, B = 1000, 5
    plan = MNEpochPlan(E, warmup_stage_epochs(E))
    sched = {TRAIN_3D: PolySchedule(0.01, plan.T_3d),
             TRAIN_2D: WarmupCosineSchedule(1e-3, plan.T_2d, lr_warmup_epochs(plan.T_2d, 50 / 4000))}
    for e in range(E):
        phase = plan.phase(e)
        m = TRAIN_3D if phase == WARMUP else phase
        own = plan.own_epoch(e, m)
        b_l, b_u = batch_composition(mode, B, phase, lr=sched[m](own), initial_lr=sched[m].initial_lr,
                                     own_epoch=own, warmup_epochs=plan.warmup_epochs,
                                     total=plan.schedule_length(m))
        assert b_l + b_u == B and b_l >= 1
        if e < plan.warmup_epochs:
            assert b_u == 0
    # uniform mode keeps every draw in [0, B] (b_l = B − b_u); warm-up is handled before drawing
    rng = np.random.default_rng(0)
    assert all(0 <= lrg_uniform(rng, B, 4, 6) <= B for _ in range(100))


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


def test_epoch_bookkeeping_E1000():  # property 7
    plan = MNEpochPlan(1000, warmup_stage_epochs(1000))
    assert plan.warmup_epochs == 125 and plan.T_3d == 563 and plan.T_2d == 562
    assert plan.phase(124) == WARMUP and plan.phase(125) == TRAIN_3D and plan.phase(126) == TRAIN_2D  # j = 1, 2
    steps = {}
    for m, T in ((TRAIN_3D, plan.T_3d), (TRAIN_2D, plan.T_2d)):
        sch = ModelLRScheduler(_Opt(), PolySchedule(1.0, T), plan, m)
        own = [sch.last_own_epoch for e in range(1000) if sch.step(e)]
        assert sch.num_steps == T and own == list(range(T))  # each own epoch exactly once, in order
        steps[m] = sch.num_steps
    assert steps == {TRAIN_3D: 563, TRAIN_2D: 562}
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
