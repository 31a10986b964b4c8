"""``nnUNetTrainer_contrastRemap``: stock nnU-Net on the labeled cases only, with one more augmentation — random
tissue-contrast remapping (``data/intensity_remap.py``) with probability ``remap_probability`` right after nnU-Net's
spatial transform, before its own intensity transforms. The augmentation-only baseline of the mixed-domain benchmark
track: if it recovers a scanner the labeled cases never saw, unlabeled data are not what was missing."""
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_semisup.data.intensity_remap import TissueContrastRemap
from nnunetv2_semisup.training.short_schedule import ShortScheduleMixin

__all__ = ["nnUNetTrainer_contrastRemap", "nnUNetTrainer_contrastRemap_short"]


def with_remap(transforms: ComposeTransforms, probability: float) -> ComposeTransforms:
    """nnU-Net's pipeline with the remapping inserted after its spatial transform (and 2D/3D conversion)."""
    names = [type(t).__name__ for t in transforms.transforms]
    at = max(i for i, n in enumerate(names) if n in ("SpatialTransform", "Convert2DTo3DTransform")) + 1
    return ComposeTransforms(transforms.transforms[:at]
                             + [RandomTransform(TissueContrastRemap(), apply_probability=probability)]
                             + transforms.transforms[at:])


class nnUNetTrainer_contrastRemap(nnUNetTrainer):
    remap_probability = 0.5

    def get_training_transforms(self, *args, **kwargs) -> ComposeTransforms:
        # nnU-Net declares it static but calls it on the instance: an instance method can read the probability
        return with_remap(nnUNetTrainer.get_training_transforms(*args, **kwargs), self.remap_probability)


class nnUNetTrainer_contrastRemap_short(ShortScheduleMixin, nnUNetTrainer_contrastRemap):
    """The labeled-only short baseline (``nnUNetTrainer_semisupShort``) with the remapping."""
