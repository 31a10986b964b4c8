"""``nnUNetTrainerWeakStrong``: weak→strong pseudo-labelling (FixMatch, Sohn et al. 2020; UniMatch, Yang et al. 2023;
nnFilterMatch's nnU-Net recipe) built from nnU-Net's own augmentation (docs/weak_strong.md).

- Batch: nnU-Net's labeled batch intact (B patches) plus B_u unlabeled patches on top (default B_u = B); the first
  ``ws_warmup_fraction`` of the epochs are supervised only (nnFilterMatch: its first 20 epochs).
- Views (``augment.py``): weak = nnU-Net's spatial augmentation only; strong = the same voxels through strong intensity
  augmentation (tissue-contrast remapping with probability ``ws_remap_probability``, then nnU-Net's intensity
  transforms at higher strength), made in the data-loader workers.
- Pseudo-labels: argmax of the teacher's softmax on the weak view (teacher = the network itself, no gradient, or its
  EMA with ``ws_ema_teacher``); voxels whose largest probability is below τ = ``ws_threshold`` (0.95) get the ignore
  value and no loss; optionally a patch whose mean normalised entropy over its predicted foreground exceeds
  ``ws_entropy_filter`` is dropped whole (nnFilterMatch filters by entropy).
- CutMix (UniMatch): with probability ``ws_cutmix_probability`` each strong patch gets a box of side ⌊β·s⌋ per axis
  (β = ``ws_cutmix_beta``) from another unlabeled patch of the batch, its pseudo-label the same box.
- Loss = nnU-Net's Dice + CE with deep supervision on the labeled batch + λ_u · the same loss (ignore value for
  unconfident voxels; deep-supervision targets by nnU-Net's downsampling of the mixed full-resolution pseudo-label) on
  the strong view; λ_u = ``ws_lambda_u`` (1, FixMatch). One forward pass over labeled and strong patches, one step.
- Logged per epoch: the share of unlabeled voxels above τ (``monitor_confident_share``, plotted in progress.png).
- ``network_weights`` = the network (stock ``nnUNetv2_predict``); an EMA teacher is saved as ``ws_teacher_weights``.
"""
from typing import Optional, Tuple

import numpy as np
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunetv2_semisup.methods.cml.cutmix import cutmix_box_mask, ds_targets
from nnunetv2_semisup.methods.mean_teacher.trainer import mean_teacher_ema_decay
from nnunetv2_semisup.methods.weak_strong.augment import strong_intensity_transforms, weak_strong_pipeline
from nnunetv2_semisup.training.helpers import ema_update
from nnunetv2_semisup.training.semisup_base import nnUNetTrainerSemiSup, unwrap


