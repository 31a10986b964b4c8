"""The M&N loss: L(z, y) = Dice_sq(z, y) + KL_mean(z, y) (docs/mn.md), and its deep-supervision form.

- ``dice_sq``: V-Net squared-denominator soft Dice, **batch-global** (sums over all samples and voxels together),
  background included, no smoothing: dice_c = 2 Σ p_c y_c / max(Σ p_c² + Σ y_c², 1e-6); loss = 1 − mean_c dice_c.
- ``kl_mean``: ``KLDivLoss(reduction='mean')`` with input log_softmax(z) and probability target y, i.e.
  Σ y (log y − log p) / (N·C·V) with 0·log 0 = 0. With one-hot y this is cross-entropy / C.
- Targets are probabilities with the logits' shape (soft teacher outputs, or one-hot ground truth). A label map
  (N, 1, ...) is one-hot encoded first (nnU-Net's validation passes label maps).
- Everything is computed in at least float32 (also under autocast; float64 inputs stay float64).

The paper's eq. 5 weighting (b_l/(b_l+b_u) labeled, b_u/(b_l+b_u) unlabeled) is realised implicitly, as in the
reference: one loss over the concatenated batch.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_semisup.training import helpers


def as_probabilities(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    if target.shape[1] == 1 and num_classes > 1:
        return helpers.one_hot(target[:, 0], num_classes)
    return helpers.at_least_fp32(target)


def dice_sq(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 − mean_c 2Σp_c y_c / max(Σp_c² + Σy_c², eps); sums over batch and space together, all C channels."""
    p = torch.softmax(helpers.at_least_fp32(logits), 1)
    y = helpers.at_least_fp32(target)
    axes = [0] + list(range(2, p.ndim))
    intersection = (p * y).sum(axes)
    denominator = (p * p).sum(axes) + (y * y).sum(axes)
    dice = 2 * intersection / torch.clamp(denominator, min=eps)
    return 1 - dice.mean()


def kl_mean(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``nn.KLDivLoss(reduction='mean')(log_softmax(z), y)``: element-wise mean of y·(log y − log p)."""
    # = reduction='mean' (sum / number of elements), written out to avoid PyTorch's deprecation warning for 'mean'
    y = helpers.at_least_fp32(target)
    return F.kl_div(torch.log_softmax(helpers.at_least_fp32(logits), 1), y, reduction="sum") / y.numel()


class MNLoss(nn.Module):
    """Dice_sq + KL_mean with weights 1 and 1. ``forward`` returns the total, ``components`` (dice, kl)."""

    def __init__(self, weight_dice: float = 1.0, weight_kl: float = 1.0):
        super().__init__()
        self.weight_dice, self.weight_kl = weight_dice, weight_kl

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y = as_probabilities(target, logits.shape[1])
        return dice_sq(logits, y), kl_mean(logits, y)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d, k = self.components(logits, target)
        return self.weight_dice * d + self.weight_kl * k


def pool_soft_target(target: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """Average-pool a full-resolution probability target with kernel = stride = ``factor`` (integer per spatial
    axis); per-voxel sums of 1 are preserved."""
    factor = tuple(int(f) for f in factor)
    if all(f == 1 for f in factor):
        return target
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(factor)]
    return pool(target, kernel_size=factor, stride=factor)


def scale_factors(ds_scales: Sequence[Sequence[float]]) -> List[Tuple[int, ...]]:
    """nnU-Net DS scales (fractions, e.g. [1, .5, .5]) → integer pooling factors (e.g. (1, 2, 2))."""
    return [tuple(int(round(1 / s)) for s in scale) for scale in ds_scales]


def build_targets(soft_unlabeled, labeled_targets, num_classes: int, factors) -> List[torch.Tensor]:
    """Per-scale probability targets of the concatenated batch (unlabeled first, then labeled).

    ``soft_unlabeled``: full-resolution teacher probabilities (N_u, C, ...) or None. ``labeled_targets``: nnU-Net's
    per-scale label maps (list, or one tensor when there is one scale) or None. ``factors``: integer pooling
    factor per scale (scale 0 = full resolution).
    """
    if labeled_targets is not None and not isinstance(labeled_targets, (list, tuple)):
        labeled_targets = [labeled_targets]
    targets = []
    for s, f in enumerate(factors):
        parts = []
        if soft_unlabeled is not None:
            parts.append(pool_soft_target(soft_unlabeled, f))
        if labeled_targets is not None:
            parts.append(helpers.one_hot(labeled_targets[s][:, 0], num_classes))
        targets.append(torch.cat(parts) if len(parts) > 1 else parts[0])
    return targets


def deep_supervision_loss(loss: MNLoss, outputs, targets, weights) -> Tuple[torch.Tensor, torch.Tensor,
                                                                           torch.Tensor]:
    """Σ_s w_s·L(z_s, y_s) and the weighted Dice and KL parts (nnU-Net's weights; zero weights skipped)."""
    if not isinstance(outputs, (list, tuple)):
        outputs, targets, weights = [outputs], [targets[0] if isinstance(targets, (list, tuple)) else targets], [1.0]
    total_d = total_k = None
    for z, y, w in zip(outputs, targets, weights):
        if w == 0:
            continue
        d, k = loss.components(z, y)
        total_d = w * d if total_d is None else total_d + w * d
        total_k = w * k if total_k is None else total_k + w * k
    return loss.weight_dice * total_d + loss.weight_kl * total_k, total_d, total_k
