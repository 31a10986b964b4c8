"""Weak→strong variants (docs/weak_strong.md): one ingredient changed each, and their ``_short`` schedules."""
import torch

from nnunetv2_semisup.methods.weak_strong.trainer import nnUNetTrainerWeakStrong
from nnunetv2_semisup.training.short_schedule import ShortScheduleMixin

__all__ = ["nnUNetTrainerWeakStrong", "nnUNetTrainerWeakStrong_noCutMix", "nnUNetTrainerWeakStrong_noRemap",
           "nnUNetTrainerWeakStrong_ema", "nnUNetTrainerWeakStrong_noThreshold", "nnUNetTrainerWeakStrong_short",
           "nnUNetTrainerWeakStrong_noCutMix_short", "nnUNetTrainerWeakStrong_noRemap_short",
           "nnUNetTrainerWeakStrong_ema_short", "nnUNetTrainerWeakStrong_noThreshold_short"]


class nnUNetTrainerWeakStrong_noCutMix(nnUNetTrainerWeakStrong):
    """FixMatch's strong view without UniMatch's CutMix."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ws_cutmix_probability = 0.0


class nnUNetTrainerWeakStrong_noRemap(nnUNetTrainerWeakStrong):
    """nnU-Net's intensity transforms only (no tissue-contrast remapping) in the strong view."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ws_remap_probability = 0.0


class nnUNetTrainerWeakStrong_ema(nnUNetTrainerWeakStrong):
    """Pseudo-labels from an EMA teacher (decay 0.99) instead of the network itself."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ws_ema_teacher = True


class nnUNetTrainerWeakStrong_noThreshold(nnUNetTrainerWeakStrong):
    """Every voxel's pseudo-label counts (nnFilterMatch's loss), no confidence threshold."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ws_threshold = None


class nnUNetTrainerWeakStrong_short(ShortScheduleMixin, nnUNetTrainerWeakStrong):
    pass


class nnUNetTrainerWeakStrong_noCutMix_short(ShortScheduleMixin, nnUNetTrainerWeakStrong_noCutMix):
    pass


class nnUNetTrainerWeakStrong_noRemap_short(ShortScheduleMixin, nnUNetTrainerWeakStrong_noRemap):
    pass


class nnUNetTrainerWeakStrong_ema_short(ShortScheduleMixin, nnUNetTrainerWeakStrong_ema):
    pass


class nnUNetTrainerWeakStrong_noThreshold_short(ShortScheduleMixin, nnUNetTrainerWeakStrong_noThreshold):
    pass
