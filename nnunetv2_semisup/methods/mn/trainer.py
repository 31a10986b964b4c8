"""``nnUNetTrainerMN``: M&N (Yeung et al., MLMI 2025) — a 2D SegFormer pretrained on natural images (LoRA,
slice by slice) and nnU-Net's 3D network co-train with soft pseudo-masks and learning-rate-guided sampling.
Documentation, and every deviation from the reference code: docs/mn.md.

- Epochs (``schedule.MNEpochPlan``): a supervised warm-up of W epochs (both models, same labeled batch), then
  co-training epochs alternating 3D student / 2D student; the other model is the teacher (eval mode, no_grad, same
  augmented patches). Each model has its own optimiser, epoch counter and LR schedule.
- Loss (``losses.py``): Dice_sq + KL_mean on cat(unlabeled with soft teacher targets, labeled with one-hot labels);
  the 3D student keeps nnU-Net's deep supervision with average-pooled soft targets.
- Batches (``lrg.py``): a co-training epoch's unlabeled share s = ⌊r·B_LRG⌋/B_LRG from the trained model's LR
  decay r (eq. 10), spread over its iterations at nnU-Net's batch size B; ``"uniform"`` draws b_u per iteration;
  ``mn_labeled_batch_intact`` (benchmark variant) adds the b_u unlabeled patches to B labeled ones instead.
- Pseudo-label refreshes (``pseudo_label_refresh.py``) at the end of warm-up and at 25/37.5/50/75 % of T_3D.
- Inference: the 3D network only (``network_weights``, stock ``nnUNetv2_predict``); the SegFormer, its optimiser,
  grad scaler and the M&N state live under extra checkpoint keys.
"""
import os
from typing import Optional, Tuple

import numpy as np
import torch

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunetv2_semisup.methods.mn.losses import (MNLoss, build_targets, deep_supervision_loss,
                                             scale_factors)
from nnunetv2_semisup.methods.mn.segformer import (INPUT_MAPPINGS, INPUT_WINDOWS, REFERENCE_LORA_TARGETS,
                                                   build_segformer_2d, check_slice_size, input_window,
                                                   segformer_checkpoint_from_env)
from nnunetv2_semisup.methods.mn.pseudo_label_refresh import PseudoLabelRefreshMixin
from nnunetv2_semisup.methods.mn.slicing import SliceWiseModel
from nnunetv2_semisup.methods.mn.schedule import (TRAIN_2D, TRAIN_3D, WARMUP, MNEpochPlan, ModelLRScheduler,
                                                  PolySchedule, ReferenceCompositeSchedule, WarmupCosineSchedule,
                                                  due_pseudo_label_refreshes, lr_warmup_epochs, warmup_stage_epochs)
from nnunetv2_semisup.methods.mn.lrg import (cotraining_lr_peak, epoch_composition, iteration_unlabeled, lrg_ratio,
                                             lrg_uniform, unlabeled_share)
from nnunetv2_semisup.training.helpers import eval_mode
from nnunetv2_semisup.training.semisup_base import nnUNetTrainerSemiSup, unwrap

PHASE_CODE = {WARMUP: 0, TRAIN_2D: 2, TRAIN_3D: 3}  # logged per epoch as 'mn_trained_model'


