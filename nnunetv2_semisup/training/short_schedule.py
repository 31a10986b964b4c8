"""Short-schedule variants for tests, the demo and CPU smoke runs (like nnU-Net's ``nnUNetTrainer_5epochs``).

``ShortScheduleMixin`` shortens training, checkpoints every epoch (so ``--c`` can be tested) and turns mirroring
off in training and inference (nnU-Net's final validation otherwise runs 8 mirrored passes in 3D). Epochs and
iterations can be overridden with ``nnUNet_semisup_short_epochs``, ``nnUNet_semisup_short_iterations`` and
``nnUNet_semisup_short_val_iterations``; ``nnUNet_semisup_short_skip_validation=1`` skips nnU-Net's final
validation, which saves most of a CPU smoke run's time; ``nnUNet_semisup_short_stop_after=K`` ends the process after
epoch K as if it had been killed (``checkpoint_latest.pth`` kept), to smoke-test ``--c``;
``nnUNet_semisup_short_keep_every=K`` keeps a copy of the checkpoint every K epochs
(``checkpoint_epoch<N>.pth``, N epochs trained), so a benchmark can look at a model over training (nnU-Net itself
keeps only the latest, best and final checkpoints).
"""
import os
import random

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class ShortScheduleMixin:
    short_epochs = 4
    short_iterations = 5
    short_val_iterations = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        seed = os.environ.get("nnUNet_semisup_seed")
        if seed is not None:
            random.seed(int(seed)), np.random.seed(int(seed)), torch.manual_seed(int(seed))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("nnUNet_semisup_short_epochs", self.short_epochs))
        self.num_iterations_per_epoch = self.short_iterations_per_epoch()
        self.num_val_iterations_per_epoch = int(os.environ.get("nnUNet_semisup_short_val_iterations",
                                                               self.short_val_iterations))
        self.save_every = 1

    def short_iterations_per_epoch(self) -> int:
        """The short schedule's iterations per epoch (``nnUNet_semisup_short_iterations`` or ``short_iterations``);
        variants whose ``initialize`` derives its own count (``_paper``) set it back with this."""
        return int(os.environ.get("nnUNet_semisup_short_iterations", self.short_iterations))

    def on_epoch_end(self):
        keep_every = int(os.environ.get("nnUNet_semisup_short_keep_every", "0"))
        if keep_every > 0 and (self.current_epoch + 1) % keep_every == 0:
            self.save_checkpoint(os.path.join(self.output_folder, f"checkpoint_epoch{self.current_epoch + 1}.pth"))
        super().on_epoch_end()
        stop = os.environ.get("nnUNet_semisup_short_stop_after")
        if stop is not None and self.current_epoch == int(stop) < self.num_epochs:
            self.print_to_log_file(f"Stopping after epoch {stop} (nnUNet_semisup_short_stop_after); continue with --c")
            raise SystemExit(0)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("nnUNet_semisup_short_skip_validation", "0") == "1":
            self.print_to_log_file("Final validation skipped (nnUNet_semisup_short_skip_validation=1)")
            return
        super().perform_actual_validation(save_probabilities)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, _ = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, None


class nnUNetTrainer_semisupShort(ShortScheduleMixin, nnUNetTrainer):
    """Stock nnU-Net (labeled cases only) on the same short schedule: the baseline of the demo and benchmarks."""
