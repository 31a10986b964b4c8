"""Mean Teacher variants: ``_short`` (tests, demo: ``ShortScheduleMixin``), ``_halfBatch`` (the default before
2026-12-06: nnU-Net's batch B split into ⌈B/2⌉ labeled + ⌊B/2⌋ unlabeled patches, at least one each) and
``_uamtRamp`` (UA-MT's consistency ramp over the whole run instead of the first 40 %)."""
from typing import Tuple

from nnunetv2_semisup.methods.mean_teacher.trainer import nnUNetTrainerMeanTeacher
from nnunetv2_semisup.training.semisup_base import nnUNetTrainerSemiSup
from nnunetv2_semisup.training.short_schedule import ShortScheduleMixin

__all__ = ["nnUNetTrainerMeanTeacher", "nnUNetTrainerMeanTeacher_short", "nnUNetTrainerMeanTeacher_halfBatch",
           "nnUNetTrainerMeanTeacher_halfBatch_short", "nnUNetTrainerMeanTeacher_uamtRamp",
           "nnUNetTrainerMeanTeacher_uamtRamp_short"]


class nnUNetTrainerMeanTeacher_halfBatch(nnUNetTrainerMeanTeacher):
    def get_batch_composition(self) -> Tuple[int, int]:
        return nnUNetTrainerSemiSup.get_batch_composition(self)


class nnUNetTrainerMeanTeacher_halfBatch_short(ShortScheduleMixin, nnUNetTrainerMeanTeacher_halfBatch):
    pass


class nnUNetTrainerMeanTeacher_short(ShortScheduleMixin, nnUNetTrainerMeanTeacher):
    pass


class nnUNetTrainerMeanTeacher_uamtRamp(nnUNetTrainerMeanTeacher):
    """UA-MT's schedule: sigmoid ramp over the whole run (its 40 ramp units × 150 iterations = its 6000)."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mt_rampup_fraction = 1.0


class nnUNetTrainerMeanTeacher_uamtRamp_short(ShortScheduleMixin, nnUNetTrainerMeanTeacher_uamtRamp):
    pass
