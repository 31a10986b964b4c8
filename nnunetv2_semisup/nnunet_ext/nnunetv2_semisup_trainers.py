# Re-export shim for nnU-Net's nnUNet_extTrainer lookup: no logic here, only absolute imports of the trainers.
# (nnU-Net unloads modules imported from this folder after the lookup; the real classes stay importable.)
from nnunetv2_semisup.trainers import *  # noqa: F401,F403
