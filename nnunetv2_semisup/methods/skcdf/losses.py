"""SKCDF losses and class-balanced Bernoulli masks (docs/skcdf.md).

- ``dcce``: DCCE(z, y) = CE(z, y) + SoftDice(softmax(z), y) — a *sum* (the paper writes ½(Dice + CE)); CE is the
  mean over all voxels of the batch; the Dice is a batch Dice over foreground classes with smooth 1 (+1e-8 in
  the denominator), as in the reference code (nnU-Net's DC_and_CE uses smooth 1e-5). Computed in float32.
- Masked DCCE for the auxiliary balanced heads, two semantics:
  * "reference" (default): DCCE(z ⊙ M, y ⊙ M) — masked voxels get zero logits (uniform softmax) and label 0; they
    stay in the CE mean (constant log C) and add 1/C to every foreground class's false positives, with zero
    gradient.
  * "true" (``_truemask``): CE averaged over the selected voxels only, Dice tp/fp/fn summed over selected voxels
    only; 0 if nothing is selected.
- ``balanced_probabilities``: p_c = min_k n_k / n_c over the labeled training cases (paper: N_L/N_C, which is ≥ 1
  and not a probability). Port decision: classes that never occur get p_c = 1 and are excluded from the minimum,
  with a warning (the reference divides by zero).
- ``unlabeled_probabilities``: q_c(e) = 1 − (e / (E − 1))·(1 − p_c): 1 at the first epoch, p_c at the last.
- ``bernoulli_mask``: M ~ Bernoulli(prob[label]) per voxel.
"""
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnunetv2.training.loss.dice import SoftDiceLoss

from nnunetv2_semisup.training.helpers import at_least_fp32, hard_label_map, one_hot, sigmoid_rampup

DICE_SMOOTH = 1.0
MASK_MODES = ("reference", "true")


# nnU-Net's soft Dice with the reference's settings: batch Dice, background excluded, smooth 1 (the reference adds
# 1e-8 to the denominator, nnU-Net clips it at 1e-8; with smooth 1 the two differ by < 1e-8 relative)
_BATCH_DICE_NO_BG = SoftDiceLoss(apply_nonlin=None, batch_dice=True, do_bg=False, smooth=DICE_SMOOTH, ddp=False)


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1 − mean_{c ≥ 1} (2tp + 1) / (2tp + fp + fn + 1), sums over batch and voxels (batch Dice, background
    excluded) = 1 + nnU-Net's ``SoftDiceLoss``. ``weight`` (B, 1, ...) restricts the sums to selected voxels
    (true-mask mode; nnU-Net's loss mask)."""
    return 1 + _BATCH_DICE_NO_BG(probs, onehot, loss_mask=weight)


def dcce_terms(logits: torch.Tensor, target: torch.Tensor):
    """(CE, Dice term) of DCCE for logits (B, C, ...) and integer labels (B, ...) or (B, 1, ...)."""
    target = hard_label_map(logits, target, "SKCDF DCCE")
    logits = at_least_fp32(logits)
    ce = F.cross_entropy(logits, target)
    dice = soft_dice_loss(torch.softmax(logits, 1), one_hot(target, logits.shape[1], logits.dtype))
    return ce, dice


def dcce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DCCE = CE + SoftDice (weights 1 and 1), reference semantics."""
    ce, dice = dcce_terms(logits, target)
    return ce + dice


def masked_dcce_terms(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, mode: str = "reference"):
    """(CE, Dice term) of the masked DCCE of a balanced head. ``mask`` (B, 1, ...) or (B, ...) in {0, 1}."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    target = hard_label_map(logits, target, "SKCDF DCCE")
    logits = at_least_fp32(logits)
    mask = mask.to(logits.dtype)
    if mask.ndim == logits.ndim - 1:
        mask = mask[:, None]
    if mode == "reference":
        return dcce_terms(logits * mask, target * mask[:, 0].long())
    selected = mask.sum()
    if selected.item() == 0:
        zero = (logits * 0).sum()  # keeps the graph (zero gradient) for the backward pass
        return zero, zero
    ce = (F.cross_entropy(logits, target, reduction="none") * mask[:, 0]).sum() / selected.clamp_min(1)
    dice = soft_dice_loss(torch.softmax(logits, 1), one_hot(target, logits.shape[1], logits.dtype), weight=mask)
    return ce, dice


def masked_dcce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, mode: str = "reference"):
    ce, dice = masked_dcce_terms(logits, target, mask, mode)
    return ce + dice


def class_voxel_counts(segmentations, num_classes: int) -> np.ndarray:
    """Voxel count per class over label maps; nnU-Net's −1 (outside the nonzero mask) counts as background, as the
    training pipeline maps it. Labels ≥ ``num_classes`` are an error."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for seg in segmentations:
        seg = np.asarray(seg).astype(np.int64).ravel()
        seg[seg < 0] = 0
        if seg.size and seg.max() >= num_classes:
            raise ValueError(f"segmentation contains label {seg.max()} but the dataset has only {num_classes} classes")
        counts += np.bincount(seg, minlength=num_classes)
    return counts


def balanced_probabilities(counts: Sequence[int], class_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """p_c = min_{k present} n_k / n_c in (0, 1]; the rarest present class gets 1. Absent classes (n_c = 0) get
    p_c = 1 and a warning (never NaN/inf)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    p = np.ones_like(counts)
    if not present.any():
        warnings.warn("SKCDF: no class occurs in the labeled training cases; balanced-head probabilities set to 1.")
        return p
    if not present.all():
        names = [class_names[i] if class_names else str(i) for i in np.flatnonzero(~present)]
        warnings.warn(f"SKCDF: class(es) {', '.join(names)} never occur in the labeled training cases; their "
                      f"balanced-head Bernoulli probability is set to 1 and they are ignored for the minimum count.")
    p[present] = counts[present].min() / counts[present]
    return p


def unlabeled_probabilities(p: Sequence[float], epoch: int, num_epochs: int) -> np.ndarray:
    """q_c(e) = 1 − t·(1 − p_c), t = min(e / (E − 1), 1) (t = 1 if E = 1): q(0) = 1, q(E − 1) = p."""
    p = np.asarray(p, dtype=np.float64)
    t = 1.0 if num_epochs <= 1 else min(max(epoch, 0) / (num_epochs - 1), 1.0)
    return 1.0 - t * (1.0 - p)


def bernoulli_mask(probabilities, labels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """M ~ Bernoulli(probabilities[labels]) per voxel; labels (B, ...) or (B, 1, ...) → float mask (B, 1, ...)."""
    if labels.ndim >= 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    probs = torch.as_tensor(np.asarray(probabilities), dtype=torch.float32, device=labels.device)
    return torch.bernoulli(probs[labels.long()], generator=generator)[:, None]


def sigmoid_rampup_weight(epoch: int, num_epochs: int, lambda_u: float = 10.0, rampup_fraction: float = 1.0) -> float:
    """w(e) = λ_u·exp(−5(1 − min(e, R)/R)²), R = f·(E − 1) (the published ramp: f = 1, without the reference's
    one-epoch lag); λ_u if R = 0."""
    if not 0.0 <= rampup_fraction <= 1.0:
        raise ValueError(f"rampup_fraction must be in [0, 1] (the share of the run the ramp spans), got {rampup_fraction}")
    return float(lambda_u * sigmoid_rampup(max(epoch, 0), rampup_fraction * (num_epochs - 1)))