"""Every trainer class nnU-Net should find by name (re-exported by the nnUNet_extTrainer shim folder).

Add one import line per method module.
"""
from nnunetv2_semisup.training.semisup_base import nnUNetTrainerSemiSup  # noqa: F401
from nnunetv2_semisup.training.mean_teacher import nnUNetTrainerMeanTeacher  # noqa: F401
from nnunetv2_semisup.training.short_schedule import (  # noqa: F401
    nnUNetTrainer_semisupShort, nnUNetTrainerMeanTeacher_short)
