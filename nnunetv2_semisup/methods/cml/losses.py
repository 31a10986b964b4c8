"""CML losses (docs/cml.md).

- ``cml_sup_loss``: sup(z, y) = ½·(CE(z, y) + Dice_ps(z, y)) with a hard label map y. CE is the mean over all
  voxels; Dice_ps = 1 − mean over samples n and classes c (background included) of
  (2·Σ p·y + 1e-5)/(Σ p + Σ y + 1e-5) with p = softmax(z) (linear denominators). Float32. The reference loss,
  computed by nnU-Net's ``DC_and_CE_loss`` (per-sample Dice with background, smooth 1e-5).
- ``feature_discrepancy``: dis(f_a, f_b) = 1 + mean over samples and voxels of the per-voxel cosine over channels of
  L2-normalised f_a and stopgrad(f_b) (eps 1e-6), range [0, 2] (paper eq. 1 as the code computes it). Float32.
Pseudo-labels are in ``pseudo_labels.py``, the CutMix and heterogeneous targets in ``cutmix.py``.
"""
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2.training.loss.compound_losses import DC_and_CE_loss

from nnunetv2_semisup.training.helpers import hard_label_map

DICE_SMOOTH = 1e-5
COSINE_EPS = 1e-6


# nnU-Net's Dice + CE with the reference's Dice settings: per sample, background included, smooth 1e-5. Its Dice
# term is −Dice, so sup = ½·(DC_and_CE + 1)
_DICE_AND_CE = DC_and_CE_loss({"batch_dice": False, "do_bg": True, "smooth": DICE_SMOOTH, "ddp": False}, {},
                              weight_ce=1, weight_dice=1)


def dice_ps_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean_{n,c} (2·Σ p·y + 1e-5)/(Σ p + Σ y + 1e-5), per sample and class, background included = 1 + nnU-Net's
    ``SoftDiceLoss`` (2tp + fp + fn = Σ p + Σ y)."""
    y = hard_label_map(logits, target, "cml_sup_loss")
    return 1 + _DICE_AND_CE.dc(logits.float(), y[:, None])


def cml_sup_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sup(z, y) = ½·(CE(z, y) + Dice_ps(z, y)), float32 (docs/cml.md)."""
    y = hard_label_map(logits, target, "cml_sup_loss")
    return 0.5 * (_DICE_AND_CE(logits.float(), y[:, None]) + 1)


class CMLSupLoss(nn.Module):
    """Module form of ``cml_sup_loss`` (to wrap in nnU-Net's ``DeepSupervisionWrapper``)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cml_sup_loss(logits, target)


def feature_discrepancy(f_a: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
    """dis(f_a, f_b) = 1 + mean_{n, voxels} cos(f_a[n, :, v], stopgrad(f_b)[n, :, v]) ∈ [0, 2] (docs/cml.md).

    Minimising it pushes f_a away from a frozen copy of f_b; no gradient reaches f_b.
    """
    if f_a.shape != f_b.shape:
        raise ValueError(f"feature_discrepancy: shapes differ, {tuple(f_a.shape)} vs {tuple(f_b.shape)}")
    a = F.normalize(f_a.float(), dim=1)
    b = F.normalize(f_b.detach().float(), dim=1)
    return 1 + F.cosine_similarity(a, b, dim=1, eps=COSINE_EPS).mean()