def confident_pseudo_labels(logits: torch.Tensor, threshold: Optional[float], ignore_value: int,
                            entropy_filter: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(targets (B, ...) long, confident mask (B, ...) bool) from teacher logits (B, C, ...): the argmax where the
    largest softmax probability is ≥ ``threshold`` (every voxel with None), ``ignore_value`` elsewhere. With
    ``entropy_filter``, a sample whose mean normalised entropy over its predicted foreground exceeds it is ignored
    whole."""
    prob = torch.softmax(logits.float(), 1)
    conf, labels = prob.max(1)
    mask = torch.ones_like(labels, dtype=torch.bool) if threshold is None else conf >= threshold
    if entropy_filter is not None:
        ent = -(prob * torch.log(prob.clamp_min(1e-12))).sum(1) / np.log(prob.shape[1])
        fg = labels > 0
        for b in range(labels.shape[0]):
            if fg[b].any() and float(ent[b][fg[b]].mean()) > entropy_filter:
                mask[b] = False
    return torch.where(mask, labels, torch.full_like(labels, ignore_value)), mask


def cutmix_with_partner(images: torch.Tensor, targets: torch.Tensor, probability: float, beta: float,
                        generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Per sample, with ``probability``: a box (side ⌊β·s⌋ per axis, random corner) of images and targets taken from
    the next sample of the batch (cyclically), the same box for both. Returns (images, targets, samples mixed)."""
    n = images.shape[0]
    if n < 2 or probability <= 0:
        return images, targets, 0
    spatial = tuple(images.shape[2:])
    partner = torch.roll(torch.arange(n), -1)
    images, targets, mixed = images.clone(), targets.clone(), 0
    src_images, src_targets = images.clone(), targets.clone()
    for b in range(n):
        if float(torch.rand(1, generator=generator)) >= probability:
            continue
        keep, _ = cutmix_box_mask(spatial, beta, generator=generator)   # 1 outside the box, 0 inside
        box = ~keep.to(device=images.device, dtype=torch.bool)
        images[b][:, box] = src_images[partner[b]][:, box]
        targets[b][box] = src_targets[partner[b]][box]
        mixed += 1
    return images, targets, mixed


class nnUNetTrainerWeakStrong(nnUNetTrainerSemiSup):
    supports_regions = supports_ignore_label = False   # hard pseudo-labels over a softmax; the ignore value is ours

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ws_threshold: Optional[float] = 0.95       # τ (FixMatch); None = every voxel counts
        self.ws_lambda_u = 1.0                          # unlabeled loss weight (FixMatch λ_u)
        self.ws_warmup_fraction = 0.05                  # supervised-only share of the epochs
        self.ws_unlabeled_batch_size: Optional[int] = None   # B_u; default nnU-Net's B
        self.ws_cutmix_probability = 0.5                # UniMatch
        self.ws_cutmix_beta = 2 / 3                     # box side / patch side: (2/3)³ ≈ 30 % of the patch
        self.ws_remap_probability = 0.5                 # tissue-contrast remapping of the strong view
        self.ws_ema_teacher = False                     # pseudo-labels from the network itself (FixMatch)
        self.ws_ema_decay = 0.99
        self.ws_entropy_filter: Optional[float] = None  # drop patches above this mean normalised entropy
        self.loss_terms = ("sup", "unsup")
        self.monitored_values = ("confident_share", "unlabeled_weight", "cutmix_share")
        self.ws_teacher = None
        self.ws_global_step = 0
        self._ws_loss = None

    # ------------------------------------------------------------------ setup
    def initialize(self):
        super().initialize()
        if self.ws_threshold is not None and not 0 < self.ws_threshold < 1:
            raise ValueError(f"ws_threshold must be in (0, 1) or None, got {self.ws_threshold}")
        ignore = self.label_manager.num_segmentation_heads   # a value no class uses
        loss = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5, "do_bg": False,
                               "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=1, ignore_label=ignore,
                              dice_class=MemoryEfficientSoftDiceLoss)
        self._ws_loss = DeepSupervisionWrapper(loss, self.loss.weight_factors) if isinstance(
            self.loss, DeepSupervisionWrapper) else loss
        if self.ws_ema_teacher:
            self.ws_teacher = self.build_network_architecture(
                self.plans_manager, self.configuration_manager, self.num_input_channels,
                self.label_manager.num_segmentation_heads, enable_deep_supervision=False).to(self.device)
            self.ws_teacher.load_state_dict({k: v for k, v in unwrap(self.network).state_dict().items()})
            for p in self.ws_teacher.parameters():
                p.requires_grad_(False)
            self.extra_checkpoint_objects["ws_teacher_weights"] = self.ws_teacher
        self.print_to_log_file(
            f"Weak->strong: tau={self.ws_threshold}, lambda_u={self.ws_lambda_u}, warm-up {self.warmup_epochs()} "
            f"epochs, B_u={self.unlabeled_batch_size()}, CutMix p={self.ws_cutmix_probability} "
            f"beta={self.ws_cutmix_beta:.3g}, remap p={self.ws_remap_probability}, "
            f"teacher={'EMA ' + str(self.ws_ema_decay) if self.ws_ema_teacher else 'the network itself'}, "
            f"entropy filter={self.ws_entropy_filter}")

    def warmup_epochs(self) -> int:
        return int(round(self.ws_warmup_fraction * self.num_epochs))

    def unlabeled_batch_size(self) -> int:
        b = self.ws_unlabeled_batch_size if self.ws_unlabeled_batch_size is not None else self.batch_size
        if int(b) < 1:
            raise ValueError(f"ws_unlabeled_batch_size must be >= 1, got {b}")
        return int(b)

    def get_batch_composition(self) -> Tuple[int, int]:
        """nnU-Net's B labeled patches intact; B_u unlabeled on top after the warm-up (none before: not read)."""
        return self.batch_size, (0 if self.current_epoch < self.warmup_epochs() else self.unlabeled_batch_size())

    def get_unlabeled_transforms(self):
        do_dummy_2d = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[1]
        strong = strong_intensity_transforms((0,) if do_dummy_2d else None, self.ws_remap_probability)
        return weak_strong_pipeline(self._train_transforms, strong, self.num_input_channels)

    def inference_views(self) -> dict:
        views = {"network": unwrap(self.network)}
        if self.ws_teacher is not None:
            views["ema_teacher"] = self.ws_teacher
        return views

    def get_method_state(self) -> dict:
        return {**super().get_method_state(), "ws_global_step": self.ws_global_step}

    def set_method_state(self, state: dict) -> None:
        super().set_method_state(state)
        self.ws_global_step = state["ws_global_step"]

    # ------------------------------------------------------------------ the step
    def unlabeled_weight(self) -> float:
        return 0.0 if self.current_epoch < self.warmup_epochs() else float(self.ws_lambda_u)

    def pseudo_label_teacher(self) -> torch.nn.Module:
        return self.ws_teacher if self.ws_ema_teacher else unwrap(self.network)

    def compute_losses(self, x_l, target, x_u) -> dict:
        b_l = x_l.shape[0]
        if x_u is None:
            output = self.network(x_l)
            l_sup = self.loss(output, target)
            return {"loss": l_sup, "sup": l_sup, "unsup": 0.0}
        c = self.num_input_channels
        x_weak, x_strong = x_u[:, :c], x_u[:, c:]
        with torch.no_grad():
            teacher_out = self.pseudo_label_teacher()(x_weak)
            top = teacher_out[0] if isinstance(teacher_out, (list, tuple)) else teacher_out
            pl, confident = confident_pseudo_labels(top, self.ws_threshold, self.label_manager.num_segmentation_heads,
                                                    self.ws_entropy_filter)
            x_strong, pl, mixed = cutmix_with_partner(x_strong, pl, self.ws_cutmix_probability, self.ws_cutmix_beta)
            ds = self._get_deep_supervision_scales() if self.enable_deep_supervision else None
            pl_targets = ds_targets(pl[:, None].to(torch.int16), ds)
        output = self.network(torch.cat((x_l, x_strong)))
        outputs = output if isinstance(output, (list, tuple)) else [output]
        sup_out, uns_out = [o[:b_l] for o in outputs], [o[b_l:] for o in outputs]
        single = not isinstance(output, (list, tuple))
        l_sup = self.loss(sup_out[0] if single else sup_out, target)
        l_uns = self._ws_loss(uns_out[0] if single else uns_out, pl_targets[0] if single else pl_targets)
        w = self.unlabeled_weight()
        return {"loss": l_sup + w * l_uns, "sup": l_sup, "unsup": l_uns,
                "confident_share": float(confident.float().mean()), "unlabeled_weight": w,
                "cutmix_share": mixed / x_u.shape[0]}

    def after_step(self, terms: dict) -> None:
        if self.ws_teacher is not None:
            ema_update(self.ws_teacher, unwrap(self.network),
                       mean_teacher_ema_decay(self.ws_global_step, self.ws_ema_decay))
        self.ws_global_step += 1
