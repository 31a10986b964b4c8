"""Random tissue-contrast remapping: an intensity augmentation that can change the *order* of tissue intensities, as
between MRI sequences or scanners with different contrasts (used by the weak→strong trainer's strong view and by the
labeled-only baseline ``nnUNetTrainer_contrastRemap``)."""
import torch
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform


class TissueContrastRemap(ImageOnlyTransform):
    """A random intensity lookup per image channel that can reorder tissues: the channel's [1st, 99th] percentile
    range is cut at ``num_points`` equidistant intensities, each mapped to a uniformly random value in that range,
    with piecewise-linear interpolation in between (and the end values outside it). Unlike brightness, contrast or
    gamma, the lookup is not monotone in general, so "organ darker than fat" can become "organ brighter than fat", as
    between MRI sequences or scanners."""

    def __init__(self, num_points: int = 5):
        super().__init__()
        if num_points < 2:
            raise ValueError(f"num_points must be >= 2, got {num_points}")
        self.num_points = num_points

    def get_parameters(self, **data_dict) -> dict:
        c = data_dict["image"].shape[0]
        return {"targets": torch.rand(c, self.num_points)}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        out = img.clone()
        for c in range(img.shape[0]):
            out[c] = remap_intensities(img[c], params["targets"][c])
        return out


def remap_intensities(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear lookup of ``x``: the k-th of n equidistant points between x's 1st and 99th percentiles goes
    to lo + targets[k]·(hi − lo) (targets in [0, 1]); values outside [lo, hi] take the end points' values."""
    flat = x.flatten().float()
    sample = flat if flat.numel() <= 1_000_000 else flat[torch.randint(0, flat.numel(), (1_000_000,))]
    lo, hi = torch.quantile(sample, torch.tensor([0.01, 0.99])).tolist()
    if hi <= lo:
        return x
    n = targets.numel()
    xs = torch.linspace(lo, hi, n)
    ys = lo + targets.float() * (hi - lo)
    v = x.float().clamp(lo, hi)
    idx = torch.clamp(torch.searchsorted(xs, v.contiguous(), right=True) - 1, 0, n - 2)
    t = (v - xs[idx]) / (xs[idx + 1] - xs[idx])
    return (ys[idx] + t * (ys[idx + 1] - ys[idx])).to(x.dtype)
