"""Every trainer class nnU-Net should find by name (re-exported by the nnUNet_extTrainer shim folder).

Add one import line per method folder (``methods/<method>/variants.py`` exports the method's trainers).
"""
from nnunetv2_semisup.training.semisup_base import nnUNetTrainerSemiSup  # noqa: F401
from nnunetv2_semisup.training.short_schedule import nnUNetTrainer_semisupShort  # noqa: F401
from nnunetv2_semisup.methods.mean_teacher.variants import *  # noqa: F401,F403
from nnunetv2_semisup.methods.cml.variants import *  # noqa: F401,F403
from nnunetv2_semisup.methods.skcdf.variants import *  # noqa: F401,F403
from nnunetv2_semisup.methods.mn.variants import *  # noqa: F401,F403
from nnunetv2_semisup.workflows.finetune_trainer import *  # noqa: F401,F403
from nnunetv2_semisup.methods.weak_strong.variants import *  # noqa: F401,F403
from nnunetv2_semisup.training.contrast_remap import *  # noqa: F401,F403
