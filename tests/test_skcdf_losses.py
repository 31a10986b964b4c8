"""SKCDF losses, masks, probabilities and ramp (docs/spec/skcdf.md §5, properties 9–15)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunetv2_semisup.methods.skcdf.losses import (balanced_probabilities, bernoulli_mask, class_voxel_counts, dcce,
                                                  dcce_terms, masked_dcce, masked_dcce_terms,
                                                  sigmoid_rampup_weight, soft_dice_loss, unlabeled_probabilities)


def _data(b=2, c=4, shape=(3, 4, 5), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, *shape, generator=g, dtype=dtype)
    target = torch.randint(0, c, (b, *shape), generator=g)
    return logits, target


# ----------------------------------------------------------------------------------------- property 9
def test_balanced_probabilities_values():
    p = balanced_probabilities([1000, 100, 10, 50])
    np.testing.assert_allclose(p, [0.01, 0.1, 1.0, 0.2], rtol=0, atol=1e-15)
    assert ((p > 0) & (p <= 1)).all()


def test_balanced_probabilities_absent_class_warns_and_is_guarded():
    with pytest.warns(UserWarning, match="never occur"):
        p = balanced_probabilities([400, 0, 20, 80], ["bg", "organ", "organ2", "lesion"])
    np.testing.assert_allclose(p, [0.05, 1.0, 1.0, 0.25], rtol=0, atol=1e-15)
    assert np.isfinite(p).all()
    with pytest.warns(UserWarning, match="no class"):
        p = balanced_probabilities([0, 0, 0])
    np.testing.assert_array_equal(p, [1.0, 1.0, 1.0])


def test_class_voxel_counts_maps_minus_one_to_background():
    segs = [np.array([[-1, 0, 1], [2, 2, 3]]), np.array([[3, 3, -1]])]
    np.testing.assert_array_equal(class_voxel_counts(segs, 4), [3, 1, 2, 3])
    with pytest.raises(ValueError, match="label 5"):
        class_voxel_counts([np.array([5])], 4)


# ----------------------------------------------------------------------------------------- property 10
def test_unlabeled_probabilities_linear_decay():
    p = np.array([0.01, 0.2, 0.5, 1.0])
    e = 11
    np.testing.assert_array_equal(unlabeled_probabilities(p, 0, e), [1, 1, 1, 1])
    np.testing.assert_allclose(unlabeled_probabilities(p, e - 1, e), p, rtol=0, atol=1e-15)
    np.testing.assert_allclose(unlabeled_probabilities(p, 4, e), 1 - 0.4 * (1 - p), rtol=0, atol=1e-15)
    qs = np.stack([unlabeled_probabilities(p, k, e) for k in range(e)])
    np.testing.assert_allclose(np.diff(qs, 2, axis=0), 0, atol=1e-12)  # linear in the epoch


# ----------------------------------------------------------------------------------------- property 11
def test_reference_mask_all_ones_equals_unmasked():
    logits, target = _data()
    m = torch.ones(2, 1, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(masked_dcce(logits, target, m, "reference"), dcce(logits, target), atol=1e-12, rtol=0)


def test_reference_mask_all_zero_constants():
    c = 4
    logits, target = _data(c=c)
    v = target.numel()
    ce, dice = masked_dcce_terms(logits * 7.3, target, torch.zeros(2, 1, 3, 4, 5), "reference")
    assert abs(ce.item() - math.log(c)) < 1e-6
    assert abs(dice.item() - (1 - 1 / (v / c + 1 + 1e-8))) < 1e-6


@pytest.mark.parametrize("mode", ["reference", "true"])
def test_masked_voxels_have_zero_gradient(mode):
    logits, target = _data(seed=3)
    logits.requires_grad_(True)
    mask = (torch.rand(2, 1, 3, 4, 5, generator=torch.Generator().manual_seed(4)) < 0.4).double()
    masked_dcce(logits, target, mask, mode).backward()
    g = logits.grad
    sel = mask.expand_as(g).bool()
    assert torch.count_nonzero(g[~sel]) == 0
    assert torch.count_nonzero(g[sel]) > 0


# ----------------------------------------------------------------------------------------- property 12
def test_true_mask_mode():
    logits, target = _data(seed=5)
    ones = torch.ones(2, 1, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(masked_dcce(logits, target, ones, "true"), dcce(logits, target), atol=1e-12, rtol=0)
    lg = logits.clone().requires_grad_(True)
    zero = masked_dcce(lg, target, torch.zeros_like(ones), "true")
    assert zero.item() == 0.0
    zero.backward()
    assert torch.count_nonzero(lg.grad) == 0
    mask = (torch.rand(2, 1, 3, 4, 5, generator=torch.Generator().manual_seed(6)) < 0.5).double()
    ce, _ = masked_dcce_terms(logits, target, mask, "true")
    sel = mask[:, 0].bool()
    expected = F.cross_entropy(logits.movedim(1, -1)[sel], target[sel])
    torch.testing.assert_close(ce, expected, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------- property 13
def test_bernoulli_selection_rate_matches_p():
    p = np.array([0.02, 0.3, 0.75, 1.0])
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(2500).reshape(2, 1, 50, 100)  # 2500 voxels per class
    counts = np.zeros(4)
    n_draws = 20
    for _ in range(n_draws):
        m = bernoulli_mask(p, labels, generator=g)
        assert m.shape == (2, 1, 50, 100)
        for c in range(4):
            counts[c] += m[labels == c].sum().item()
    n = 2500 * n_draws
    rate = counts / n
    se = np.sqrt(p * (1 - p) / n)
    assert (np.abs(rate - p) <= 3 * se + 1e-12).all(), (rate, p)
    assert rate[3] == 1.0


# ----------------------------------------------------------------------------------------- property 14
def test_dcce_near_zero_for_confident_correct_logits():
    target = torch.randint(0, 4, (2, 3, 4, 5), generator=torch.Generator().manual_seed(7))
    logits = 20.0 * F.one_hot(target, 4).movedim(-1, 1).double()
    ce, dice = dcce_terms(logits, target)
    assert ce.item() < 1e-6 and dice.item() < 1e-3


def test_soft_dice_ignores_background_and_absent_class_scores_one():
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    target[0, 2:, :2] = 2  # class 3 absent from the target
    onehot = F.one_hot(target, 4).movedim(-1, 1).double()
    probs = onehot.clone()  # perfect prediction, class 3 never predicted
    loss = soft_dice_loss(probs, onehot)
    assert abs(loss.item()) < 1e-7  # dc_3 = 1/(1 + 1e-8)
    probs_bg = probs.clone()
    probs_bg[:, 0] = torch.rand_like(probs_bg[:, 0])  # change background predictions only
    assert soft_dice_loss(probs_bg, onehot).item() == loss.item()
    probs_fp = probs.clone()
    probs_fp[0, 3, 3, 3, 3] = 1.0  # absent class predicted once → dc_3 = 1/2
    assert abs(soft_dice_loss(probs_fp, onehot).item() - (1 - (1 + 1 + 0.5) / 3)) < 1e-7


# ----------------------------------------------------------------------------------------- property 15
def test_rampup_values():
    e = 1501  # R = 1500 as in the reference
    assert sigmoid_rampup_weight(0, e) == pytest.approx(10 * math.exp(-5), abs=1e-12)
    assert sigmoid_rampup_weight(0, e) == pytest.approx(0.06738, abs=1e-5)
    assert sigmoid_rampup_weight(500, e) == pytest.approx(1.08, abs=5e-3)
    assert sigmoid_rampup_weight(1000, e) == pytest.approx(5.74, abs=5e-3)
    assert sigmoid_rampup_weight(1500, e) == 10.0
    ws = [sigmoid_rampup_weight(k, e) for k in range(0, 1600, 7)]
    assert all(b >= a for a, b in zip(ws, ws[1:]))
    assert sigmoid_rampup_weight(0, 1) == 10.0
    # the early ramp spans 40 % of the run: R = 0.4 · 1500 = 600, so epoch 300 is t = 1/2 and 600 is full weight
    assert sigmoid_rampup_weight(300, e, rampup_fraction=0.4) == pytest.approx(10 * math.exp(-5 / 4), abs=1e-12)
    assert sigmoid_rampup_weight(600, e, rampup_fraction=0.4) == sigmoid_rampup_weight(1500, e, 10.0, 0.4) == 10.0
    assert sigmoid_rampup_weight(5, e, rampup_fraction=0.0) == 10.0
    with pytest.raises(ValueError, match="rampup_fraction must be in"):
        sigmoid_rampup_weight(0, e, rampup_fraction=1.5)


def test_class_counts_every_class_even_absent_ones_and_refuse_a_label_equal_to_the_class_count():
    counts = class_voxel_counts([np.array([[0, 1], [1, -1]]), np.array([0, 0, 1])], num_classes=4)
    assert counts.dtype == np.int64 and counts.tolist() == [4, 3, 0, 0]  # −1 counts as background; 2, 3 absent
    with pytest.raises(ValueError, match="label 3 but the dataset has only 3 classes"):
        class_voxel_counts([np.array([0, 1, 3])], num_classes=3)


def test_balanced_probabilities_treat_a_single_voxel_as_present_and_name_the_absent_classes():
    with pytest.warns(UserWarning, match=r"class\(es\) liver, tumour never occur"):
        p = balanced_probabilities([10, 0, 1, 0, 4], class_names=["bg", "liver", "vessel", "tumour", "kidney"])
    assert p.tolist() == pytest.approx([0.1, 1.0, 1.0, 1.0, 0.25])  # the one-voxel class is the rarest present
    with pytest.warns(UserWarning, match=r"class\(es\) 1 never occur"):
        balanced_probabilities([3, 0, 6])