class nnUNetTrainerMN(PseudoLabelRefreshMixin, nnUNetTrainerSemiSup):
    # the loss needs a softmax probability simplex and one-hot targets; the 2D model slices 3D patches
    supports_regions = supports_ignore_label = False
    supported_patch_dims = (3,)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # --- hyperparameters (docs/mn.md; variants change them) ---
        self.mn_segformer_checkpoint = segformer_checkpoint_from_env()
        self.mn_2d_finetune = "lora"
        self.mn_lora_r, self.mn_lora_alpha, self.mn_lora_dropout = 64, 64, 0.1
        self.mn_lora_targets = REFERENCE_LORA_TARGETS
        self.mn_2d_lr, self.mn_2d_weight_decay, self.mn_2d_warmup_ratio = 1e-3, 0.01, 50 / 4000
        self.mn_2d_grad_clip: Optional[float] = None  # reference: no clipping of the 2D model
        self.mn_3d_optimizer = "sgd"  # "sgd" = nnU-Net's SGD (initial_lr, weight_decay); "adamw" (reference)
        # supervised stage = this share of each model's own schedule (paper: 500 of 4000), or W epochs if given
        self.mn_warmup_fraction, self.mn_warmup_epochs = 0.125, None
        self.mn_lrg_mode = "paper"  # "paper" | "linear" | "uniform"
        self.mn_lrg_batch_size: Optional[int] = 5  # LRG share quantised as ⌊r·5⌋/5 (paper's B); None: planned B
        # False (paper): LRG's b_u unlabeled patches replace labeled ones in the batch of B; True (_labeledIntact,
        # a benchmark variant): nnU-Net's B labeled patches stay and the b_u unlabeled ones come on top
        self.mn_labeled_batch_intact = False
        self.mn_2d_input_mapping = "imagenet"  # "imagenet" | "unit" (reference's [0, 1]) | "none" (nnU-Net's)
        # how intensities reach [0, 1] ("imagenet"/"unit"): "dataset" (one window from the plans), "reference"
        # (CT: the reference's [-175, 250] HU), "patch" (each patch by its percentiles; default before 2026-12-06)
        self.mn_2d_input_window = "dataset"
        self.mn_2d_pretrained = True  # False: SegFormer from random initialisation (_scratch), never a fallback
        self.mn_cotraining = True  # False: 2D trained during warm-up only, then a fixed teacher
        self.mn_slice_axis, self.mn_2d_chunk_size, self.mn_2d_checkpointing = 0, 32, True
        self.mn_pseudo_refresh_fractions = (0.25, 0.375, 0.5, 0.75)
        self.mn_export_pseudo_labels = True  # NIfTI of every refresh under <fold>/pseudo_labels/round_k/
        self.mn_unlabeled_oversample: Optional[float] = None  # None: = oversample_foreground_percent
        self.mn_schedule = "nnunet"  # "nnunet" (poly 3D, warm-up + cosine 2D) | "reference" (both)
        self.mn_uniform_seed = 12345
        self.loss_terms = ("3d", "2d", "dice_3d", "kl_3d", "dice_2d", "kl_2d")
        # --- state (set in initialize / restored from checkpoints) ---
        self.network_2d = self.optimizer_2d = self.grad_scaler_2d = None
        self.mn_plan: Optional[MNEpochPlan] = None
        self.mn_scheduler_2d: Optional[ModelLRScheduler] = None
        self.mn_phase = None
        self.mn_composition: Tuple[int, int] = (0, 0)  # patches the two loaders deliver per iteration
        self.mn_unlabeled_share = 0.0  # share of unlabeled patches in the current epoch (paper/linear LRG)
        self.mn_refreshes = []  # [(point, global epoch, round)]
        self.mn_rng: Optional[np.random.Generator] = None  # uniform-mode draws; seeded in initialize
        self._mn_batch_unlabeled = []  # b_u of each iteration of the current epoch
        self._mn_uniform_draws = []  # uniform mode: the current epoch's b_u per iteration
        self._mn_lr_peaks = {}
        self._mn_resume_segformer_config: Optional[dict] = None
        # the pseudo-label refreshes' store: class locations that make unlabeled crops foreground-aware
        self.class_locations_file: Optional[str] = None
        self.pseudo_label_round = 0

    # ------------------------------------------------------------------ setup
    def _check_supported(self):
        choices = {"mn_lrg_mode": ("paper", "linear", "uniform"), "mn_2d_input_mapping": INPUT_MAPPINGS,
                   "mn_2d_input_window": INPUT_WINDOWS,
                   "mn_schedule": ("nnunet", "reference"), "mn_slice_axis": (0, 1, 2)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {tuple(allowed)}, got {getattr(self, name)!r}")
        if self.mn_lrg_batch_size is not None and int(self.mn_lrg_batch_size) < 1:
            raise ValueError(f"mn_lrg_batch_size must be a positive integer or None, got {self.mn_lrg_batch_size}")

    def initialize(self):
        if self.was_initialized:
            raise RuntimeError("trainer already initialized")
        self._check_supported()
        self.mn_plan = MNEpochPlan(self.num_epochs, warmup_stage_epochs(
            self.num_epochs, self.mn_warmup_fraction, self.mn_warmup_epochs, self.mn_cotraining), self.mn_cotraining)
        if self.mn_unlabeled_oversample is not None:
            self.unlabeled_oversample_foreground_percent = self.mn_unlabeled_oversample
        super().initialize()  # 3D network, its optimiser (configure_optimizers) and loss (_build_loss)

        source = (f"'{self.mn_segformer_checkpoint}' (nnUNet_semisup_segformer; " + (
            "pretrained weights)" if self.mn_2d_pretrained else "its config only, RANDOM initialisation)")) \
            if self._mn_resume_segformer_config is None else "the checkpoint being resumed (weights loaded next)"
        self.print_to_log_file(f"M&N: 2D model from {source}, fine-tuning '{self.mn_2d_finetune}'")
        segformer = build_segformer_2d(
            self.mn_segformer_checkpoint, self.num_input_channels, self.label_manager.num_segmentation_heads,
            self.mn_2d_finetune, self.mn_lora_r, self.mn_lora_alpha, self.mn_lora_dropout, self.mn_lora_targets,
            log=self.print_to_log_file, config=self._mn_resume_segformer_config, pretrained=self.mn_2d_pretrained,
            imagenet_normalization=self.mn_2d_input_mapping == "imagenet").to(self.device)
        self.print_to_log_file(f"M&N: SegFormer config {segformer.hf_model().config.to_dict()}")
        slice_shape = [s for i, s in enumerate(self.configuration_manager.patch_size) if i != self.mn_slice_axis]
        check_slice_size(segformer, self.num_input_channels, slice_shape, self.device)
        self.network_2d = SliceWiseModel(segformer, self.mn_slice_axis, self.mn_2d_chunk_size,
                                         self.mn_2d_checkpointing, window=self._input_window()).to(self.device)
        n_train = sum(p.numel() for p in segformer.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in segformer.parameters())
        self.print_to_log_file(f"M&N: 2D model has {n_all} parameters, {n_train} trainable")
        self.optimizer_2d = torch.optim.AdamW([p for p in segformer.parameters() if p.requires_grad],
                                              lr=self.mn_2d_lr, weight_decay=self.mn_2d_weight_decay)
        self.mn_scheduler_2d = ModelLRScheduler(self.optimizer_2d, self._schedule(TRAIN_2D, self.mn_2d_lr),
                                                self.mn_plan, TRAIN_2D)
        if self.device.type == "cuda":
            self.grad_scaler_2d = torch.GradScaler("cuda")
        if self.is_ddp:
            self.network_2d = self.wrap_ddp(self.network_2d)
        self.extra_checkpoint_objects["mn_segformer_state"] = self.network_2d
        self.extra_checkpoint_objects["mn_segformer_optimizer_state"] = self.optimizer_2d
        # None on CPU: a checkpoint written on one device type resumes on the other
        self.extra_checkpoint_objects["mn_segformer_grad_scaler_state"] = self.grad_scaler_2d
        self.mn_rng = np.random.default_rng(self.mn_uniform_seed)
        p = self.mn_plan
        self.print_to_log_file(f"M&N: E={p.num_epochs}, warm-up W={p.warmup_epochs}, T_3D={p.T_3d}, T_2D={p.T_2d}, "
                               f"LRG '{self.mn_lrg_mode}' (share quantised by {self.lrg_batch_size}), schedule "
                               f"'{self.mn_schedule}', batch {self.batch_size}, 2D input "
                               f"'{self.mn_2d_input_mapping}', window '{self.mn_2d_input_window}'")

    def _adopt_or_refuse_input_window(self, state: dict) -> None:
        """A checkpoint from before ``mn_2d_input_window`` existed mapped every patch by its own percentiles: the run
        finishes as it began (the window has no weights, the 2D model's were trained on it). A checkpoint that
        names another window was trained by another variant: refuse and name it."""
        if "input_window" not in state:
            self.print_to_log_file("NOTE: the checkpoint predates mn_2d_input_window and mapped each patch by its own "
                                   "percentiles; this run continues so ('patch'). New runs use "
                                   f"'{self.mn_2d_input_window}'.")
            self.mn_2d_input_window = "patch"
            unwrap(self.network_2d).set_window("patch")
            return
        variant = {"patch": "nnUNetTrainerMN_patchWindow", "reference": "nnUNetTrainerMN_paper"}.get(
            state["input_window"])
        raise ValueError(f"{self.__class__.__name__}: the checkpoint's 2D model was trained on inputs mapped to "
                         f"[0, 1] with the '{state['input_window']}' window, this trainer uses "
                         f"'{self.mn_2d_input_window}'; " + (f"resume with -tr {variant} (after copying the model "
                                                            f"folder to that trainer's name) or " if variant else "")
                         + "set mn_2d_input_window in a subclass")

    def _input_window(self):
        """What ``SliceWiseModel`` maps to [0, 1]: None, "patch" or per-channel (low, high) from the plans."""
        if self.mn_2d_input_mapping == "none":
            return None
        if self.mn_2d_input_window == "patch":
            return "patch"
        lows, highs = input_window(self.configuration_manager.normalization_schemes,
                                   self.plans_manager.foreground_intensity_properties_per_channel,
                                   self.mn_2d_input_window)
        self.print_to_log_file(f"M&N: 2D input window ({self.mn_2d_input_window}) per channel, nnU-Net units: "
                               + ", ".join(f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(lows, highs)))
        return lows, highs

    @property
    def lrg_batch_size(self) -> int:
        return int(self.mn_lrg_batch_size) if self.mn_lrg_batch_size is not None else self.batch_size

    def _logged_series(self):
        return super()._logged_series() + ["lr_2d", "mn_trained_model", "mn_mean_batch_unlabeled"]

    def _schedule(self, model: str, initial_lr: float):
        T = self.mn_plan.schedule_length(model)
        w = lr_warmup_epochs(T, self.mn_2d_warmup_ratio)
        if self.mn_schedule == "reference":
            try:
                return ReferenceCompositeSchedule(initial_lr, T, w, self.mn_plan.warmup_epochs)
            except ValueError as e:
                raise ValueError(f"{self.__class__.__name__}: mn_schedule = 'reference' for the {model} model: {e}. "
                                 f"It needs a supervised stage W longer than the LR warm-up and shorter than the "
                                 f"model's schedule (not with mn_cotraining = False or W = 0); use "
                                 f"mn_schedule = 'nnunet' or change num_epochs/mn_warmup_epochs.") from e
        if model == TRAIN_3D:
            return PolySchedule(initial_lr, T)
        return WarmupCosineSchedule(initial_lr, T, w)

    def configure_optimizers(self):
        """3D optimiser and its own-epoch scheduler (``self.lr_scheduler``, stepped by nnU-Net each epoch)."""
        if self.mn_3d_optimizer == "sgd":
            optimizer = self.sgd()
        elif self.mn_3d_optimizer == "adamw":
            optimizer = torch.optim.AdamW(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay)
        else:
            raise ValueError(f"mn_3d_optimizer must be 'sgd' or 'adamw', got '{self.mn_3d_optimizer}'")
        return optimizer, ModelLRScheduler(optimizer, self._schedule(TRAIN_3D, self.initial_lr), self.mn_plan,
                                           TRAIN_3D)

    def _build_loss(self):
        """M&N loss (Dice_sq + KL_mean); for the 3D network wrapped in nnU-Net's deep supervision with nnU-Net's
        weights (also what nnU-Net's validation step uses)."""
        self.mn_loss = MNLoss()
        if not self.enable_deep_supervision:
            self.mn_ds_weights, self.mn_ds_factors = [1.0], [(1,) * len(self.configuration_manager.patch_size)]
            return self.mn_loss
        scales = self._get_deep_supervision_scales()
        self.mn_ds_factors = scale_factors(scales)
        self.mn_ds_weights = list(super()._build_loss().weight_factors)  # nnU-Net's own deep-supervision weights
        return DeepSupervisionWrapper(self.mn_loss, self.mn_ds_weights)

    # ------------------------------------------------------------------ epochs
    def on_train_epoch_start(self):
        e = self.current_epoch
        self.mn_phase = self.mn_plan.phase(e)
        self.mn_scheduler_2d.step(e)
        if self._has_unlabeled:
            done = {p for p, _, _ in self.mn_refreshes}
            due = due_pseudo_label_refreshes(e, self.mn_plan, self.mn_pseudo_refresh_fractions, done)
            if due:
                self.print_to_log_file(f"M&N: refreshing the 3D hard pseudo-labels (points {due})")
                self.refresh_unlabeled_pseudo_labels(export_nifti=self.mn_export_pseudo_labels)
                self.mn_refreshes.extend((p, e, self.pseudo_label_round) for p in due)
        self._mn_batch_unlabeled = []
        super().on_train_epoch_start()  # network.train(), 3D scheduler step, lr log, get_batch_composition()
        self.network_2d.train()
        self.logger.log("lr_2d", self.optimizer_2d.param_groups[0]["lr"], e)
        self.logger.log("mn_trained_model", PHASE_CODE[self.mn_phase], e)
        self.print_to_log_file(f"M&N epoch {e}: trains {self.mn_phase} (3D epoch {self.mn_plan.own_epoch(e, TRAIN_3D)}"
                               f"/{self.mn_plan.T_3d}, 2D epoch {self.mn_plan.own_epoch(e, TRAIN_2D)}/"
                               f"{self.mn_plan.T_2d}); unlabeled share {self.mn_unlabeled_share:.2f} (loaders "
                               f"b_l, b_u = {self.mn_composition}); lr 3D "
                               f"{self.optimizer.param_groups[0]['lr']:.3g}, lr 2D "
                               f"{self.optimizer_2d.param_groups[0]['lr']:.3g}")

    def get_batch_composition(self) -> Tuple[int, int]:
        B = self.batch_size
        phase = self.mn_phase if self.mn_phase is not None else self.mn_plan.phase(self.current_epoch)
        self.mn_unlabeled_share, self._mn_uniform_draws = 0.0, []
        if phase == WARMUP:
            comp = (B, 0)
        elif self.mn_lrg_mode == "uniform":
            # the epoch's b_u of every iteration, drawn now so the loaders deliver only the most either part uses
            self._mn_uniform_draws = [self.draw_uniform_unlabeled() for _ in range(self.num_iterations_per_epoch)]
            comp = (B - min(self._mn_uniform_draws), max(self._mn_uniform_draws))
        else:
            self.mn_unlabeled_share = unlabeled_share(self.lrg_ratio(phase), self.lrg_batch_size)
            comp = epoch_composition(self.mn_unlabeled_share, B)
        if self.mn_labeled_batch_intact:
            comp = (B, comp[1])  # the most unlabeled patches any iteration adds, on top of all B labeled ones
        self.mn_composition = comp
        return comp

    def draw_uniform_unlabeled(self) -> int:
        """Uniform mode's b_u of one iteration (0 without unlabeled cases)."""
        n_l, n_u = (0 if s is None else len(s.dataset.identifiers) for s in (self._labeled_stream,
                                                                            self._unlabeled_stream))
        return lrg_uniform(self.mn_rng, self.batch_size, n_l, n_u)

    def lrg_ratio(self, phase: str) -> float:
        """r of the model trained in this co-training epoch, from its own LR (paper) or epoch counter (linear)."""
        own = self.mn_plan.own_epoch(self.current_epoch, phase)
        total = self.mn_plan.schedule_length(phase)
        schedule = self._model_schedule(phase)
        if phase not in self._mn_lr_peaks:
            self._mn_lr_peaks[phase] = cotraining_lr_peak(schedule, self.mn_plan.warmup_epochs, total)
        peak_epoch, peak_lr = self._mn_lr_peaks[phase]
        optimizer = self.optimizer if phase == TRAIN_3D else self.optimizer_2d
        return lrg_ratio(self.mn_lrg_mode, own, self.mn_plan.warmup_epochs, total,
                         lr=optimizer.param_groups[0]["lr"], peak_epoch=peak_epoch, peak_lr=peak_lr,
                         final_lr=schedule.final_lr)

    def _model_schedule(self, phase: str):
        return (self.lr_scheduler if phase == TRAIN_3D else self.mn_scheduler_2d).schedule

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        b_u = float(np.mean(self._mn_batch_unlabeled)) if self._mn_batch_unlabeled else 0.0
        self.logger.log("mn_mean_batch_unlabeled", b_u, self.current_epoch)

    # ------------------------------------------------------------------ teachers
    @torch.no_grad()
    def teacher_softmax(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A teacher's soft targets: eval mode (restored afterwards), no_grad, full-resolution output (index 0 of
        deep supervision), softmax in float32."""
        with eval_mode(unwrap(model)) as teacher, self.autocast():
            out = teacher(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return torch.softmax(out.float(), 1)

    def soft_targets_2d(self, x: torch.Tensor) -> torch.Tensor:
        """2D teacher (slice by slice): softmax probabilities (N, C, Z, Y, X)."""
        return self.teacher_softmax(self.network_2d, x)

    def soft_targets_3d(self, x: torch.Tensor) -> torch.Tensor:
        """3D teacher: softmax probabilities of the full-resolution output."""
        return self.teacher_softmax(self.network, x)

    # ------------------------------------------------------------------ steps
    def step_3d(self, x_u, soft_u, x_l, targets_l) -> dict:
        """One 3D student step on cat(x_u, x_l) with cat(soft teacher targets, one-hot labels) at every DS scale."""
        x = torch.cat([t for t in (x_u, x_l) if t is not None])
        targets = build_targets(soft_u, targets_l, self.label_manager.num_segmentation_heads, self.mn_ds_factors)

        def terms():
            loss, dice, kl = deep_supervision_loss(self.mn_loss, self.network(x), targets, self.mn_ds_weights)
            return {"loss": loss, "dice_3d": dice, "kl_3d": kl}
        t = self.optimizer_step(terms, self.optimizer, self.grad_scaler, self.network.parameters(), self.grad_clip,
                                free_gradients=True)  # the 3D model is the 2D model's teacher next
        return self.log_values({"3d": t["loss"], "dice_3d": t["dice_3d"], "kl_3d": t["kl_3d"]})

    def step_2d(self, x_u, soft_u, x_l, target_l) -> dict:
        """One 2D student step (slice by slice, full resolution only) on the concatenated batch."""
        x = torch.cat([t for t in (x_u, x_l) if t is not None])
        target = build_targets(soft_u, None if target_l is None else [target_l],
                               self.label_manager.num_segmentation_heads, [(1, 1, 1)])[0]

        def terms():
            dice, kl = self.mn_loss.components(self.network_2d(x), target)
            return {"loss": self.mn_loss.weight_dice * dice + self.mn_loss.weight_kl * kl, "dice_2d": dice,
                    "kl_2d": kl}
        params = [p for p in self.network_2d.parameters() if p.requires_grad]
        t = self.optimizer_step(terms, self.optimizer_2d, self.grad_scaler_2d, params, self.mn_2d_grad_clip,
                                free_gradients=True)
        return self.log_values({"2d": t["loss"], "dice_2d": t["dice_2d"], "kl_2d": t["kl_2d"]})

    def iteration_composition(self, iteration: int) -> Optional[Tuple[int, int]]:
        """An LRG epoch's share spread over its iterations at batch B: the loaders deliver the most of each part
        (``get_batch_composition``) and iteration i uses B patches, b_u of them unlabeled (paper/linear: the share's
        quantised cumulative sum; uniform: the draw made for it at the epoch start). With
        ``mn_labeled_batch_intact`` the same b_u come on top of all B labeled patches (B + b_u per step)."""
        B = self.batch_size
        n_l, n_u = self.mn_composition
        if self.mn_phase in (None, WARMUP) or n_l + n_u <= B:
            return None
        if self.mn_lrg_mode != "uniform":
            b_u = iteration_unlabeled(iteration, self.mn_unlabeled_share, B)
        elif iteration < len(self._mn_uniform_draws):
            b_u = self._mn_uniform_draws[iteration]
        else:  # more iterations than nnU-Net's epoch has (e.g. a step outside its loop): draw now
            b_u = self.draw_uniform_unlabeled()
        b_u = min(max(b_u, B - n_l), n_u)
        return (n_l if self.mn_labeled_batch_intact else B - b_u), b_u

    def train_step(self, batch: dict) -> dict:
        """The phase's step(s) on the patches ``iteration_composition`` kept: warm-up trains both models on the
        labeled patches, a co-training epoch the phase's student with the other model as teacher."""
        x_l, targets, x_u = self.batch_to_device(batch)
        targets = [targets] if torch.is_tensor(targets) else targets  # one list for deep supervision on or off
        phase = self.mn_phase
        self._mn_batch_unlabeled.append(0 if x_u is None else x_u.shape[0])

        out = {}
        if phase == WARMUP:
            out.update(self.step_2d(None, None, x_l, targets[0]))
            out.update(self.step_3d(None, None, x_l, targets))
        elif phase == TRAIN_3D:
            soft = self.soft_targets_2d(x_u) if x_u is not None else None
            out.update(self.step_3d(x_u, soft, x_l, targets))
        elif phase == TRAIN_2D:
            soft = self.soft_targets_3d(x_u) if x_u is not None else None
            out.update(self.step_2d(x_u, soft, x_l, None if targets is None else targets[0]))
        else:
            raise RuntimeError("train_step called outside an epoch (mn_phase not set)")
        losses = [out[k] for k in ("3d", "2d") if k in out]
        out["loss"] = np.mean(losses)
        return out

    # ------------------------------------------------------------------ checkpoints
    def inference_views(self) -> dict:
        """The 3D U-Net (what predicts) and the 2D SegFormer run slice by slice on the same patch."""
        return {"3d": unwrap(self.network), "2d": unwrap(self.network_2d)}

    def get_method_state(self) -> dict:
        plan = self.mn_plan
        done = self.current_epoch + 1  # epochs completed when the checkpoint is written (nnU-Net's convention)
        return {**super().get_method_state(),
                "segformer_checkpoint": self.mn_segformer_checkpoint, "finetune": self.mn_2d_finetune,
                "segformer_config": unwrap(self.network_2d).model.hf_model().config.to_dict(),
                "num_epochs": plan.num_epochs, "W": plan.warmup_epochs, "T_3d": plan.T_3d, "T_2d": plan.T_2d,
                "cotraining": plan.cotraining,
                "epoch_3d": plan.own_epoch(done, TRAIN_3D), "epoch_2d": plan.own_epoch(done, TRAIN_2D),
                "scheduler_3d": self.lr_scheduler.state_dict(), "scheduler_2d": self.mn_scheduler_2d.state_dict(),
                "lrg_mode": self.mn_lrg_mode, "schedule": self.mn_schedule,
                "lrg_batch_size": self.mn_lrg_batch_size, "input_mapping": self.mn_2d_input_mapping,
                "labeled_batch_intact": self.mn_labeled_batch_intact,
                "input_window": self.mn_2d_input_window,
                "pretrained_2d": self.mn_2d_pretrained, "composition": tuple(self.mn_composition),
                "uniform_rng": self.mn_rng.bit_generator.state, "refreshes": list(self.mn_refreshes),
                "class_locations_file": self.class_locations_file, "pseudo_label_round": self.pseudo_label_round}

    def set_method_state(self, state: dict) -> None:
        super().set_method_state(state)
        self.pseudo_label_round = state.get("pseudo_label_round", 0)
        self.class_locations_file = state.get("class_locations_file")
        if self.class_locations_file is not None and not os.path.isfile(self.class_locations_file):
            self.print_to_log_file(f"WARNING: pseudo-label store {self.class_locations_file} is gone; unlabeled "
                                   f"crops are uniform until the next refresh.")
            self.class_locations_file = None
        self.set_class_locations_file(self.class_locations_file)
        plan = self.mn_plan
        # checkpoints written before these settings existed used the LRG batch B, nnU-Net intensities and the
        # paper's shared batch
        saved = (state["num_epochs"], state["W"], state["cotraining"], state["lrg_mode"], state["schedule"],
                 state.get("lrg_batch_size"), state.get("input_mapping", "none"),
                 state.get("labeled_batch_intact", False))
        now = (plan.num_epochs, plan.warmup_epochs, plan.cotraining, self.mn_lrg_mode, self.mn_schedule,
               self.mn_lrg_batch_size, self.mn_2d_input_mapping, self.mn_labeled_batch_intact)
        if saved[6] != "none" and state.get("input_window", "patch") != self.mn_2d_input_window:
            self._adopt_or_refuse_input_window(state)
        if saved != now:
            # the attribute that sets each entry: the refusal spells out the variant that continues the run
            attributes = ("num_epochs", "mn_warmup_epochs", "mn_cotraining", "mn_lrg_mode", "mn_schedule",
                          "mn_lrg_batch_size", "mn_2d_input_mapping", "mn_labeled_batch_intact")
            lines = "; ".join(f"self.{a} = {v!r}" for a, v, w in zip(attributes, saved, now) if v != w)
            raise ValueError(f"{self.__class__.__name__}: the checkpoint was trained with (num_epochs, W, "
                             f"cotraining, lrg_mode, schedule, lrg_batch_size, 2d_input_mapping, "
                             f"labeled_batch_intact) = {saved}, this "
                             f"trainer has {now}; the M&N schedules and the 2D model depend on them. Resume with the "
                             f"variant that has the checkpoint's settings, e.g. `class "
                             f"{self.__class__.__name__}_resume({self.__class__.__name__}): def __init__(self, "
                             f"*args, **kwargs): super().__init__(*args, **kwargs); {lines}` in a module under "
                             f"nnUNet_extTrainer, after copying the model folder to that trainer's name (README, "
                             f"'Upgrading')")
        if state["segformer_checkpoint"] != self.mn_segformer_checkpoint:
            self.print_to_log_file(f"NOTE: the checkpoint's SegFormer came from '{state['segformer_checkpoint']}', "
                                   f"now '{self.mn_segformer_checkpoint}'; the saved weights are used.")
            # the weights still descend from the saved source: later checkpoints keep naming it
            self.mn_segformer_checkpoint = state["segformer_checkpoint"]
        self.lr_scheduler.load_state_dict(state["scheduler_3d"])
        self.mn_scheduler_2d.load_state_dict(state["scheduler_2d"])
        self.mn_composition = tuple(state["composition"])
        self.mn_rng.bit_generator.state = state["uniform_rng"]
        self.mn_refreshes = [tuple(r) for r in state["refreshes"]]

    def before_resume_initialize(self, checkpoint: dict) -> None:
        # build the 2D model from the saved config (its complete weights are in the checkpoint) instead of from
        # nnUNet_semisup_segformer: resuming needs no hub
        self._mn_resume_segformer_config = checkpoint.get("semisup_state", {}).get("method", {}).get("segformer_config")
