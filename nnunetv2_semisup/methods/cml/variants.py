"""CML trainer variants (docs/cml.md and the paper's Table 4 ablation), as tiny attribute-changing subclasses.

| class | differs from ``nnUNetTrainerCML`` by |
|---|---|
| ``nnUNetTrainerCML_identical`` | two subnets of the same architecture (subnet 2 keeps nnU-Net's transposed convolutions) |
| ``nnUNetTrainerCML_hetero`` | the default spelled out: subnet 2's decoder upsamples by interpolation + conv (reference VNet); kept so existing ``-tr`` strings and model folders keep working |
| ``nnUNetTrainerCML_noDis`` | λ2 = 0 (Table 4 "L_sup + L_sup^u") |
| ``nnUNetTrainerCML_noUnsup`` | λ1 = 0 (Table 4 "L_sup + L_dis"; unlabeled patches still feed dis_u) |
| ``nnUNetTrainerCML_supOnly`` | λ1 = λ2 = 0 (Table 4 "L_sup"; no unlabeled patches are loaded, none need to exist) |
| ``nnUNetTrainerCML_paper`` | reference optimisation: B_l = B_u = 4; SGD lr 0.01, momentum 0.9, wd 1e-4, no Nesterov, no clipping; 200 iterations × 85 epochs, 10 pretraining epochs at constant LR; self-training LR 0.01·0.1^⌊k/2500⌋ (k = self-training iterations so far). In ``2d`` the reference's ACDC script instead: B_l = B_u = 12, 200 × 200 iterations, 25 % pretraining, constant LR 0.01 |
| ``nnUNetTrainerCML_short`` | short schedule for tests, demo and the CPU benchmark (``ShortScheduleMixin``); the default pretraining share 0.12 (a 2–8 epoch run gets one pretraining epoch, see ``pretrain_epochs_for``) |
| ``nnUNetTrainerCML_hetero_short`` | ``_hetero`` on the short schedule (= ``_short``) |
| ``nnUNetTrainerCML_identical_short`` | ``_identical`` on the short schedule |
| ``nnUNetTrainerCML_paper_short`` | ``_paper``'s batch, optimiser and step decay on the short schedule: self-training still runs through six LR levels 0.01·0.1^j, j = 0..5, of ⌈self-training iterations / 6⌉ each (the reference: 2500 of its 15000) — the quality benchmark's paper row |
"""
import math
from typing import Optional

import torch

from nnunetv2_semisup.methods.cml.trainer import SELFTRAIN, nnUNetTrainerCML
from nnunetv2_semisup.training.short_schedule import ShortScheduleMixin

__all__ = ["nnUNetTrainerCML", "nnUNetTrainerCML_identical", "nnUNetTrainerCML_hetero", "nnUNetTrainerCML_noDis",
           "nnUNetTrainerCML_noUnsup", "nnUNetTrainerCML_supOnly", "nnUNetTrainerCML_paper", "nnUNetTrainerCML_short",
           "nnUNetTrainerCML_hetero_short", "nnUNetTrainerCML_identical_short", "nnUNetTrainerCML_paper_short"]


class nnUNetTrainerCML_identical(nnUNetTrainerCML):
    cml_hetero = False
    architecture_variants = ("nnUNetTrainerCML",)


class nnUNetTrainerCML_hetero(nnUNetTrainerCML):
    cml_hetero = True


class nnUNetTrainerCML_noDis(nnUNetTrainerCML):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.cml_lambda2 = 0.0


class nnUNetTrainerCML_noUnsup(nnUNetTrainerCML):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.cml_lambda1 = 0.0


class nnUNetTrainerCML_supOnly(nnUNetTrainerCML):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.cml_lambda1 = 0.0
        self.cml_lambda2 = 0.0
        self.allow_labeled_only = True  # never loads unlabeled patches, so it also runs without them


class _PerIterationLR:
    """nnU-Net calls ``lr_scheduler.step(epoch)`` at every epoch start; this sets the trainer's per-iteration LR
    instead (so the logged LR is the one in use)."""

    def __init__(self, trainer: "nnUNetTrainerCML_paper"):
        self.trainer = trainer

    def step(self, current_step=None):
        self.trainer.set_iteration_lr()


class nnUNetTrainerCML_paper(nnUNetTrainerCML):
    cml_paper_decay_every = 2500  # self-training iterations per ×0.1 LR step (LA reference)
    cml_paper_lr_levels = 6  # the reference's 15000 self-training iterations: six LR levels of 2500 each

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.batch_size_override = 4
        self.initial_lr = 0.01
        self.weight_decay = 1e-4
        self.grad_clip = None
        self.num_iterations_per_epoch = 200
        self.num_epochs = 85
        self.cml_pretrain_fraction = 0.12  # round(0.12 · 85) = 10 epochs = 2000 iterations
        self.cml_paper_lr_decay = True  # LA's self-training step decay
        if len(self.configuration_manager.patch_size) == 2:
            # the reference's ACDC script: 10000 pretraining + 30000 self-training iterations (25 %), batch 12 + 12,
            # constant LR 0.01 (λ1/λ2/β: the 2D values nnUNetTrainerCML sets)
            self.batch_size_override = 12
            self.num_epochs = 200
            self.cml_pretrain_fraction = 0.25
            self.cml_paper_lr_decay = False

    def configure_optimizers(self):
        optimizer = self.sgd(momentum=0.9, nesterov=False)
        return optimizer, _PerIterationLR(self)

    def cml_iteration_lr(self) -> Optional[float]:
        if self.cml_stage != SELFTRAIN or not self.cml_paper_lr_decay:
            return self.initial_lr
        return self.initial_lr * 0.1 ** (self.cml_selftrain_iterations // self.cml_paper_decay_every)


class nnUNetTrainerCML_short(ShortScheduleMixin, nnUNetTrainerCML):
    pass  # the defaults; pretrain_epochs_for gives a 2-4 epoch run one pretraining epoch


class nnUNetTrainerCML_hetero_short(ShortScheduleMixin, nnUNetTrainerCML_hetero):
    pass  # the defaults; pretrain_epochs_for gives a 2-4 epoch run one pretraining epoch


class nnUNetTrainerCML_identical_short(ShortScheduleMixin, nnUNetTrainerCML_identical):
    pass  # the defaults; pretrain_epochs_for gives a 2-4 epoch run one pretraining epoch


class nnUNetTrainerCML_paper_short(ShortScheduleMixin, nnUNetTrainerCML_paper):
    """The reference recipe at the benchmark's budget. A fixed 2500-iteration step would leave a 3500-iteration
    self-training stage at LR 0.01 and 0.001 only; the reference's shape (six LR levels, each a tenth of the one
    before, over self-training) is kept by spacing them over the short schedule's self-training iterations."""

    def initialize(self):
        super().initialize()
        selftrain = (self.num_epochs - self.cml_pretrain_epochs) * self.num_iterations_per_epoch
        self.cml_paper_decay_every = max(1, math.ceil(selftrain / self.cml_paper_lr_levels))
