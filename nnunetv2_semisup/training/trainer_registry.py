"""Every trainer class nnU-Net should find by name (re-exported by the nnUNet_extTrainer shim folder).

Add one import line per method module.
"""
from nnunetv2_semisup.training.semisup_base import nnUNetTrainerSemiSup  # noqa: F401
from nnunetv2_semisup.training.mean_teacher import nnUNetTrainerMeanTeacher  # noqa: F401
from nnunetv2_semisup.training.short_schedule import (  # noqa: F401
    nnUNetTrainer_semisupShort, nnUNetTrainerMeanTeacher_short)
from nnunetv2_semisup.training.cml_variants import *  # noqa: F401,F403  (nnUNetTrainerCML and its variants)
from nnunetv2_semisup.training.skcdf_variants import *  # noqa: F401,F403  (nnUNetTrainerSKCDF and its variants)
from nnunetv2_semisup.training.mn_variants import *  # noqa: F401,F403  (nnUNetTrainerMN and its variants)
