"""Weak and strong views of an unlabeled patch from nnU-Net's own augmentation (docs/weak_strong.md).

- weak view = nnU-Net's training pipeline with every intensity transform taken out: its spatial transform (rotation,
  scaling), its 2D/3D handling and its mirroring;
- strong view = the weak view's very voxels (the same spatial transform, drawn once) passed through strong intensity
  augmentation: optionally a random tissue-contrast remapping, then nnU-Net's noise, blur, brightness, contrast,
  low-resolution and gamma transforms at higher strength and probability.

Both views travel through nnU-Net's data loader as one image with 2·C channels (weak first, strong second), so the
pseudo-label computed on the weak view lines up voxel for voxel with the strong view; the trainer splits them.
"""
from typing import List, Optional, Sequence

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform

from nnunetv2_semisup.data.intensity_remap import TissueContrastRemap

# nnU-Net's intensity transforms (what the weak view leaves out)
INTENSITY_TRANSFORMS = (GaussianNoiseTransform, GaussianBlurTransform, MultiplicativeBrightnessTransform,
                        ContrastTransform, SimulateLowResolutionTransform, GammaTransform)


def strong_intensity_transforms(ignore_axes: Optional[Sequence[int]] = None, remap_probability: float = 0.5
                                ) -> ComposeTransforms:
    """The strong view's intensity augmentation: nnU-Net's six intensity transforms, each with probability 0.5 (nnU-Net:
    0.1-0.3) and wider ranges (noise variance up to 0.2 instead of 0.1, blur σ up to 1.5 instead of 1, brightness and
    contrast 0.5-1.5 instead of 0.75-1.25, low resolution down to 0.35 instead of 0.5, gamma 0.5-2 instead of 0.7-1.5),
    after the tissue-contrast remapping (``remap_probability``; 0 = off)."""
    t: List[BasicTransform] = []
    if remap_probability > 0:
        t.append(RandomTransform(TissueContrastRemap(), apply_probability=remap_probability))
    t += [
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.2), p_per_channel=1, synchronize_channels=True),
                        apply_probability=0.5),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.5), synchronize_channels=False,
                                              synchronize_axes=False, p_per_channel=0.5, benchmark=True),
                        apply_probability=0.5),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.5, 1.5)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.5),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.5, 1.5)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1), apply_probability=0.5),
        RandomTransform(SimulateLowResolutionTransform(scale=(0.35, 1), synchronize_channels=False,
                                                       synchronize_axes=True, ignore_axes=ignore_axes,
                                                       allowed_channels=None, p_per_channel=0.5),
                        apply_probability=0.5),
        RandomTransform(GammaTransform(gamma=BGContrast((0.5, 2.0)), p_invert_image=0.2, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.5),
    ]
    return ComposeTransforms(t)


class WeakStrongViews(BasicTransform):
    """image (C, ...) → (2·C, ...): the image as it is (weak) followed by ``strong`` applied to a copy."""

    def __init__(self, strong: BasicTransform):
        super().__init__()
        self.strong = strong

    def apply(self, data_dict: dict, **params) -> dict:
        weak = data_dict["image"]
        strong = self.strong(image=weak.clone())["image"]
        data_dict["image"] = torch.cat((weak, strong), 0)
        return data_dict


def _is_intensity(t: BasicTransform) -> bool:
    inner = t.transform if isinstance(t, RandomTransform) else t
    return isinstance(inner, INTENSITY_TRANSFORMS)


def weak_strong_pipeline(train_transforms: ComposeTransforms, strong: BasicTransform,
                         num_channels: int) -> ComposeTransforms:
    """nnU-Net's training pipeline without its intensity transforms, with ``WeakStrongViews`` where those were (after
    the spatial transform, before mirroring) and nnU-Net's mask-for-normalisation applied to both views' channels."""
    if not isinstance(train_transforms, ComposeTransforms):
        raise TypeError(f"expected nnU-Net's ComposeTransforms, got {type(train_transforms).__name__}")
    out, inserted = [], False
    for t in train_transforms.transforms:
        if _is_intensity(t):
            if not inserted:
                out.append(WeakStrongViews(strong))
                inserted = True
            continue
        if isinstance(t, MaskImageTransform):
            channels = list(t.apply_to_channels)
            t = MaskImageTransform(apply_to_channels=channels + [c + num_channels for c in channels],
                                   channel_idx_in_seg=t.channel_idx_in_seg, set_outside_to=t.set_outside_to)
        out.append(t)
    if not inserted:
        raise ValueError("nnU-Net's training transforms hold no intensity transform to replace by the two views; "
                         "this nnU-Net version builds its pipeline differently than the weak/strong trainer expects")
    return ComposeTransforms(out)
