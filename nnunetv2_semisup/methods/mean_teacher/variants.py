"""Mean Teacher variants: ``nnUNetTrainerMeanTeacher_short`` (tests, demo: ``ShortScheduleMixin``)."""
from nnunetv2_semisup.methods.mean_teacher.trainer import nnUNetTrainerMeanTeacher
from nnunetv2_semisup.training.short_schedule import ShortScheduleMixin

__all__ = ["nnUNetTrainerMeanTeacher", "nnUNetTrainerMeanTeacher_short"]


class nnUNetTrainerMeanTeacher_short(ShortScheduleMixin, nnUNetTrainerMeanTeacher):
    pass
