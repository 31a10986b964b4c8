"""CML's CutMix (docs/cml.md).

- ``cutmix_box_mask``: ones everywhere except one zero box with side ⌊β·s_i⌋ per patch axis, at a uniformly random
  corner in {0, …, s_i − ⌊β·s_i⌋} (the port includes the last position; the reference's exclusive upper bound fails
  when ⌊β·s⌋ = s). One mask per mixing operation, shared by all pairs of the batch. A side that rounds to 0 gives an
  all-ones mask (no mixing); the caller logs that.
- ``cutmix_pairs``: X_mix = X_a ⊙ M + X_b ⊙ (1 − M) for the halves a (first B/2) and b (second B/2) of a batch:
  the box content comes from b, the rest from a. Used for images, labels and (through
  ``heterogeneous_targets``) pseudo-labels.
- ``heterogeneous_targets``: paper eq. 9 as the code implements it: T¹ = pl²[a] ⊙ M + pl¹[b] ⊙ (1 − M),
  T² = pl¹[a] ⊙ M + pl²[b] ⊙ (1 − M) (outside the box the other subnet's pseudo-label, inside its own).
- ``ds_targets``: deep-supervision targets of a mixed full-resolution label map, with nnU-Net's own
  ``DownsampleSegForDSTransform`` (nearest-exact), so they equal what nnU-Net's DA would produce for that label.
"""
import math
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple

import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform


def box_sides(patch_size: Sequence[int], beta: float) -> Tuple[int, ...]:
    """⌊β·s_i⌋ per axis; β is read as the nearest simple fraction (2/3 stays exactly 2/3: ⌊2/3·80⌋ = 53)."""
    if not 0 <= beta <= 1:
        raise ValueError(f"cml_beta must be in [0, 1], got {beta}")
    frac = Fraction(beta).limit_denominator(10 ** 6)
    return tuple(int(math.floor(frac * int(s))) for s in patch_size)


def cutmix_box_mask(patch_size: Sequence[int], beta: float, device=None,
                    generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """(mask, corner): float mask of ``patch_size`` with one zero box of side ⌊β·s_i⌋ at ``corner``.

    Corner drawn uniformly from {0, …, s_i − side_i} per axis (torch RNG, CPU). If any side is 0 the mask is all
    ones and ``corner`` is empty.
    """
    sides = box_sides(patch_size, beta)
    mask = torch.ones(tuple(int(s) for s in patch_size), dtype=torch.float32)
    if any(s == 0 for s in sides):
        return mask.to(device), ()
    corner = tuple(int(torch.randint(0, int(s) - side + 1, (1,), generator=generator)) for s, side in
                   zip(patch_size, sides))
    mask[tuple(slice(c, c + side) for c, side in zip(corner, sides))] = 0
    return mask.to(device), corner


def cutmix_pairs(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mix the halves of a batch (B, ...): x[a] where M = 1, x[b] where M = 0; returns B/2 samples.

    ``mask`` has the spatial shape (last dims of ``x``) and is shared by all pairs. Exact (a selection, no
    arithmetic), so labels stay integer.
    """
    if x.shape[0] % 2:
        raise ValueError(f"cutmix_pairs needs an even batch size (pairs), got {x.shape[0]}")
    if tuple(x.shape[-mask.ndim:]) != tuple(mask.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the spatial shape of {tuple(x.shape)}")
    h = x.shape[0] // 2
    return torch.where(mask.to(device=x.device, dtype=torch.bool), x[:h], x[h:])


def ds_targets(seg: torch.Tensor, ds_scales: Optional[Sequence[Sequence[float]]]) -> List[torch.Tensor]:
    """nnU-Net's deep-supervision downsampling of a full-resolution label batch (B, 1, ...) → list per scale.

    Without deep supervision (``ds_scales`` None) the list holds only ``seg``.
    """
    if ds_scales is None:
        return [seg]
    if seg.ndim < 3 or seg.shape[1] != 1:
        raise ValueError(f"ds_targets expects (B, 1, ...) labels, got {tuple(seg.shape)}")
    # nnU-Net's transform works on one (C, ...) sample; the batch axis plays the channel axis (per-channel
    # nearest-exact interpolation), which is exactly the per-sample result
    out = DownsampleSegForDSTransform(ds_scales=ds_scales)._apply_to_segmentation(seg[:, 0])
    return [o[:, None] for o in out]


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
