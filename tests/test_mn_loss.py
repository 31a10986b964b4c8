"""M&N loss (docs/spec/mn.md §5 properties 9–12 and 14)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunetv2_semisup.methods.mn.losses import (MNLoss, build_targets, deep_supervision_loss, dice_sq, kl_mean,
                                             pool_soft_target, scale_factors)
from nnunetv2_semisup.training.helpers import one_hot


def test_kl_one_hot_equals_ce_over_C():  # property 9a
    g = torch.Generator().manual_seed(0)
    N, C = 3, 4
    z = torch.randn(N, C, 5, 6, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (N, 5, 6, 7), generator=g)
    y = one_hot(labels, C).double()
    assert kl_mean(z, y).dtype == torch.float64
    assert abs(kl_mean(z, y).item() - F.cross_entropy(z, labels).item() / C) < 1e-10


def test_kl_soft_targets_by_hand():  # property 9b
    g = torch.Generator().manual_seed(1)
    N, C = 2, 3
    z = torch.randn(N, C, 4, 5, generator=g, dtype=torch.float64)
    y = torch.softmax(3 * torch.randn(N, C, 4, 5, generator=g, dtype=torch.float64), 1)
    y[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # zeros: 0·log 0 = 0
    logp = torch.log_softmax(z, 1)
    hand = 0.0
    for idx in np.ndindex(*y.shape):
        yi = y[idx].item()
        if yi > 0:
            hand += yi * (np.log(yi) - logp[idx].item())
    hand /= N * C * 4 * 5
    assert abs(kl_mean(z, y).item() - hand) < 1e-12


def test_dice_perfect_and_uniform_background():  # property 10
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    y = one_hot(labels[:, 0], 3).double()
    assert dice_sq(20 * y, y).item() < 1e-4
    # C = 2, all-background target, uniform prediction p = 0.5
    V = 10
    y = torch.zeros(1, 2, V, dtype=torch.float64)
    y[:, 0] = 1
    z = torch.zeros(1, 2, V, dtype=torch.float64)
    # dice_bg = 2·0.5·V / (0.25·V + V) = 0.8, dice_fg = 0 / (0.25·V) = 0  ->  loss = 1 − 0.4 = 0.6
    assert dice_sq(z, y).item() == pytest.approx(0.6, abs=1e-12)


def test_dice_is_batch_global_and_empty_channel_counts_zero():  # property 11
    # sample 0: target all class 0, predicted p = (0.5, 0.5); sample 1: target all class 1, predicted perfectly
    y = torch.zeros(2, 2, 4, dtype=torch.float64)
    y[0, 0] = 1
    y[1, 1] = 1
    z = torch.zeros(2, 2, 4, dtype=torch.float64)
    z[1, 1] = 50.0
    batch = dice_sq(z, y).item()
    per_sample = 0.5 * (dice_sq(z[:1], y[:1]).item() + dice_sq(z[1:], y[1:]).item())
    # by hand (p = (≈0, ≈1) in sample 1): batch bg: 2·2 / (1 + 4) = 0.8; fg: 2·4 / ((1 + 4) + 4) = 8/9
    # → batch = 1 − (0.8 + 8/9)/2 = 0.1556. Per sample: sample 0 → 1 − (0.8 + 0)/2 = 0.6; sample 1: bg has
    # Σp² + Σy² ≈ 0 → dice 0 (clamp), fg 1 → 0.5; mean 0.55
    assert batch == pytest.approx(1 - (0.8 + 8 / 9) / 2, abs=1e-9)
    assert per_sample == pytest.approx(0.55, abs=1e-9)
    assert abs(batch - per_sample) > 0.3
    # channel 2 has Σp² + Σy² = 0 (exp(−1e4) underflows to 0): its dice is 0 (clamp 1e-6), not NaN
    y3 = torch.zeros(1, 3, 6, dtype=torch.float64)
    y3[0, 0, :3] = 1
    y3[0, 1, 3:] = 1
    z3 = 20 * y3.clone()
    z3[:, 2] = -1e4
    assert torch.softmax(z3, 1)[:, 2].abs().sum().item() == 0
    assert dice_sq(z3, y3).item() == pytest.approx(1 - (1 + 1 + 0) / 3, abs=1e-6)


def test_combined_loss_permutation_invariant():  # property 12
    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 3, 4, 4, 4, generator=g, dtype=torch.float64)
    y = torch.softmax(torch.randn(5, 3, 4, 4, 4, generator=g, dtype=torch.float64), 1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    loss = MNLoss()
    assert abs(loss(z, y).item() - loss(z[perm], y[perm]).item()) < 1e-12


def test_deep_supervision_targets_and_weights():  # property 14
    g = torch.Generator().manual_seed(4)
    C = 3
    # nnU-Net DS scales of pool kernels [[1,1,1],[1,2,2],[2,2,2],[2,2,2]]
    scales = [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5], [0.5, 0.25, 0.25]]
    factors = scale_factors(scales)
    assert factors == [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    soft = torch.softmax(torch.randn(2, C, 8, 8, 8, generator=g, dtype=torch.float64), 1)
    for f in factors:
        pooled = pool_soft_target(soft, f)
        assert torch.allclose(pooled.sum(1), torch.ones_like(pooled[:, 0]), atol=1e-6)
    labels = torch.randint(0, C, (1, 1, 2, 2, 2), generator=g)
    pooled = pool_soft_target(one_hot(labels[:, 0], C), (2, 2, 2))
    fractions = torch.tensor([(labels == c).double().mean().item() for c in range(C)], dtype=torch.float64)
    assert torch.allclose(pooled.flatten().double(), fractions)

    weights = np.array([2 / 3, 1 / 3, 0])  # nnU-Net's 1, 1/2, 0 normalised (the trainer takes them from nnU-Net)
    # labeled label maps at each scale (what nnU-Net's DA pipeline yields) + soft unlabeled targets
    label_maps = [torch.randint(0, C, (1, 1, 8 // int(1 / s[0]), 8 // int(1 / s[1]), 8 // int(1 / s[2])),
                                generator=g).double() for s in scales]
    targets = build_targets(soft[:1], label_maps, C, factors)
    assert [tuple(t.shape) for t in targets] == [(2, C, 8, 8, 8), (2, C, 8, 4, 4), (2, C, 4, 2, 2)]
    outputs = [torch.randn(*t.shape, generator=g, dtype=torch.float64) for t in targets]
    loss = MNLoss()
    total, dice, kl = deep_supervision_loss(loss, outputs, targets, weights)
    by_hand = sum(w * (dice_sq(o, t) + kl_mean(o, t)) for w, o, t in zip(weights, outputs, targets))
    assert abs(total.item() - by_hand.item()) < 1e-9
    assert abs((dice + kl).item() - total.item()) < 1e-12
    # nnU-Net's own wrapper around MNLoss (what validation uses) gives the same value
    assert abs(DeepSupervisionWrapper(loss, weights)(outputs, targets).item() - total.item()) < 1e-9
