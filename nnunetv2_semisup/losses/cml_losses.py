"""CML losses and pseudo-label targets (spec cml.md §1.3, §1.5, §3.2, §3.3).

- ``cml_sup_loss``: sup(z, y) = ½·(CE(z, y) + Dice_ps(z, y)) with a hard label map y. CE is the mean over all
  voxels; Dice_ps = 1 − mean over samples n and classes c (background included) of
  (2·Σ p·y + 1e-5)/(Σ p + Σ y + 1e-5) with p = softmax(z) (linear denominators). Float32. The reference loss.
- ``feature_discrepancy``: dis(f_a, f_b) = 1 + mean over samples and voxels of the per-voxel cosine over channels of
  L2-normalised f_a and stopgrad(f_b) (eps 1e-6), range [0, 2] (paper eq. 1 as the code computes it). Float32.
- ``cml_pseudo_labels``: hard pseudo-labels of one subnet's logits with the largest-connected-component filter
  (the paper's "NMS"): C = 2: foreground where p₁ ≥ threshold, else argmax; then, per patch and per foreground
  class, only its largest full-connectivity component is kept (26-neighbourhood in 3D, 8 in 2D), ties → the
  lowest component index (raster order); removed voxels become background. Runs on CPU with connected-components-3d.
- ``heterogeneous_targets``: paper eq. 9 as the code implements it: T¹ = pl²[a] ⊙ M + pl¹[b] ⊙ (1 − M),
  T² = pl¹[a] ⊙ M + pl²[b] ⊙ (1 − M) (outside the box the other subnet's pseudo-label, inside its own).
"""
from typing import Tuple

import cc3d
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DICE_SMOOTH = 1e-5
COSINE_EPS = 1e-6


def _hard_labels(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) or (B, ...) label map → long (B, ...) matching logits' spatial shape."""
    if target.ndim == logits.ndim:
        if target.shape[1] != 1:
            raise ValueError(f"cml_sup_loss expects a hard label map (B, 1, ...), got target shape "
                             f"{tuple(target.shape)}")
        target = target[:, 0]
    if target.shape[1:] != logits.shape[2:] or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    return target.long()


def dice_ps_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean_{n,c} (2·Σ p·y + 1e-5)/(Σ p + Σ y + 1e-5), per sample and class, background included."""
    logits = logits.float()
    y = _hard_labels(target, logits)
    p = torch.softmax(logits, 1)
    onehot = F.one_hot(y, logits.shape[1]).movedim(-1, 1).to(p.dtype)
    axes = tuple(range(2, logits.ndim))
    intersect = (p * onehot).sum(axes)
    dice = (2 * intersect + DICE_SMOOTH) / (p.sum(axes) + onehot.sum(axes) + DICE_SMOOTH)
    return 1 - dice.mean()


def cml_sup_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sup(z, y) = ½·(CE(z, y) + Dice_ps(z, y)), float32 (spec §1.3)."""
    logits = logits.float()
    y = _hard_labels(target, logits)
    return 0.5 * (F.cross_entropy(logits, y) + dice_ps_loss(logits, y))


class CMLSupLoss(nn.Module):
    """Module form of ``cml_sup_loss`` (to wrap in nnU-Net's ``DeepSupervisionWrapper``)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cml_sup_loss(logits, target)


def feature_discrepancy(f_a: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
    """dis(f_a, f_b) = 1 + mean_{n, voxels} cos(f_a[n, :, v], stopgrad(f_b)[n, :, v]) ∈ [0, 2] (spec §1.3).

    Minimising it pushes f_a away from a frozen copy of f_b; no gradient reaches f_b.
    """
    if f_a.shape != f_b.shape:
        raise ValueError(f"feature_discrepancy: shapes differ, {tuple(f_a.shape)} vs {tuple(f_b.shape)}")
    a = F.normalize(f_a.float(), dim=1)
    b = F.normalize(f_b.detach().float(), dim=1)
    return 1 + F.cosine_similarity(a, b, dim=1, eps=COSINE_EPS).mean()


def largest_component_per_class(seg: np.ndarray) -> np.ndarray:
    """Keep, for every foreground class of one label map (2D or 3D), only its largest full-connectivity component.

    Ties keep the lowest component index (raster order of cc3d's labelling); removed voxels become 0; other
    classes' voxels are untouched. Background (0) is never filtered.
    """
    seg = np.ascontiguousarray(seg)
    if seg.ndim not in (2, 3):
        raise ValueError(f"largest_component_per_class expects a 2D or 3D label map, got shape {seg.shape}")
    if not seg.any():
        return seg.copy()
    connectivity = 26 if seg.ndim == 3 else 8
    # multi-label mode: voxels of different classes are never connected, so this labels each class separately
    components = cc3d.connected_components(seg.astype(np.uint16, copy=False), connectivity=connectivity)
    flat_comp = components.ravel()
    n = int(flat_comp.max())
    sizes = np.bincount(flat_comp, minlength=n + 1)
    comp_class = np.zeros(n + 1, dtype=np.int64)
    comp_class[flat_comp] = seg.ravel()
    keep = np.zeros(n + 1, dtype=bool)
    for c in np.unique(comp_class[1:]):
        ids = np.flatnonzero(comp_class == c)
        ids = ids[ids > 0]
        keep[ids[np.argmax(sizes[ids])]] = True  # argmax → first (lowest index) among equal sizes
    return np.where(keep[components], seg, 0).astype(seg.dtype, copy=False)


@torch.no_grad()
def cml_pseudo_labels(logits: torch.Tensor, lcc: bool = True, binary_threshold: float = 0.5
                      ) -> Tuple[torch.Tensor, float]:
    """Hard pseudo-labels (B, ...) long of full-resolution logits (B, C, ...) and the fraction of foreground voxels
    the LCC filter removed (0 when there was no foreground or ``lcc`` is off). No gradient."""
    logits = logits.detach().float()
    if logits.shape[1] == 2:
        hard = (torch.softmax(logits, 1)[:, 1] >= binary_threshold).long()
    else:
        hard = logits.argmax(1)
    if not lcc:
        return hard, 0.0
    seg = hard.cpu().numpy().astype(np.uint16)
    before = int(np.count_nonzero(seg))
    filtered = np.stack([largest_component_per_class(s) for s in seg])
    removed = before - int(np.count_nonzero(filtered))
    return torch.from_numpy(filtered.astype(np.int64)).to(logits.device), (removed / before if before else 0.0)


def heterogeneous_targets(pl1: torch.Tensor, pl2: torch.Tensor, mask: torch.Tensor
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Paper eq. 9 (as the code): halves a = first B/2, b = second B/2 of the unmixed batch's pseudo-labels.

    T¹ = pl²[a] where M = 1, pl¹[b] where M = 0;  T² = pl¹[a] where M = 1, pl²[b] where M = 0.
    ``mask`` has the spatial shape of the labels (M = 0 inside the box).
    """
    if pl1.shape != pl2.shape or pl1.shape[0] % 2:
        raise ValueError(f"heterogeneous_targets: need two equally shaped label batches with an even batch size, "
                         f"got {tuple(pl1.shape)} and {tuple(pl2.shape)}")
    h = pl1.shape[0] // 2
    m = mask.to(device=pl1.device, dtype=torch.bool)
    t1 = torch.where(m, pl2[:h], pl1[h:])
    t2 = torch.where(m, pl1[:h], pl2[h:])
    return t1, t2
