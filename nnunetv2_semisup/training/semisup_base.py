"""``nnUNetTrainerSemiSup``: what every semi-supervised method shares, on top of ``nnUNetTrainer`` (README, "The
semi-supervised trainer base").

- A second data stream over ``<data_identifier>_unlabeled/`` (nnU-Net's loader and augmentations), joined with the
  labeled one by ``SemiSupBatchIterator``; the per-epoch composition ``(b_l, b_u)`` comes from
  ``get_batch_composition()`` and the streams are resized when it changes.
- The training step contract: ``batch_to_device`` → ``before_step`` → ``optimizer_step`` (``compute_losses`` under
  ``autocast`` → ``backward_and_step`` with one ``grad_clip``) → ``after_step`` → ``log_values``; a composition that
  varies within an epoch is ``iteration_composition``, applied by the batch iterator.
- Checkpoints (atomic writes, restored by ``--c``): nnU-Net's keys, every object in ``extra_checkpoint_objects`` under
  its own key, ``get/set_method_state`` for plain values (``semisup_state["method"]``; older layouts through
  ``method_state_of``).
- Logging: ``loss_terms`` as ``loss_<term>``, ``monitored_values`` (not losses) as ``monitor_<name>``, and ``b_l``,
  ``b_u``, in the log file and extra ``progress.png`` panels.

Subclasses keep nnU-Net's 5-argument constructor and set hyperparameters as attributes in ``__init__``.
"""
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from torch import distributed as dist
from torch._dynamo import OptimizedModule

from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunetv2_semisup.data.preprocess_unlabeled import stale_preprocessing_problem, unlabeled_folder_name
from nnunetv2_semisup.data.unlabeled_loader import AugmentedStream, SemiSupBatchIterator
from nnunetv2_semisup.data.unlabeled_dataset import UnlabeledDataset
from nnunetv2_semisup.training.progress_plot import SemiSupLocalLogger
from nnunetv2_semisup.trainer_dir import ext_trainer_env_problem

# top-level checkpoint keys nnU-Net itself writes; extra objects must not collide with them
NNUNET_CHECKPOINT_KEYS = ("network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                          "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes")


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or ±Inf; the message names the terms, the epoch and the iteration."""


class MissingUnlabeledDataError(RuntimeError):
    """No (or stale) preprocessed unlabeled cases; the message names the command that fixes it."""


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP and/or torch.compile wrappers."""
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = module.module
    if isinstance(module, OptimizedModule):
        module = module._orig_mod
    return module


CHECKPOINT_FORMAT = 2  # semisup_state = {"format_version", "method"}


def method_state_of(checkpoint: dict, legacy_key: Optional[str] = None) -> dict:
    """The method state of a checkpoint of any format (the single migration of older layouts).

    Format 1 kept SKCDF's and CML's state under a top-level key (``legacy_key``) and M&N's pseudo-label store
    (``class_locations_file``, ``pseudo_label_round``) next to the method state; both now live in it."""
    state = checkpoint["semisup_state"]
    if state.get("format_version", 1) >= 2:
        return state["method"]
    method = dict(checkpoint[legacy_key] if legacy_key is not None else state["method"])
    if state.get("class_locations_file") is not None or state.get("pseudo_label_round", 0):
        method.update(class_locations_file=state["class_locations_file"], pseudo_label_round=state["pseudo_label_round"])
    return method


class nnUNetTrainerSemiSup(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # --- hyperparameters (override in subclasses / variants) ---
        # False: a dataset without preprocessed unlabeled cases is an error. True: train on labeled data only
        # (b_u is folded into b_l) with a logged note.
        self.allow_labeled_only = False
        # replaces the plans' batch size, with the plans' meaning: the global batch, which nnU-Net splits over the
        # GPUs (with its oversampling); every method composes its labeled/unlabeled batch from the per-GPU share
        self.batch_size_override: Optional[int] = None
        # unlabeled crops are foreground-forced with this probability once pseudo-label locations exist
        self.unlabeled_oversample_foreground_percent = self.oversample_foreground_percent
        self.loss_terms: Tuple[str, ...] = ()  # terms train_step returns besides 'loss': loss_<term> per epoch
        self.monitored_values: Tuple[str, ...] = ()  # not losses (weights, fractions, stages): monitor_<name>

        # --- state ---
        self.unlabeled_preprocessed_folder = join(self.preprocessed_dataset_folder_base, unlabeled_folder_name(
            self.configuration_manager.data_identifier)) if self.preprocessed_dataset_folder_base else None
        self.extra_checkpoint_objects: Dict[str, object] = {}
        self._labeled_stream = self._unlabeled_stream = None
        self._has_unlabeled = None
        self.logger.local_logger = SemiSupLocalLogger()  # nnU-Net's only accepts its own keys

    # ------------------------------------------------------------------ setup
    # capabilities: a method that cannot handle something restricts it here (class attributes, checked once at
    # initialisation, with one message for all methods)
    supports_regions = True
    supports_ignore_label = True
    supported_patch_dims: Tuple[int, ...] = (2, 3)

    def check_capabilities(self) -> None:
        name, lm = self.__class__.__name__, self.label_manager
        dataset = self.plans_manager.dataset_name
        if lm.has_regions and not self.supports_regions:
            raise ValueError(f"{name} supports label-based datasets only; dataset {dataset} is region-based (regions "
                             f"in dataset.json labels), and the method's losses and pseudo-labels need a softmax over "
                             f"classes. Train it with nnU-Net's region-based trainers or convert it to plain labels.")
        if lm.has_ignore_label and not self.supports_ignore_label:
            raise ValueError(f"{name} supports label-based datasets only, without an ignore label; dataset {dataset} "
                             f"has ignore label {lm.ignore_label}, and the method's pseudo-labels and losses assume "
                             f"dense labels. Remove 'ignore' from dataset.json labels.")
        dims = len(self.configuration_manager.patch_size)
        if dims not in self.supported_patch_dims:
            wanted = " or ".join(f"{d}D" for d in self.supported_patch_dims)
            raise ValueError(f"{name} needs a {wanted} configuration (3D: 3d_fullres/3d_lowres, 2D: 2d); "
                             f"'{self.configuration_name}' has a {dims}D patch.")

    # attributes that were renamed: a subclass still setting one would otherwise be ignored without a word
    RENAMED_ATTRIBUTES = {"skcdf_grad_clip": "grad_clip", "cml_grad_clip": "grad_clip", "mn_3d_grad_clip": "grad_clip",
                          "mn_batch_size": "batch_size_override",
                          # these two were per-GPU compositions; batch_size_override is global like the plans'
                          "skcdf_batch_size": "batch_size_override, the global batch split over the GPUs",
                          "cml_batch_size": "batch_size_override, the global batch split over the GPUs"}

    def initialize(self):
        renamed = [f"{old} (now {new})" for old, new in self.RENAMED_ATTRIBUTES.items() if hasattr(self, old)]
        if renamed:
            raise ValueError(f"{self.__class__.__name__} sets renamed attributes: {', '.join(renamed)}; set the new "
                             f"name instead")
        self.check_capabilities()
        problem = ext_trainer_env_problem()  # nnU-Net could not find the trainer again for --c, --val or predict
        if problem:
            raise RuntimeError(f"{self.__class__.__name__}: {problem}")
        super().initialize()
        self.logger.local_logger.register(self._logged_series())

    def _logged_series(self) -> List[str]:
        return (["batch_labeled", "batch_unlabeled"] + [f"loss_{t}" for t in self.loss_terms]
                + [f"monitor_{m}" for m in self.monitored_values])

    def wrap_ddp(self, module: torch.nn.Module) -> torch.nn.Module:
        """DDP as nnU-Net wraps its network (SyncBatchNorm, this rank's GPU); on the CPU (gloo) without either."""
        if self.device.type != "cuda":
            return torch.nn.parallel.DistributedDataParallel(module)
        return torch.nn.parallel.DistributedDataParallel(torch.nn.SyncBatchNorm.convert_sync_batchnorm(module),
                                                         device_ids=[self.local_rank])

    def refuse_instance_overrides(self, class_attributes: Tuple[str, ...]) -> None:
        """Architecture switches must be class attributes: ``nnUNetv2_predict`` builds the network from the class
        (static ``build_network_architecture``), so a value set on the instance in ``__init__`` would train one
        architecture and predict with another."""
        overridden = [name for name in class_attributes if name in vars(self)]
        if overridden:
            raise ValueError(f"{self.__class__.__name__}: {', '.join(overridden)} must be set as class attributes of "
                             f"a trainer subclass (e.g. `class MyTrainer({type(self).__name__}): "
                             f"{overridden[0]} = ...`), not in __init__: the network is built from the class at "
                             f"prediction time.")

    def _set_batch_size_and_oversample(self):
        """nnU-Net's batch size (split over the GPUs) from ``batch_size_override`` instead of the plans, when set. The
        plans stay as planned: nnU-Net reads a configuration manager built on a copy of them."""
        b = self.batch_size_override
        if b is None:
            return super()._set_batch_size_and_oversample()
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"{self.__class__.__name__}: batch_size_override={b!r} is invalid; use a positive "
                             f"integer (the global batch over all GPUs, like the plans' batch_size) or None.")
        planned = self.configuration_manager
        self.configuration_manager = ConfigurationManager({**planned.configuration, "batch_size": b})
        try:
            super()._set_batch_size_and_oversample()
        finally:
            self.configuration_manager = planned

    def get_batch_composition(self) -> Tuple[int, int]:
        """``(b_l, b_u)`` for the current epoch: labeled and unlabeled patches per (per-GPU) batch.

        Called at the start of every training epoch. Default: half of nnU-Net's batch each (at least one), so the
        memory of a step stays close to nnU-Net's.
        """
        b_l = max(1, (self.batch_size + 1) // 2)
        return b_l, max(1, self.batch_size - b_l)

    def get_unlabeled_transforms(self):
        """Augmentations of the unlabeled stream; default: nnU-Net's training augmentations."""
        return self._train_transforms

    def _unlabeled_available(self) -> bool:
        folder = self.unlabeled_preprocessed_folder
        return bool(folder) and os.path.isdir(folder) and len(self.dataset_class.get_identifiers(folder)) > 0

    def get_unlabeled_dataset(self) -> Optional[UnlabeledDataset]:
        cmd = (f"nnUNetv2_semisup_preprocess -d {self.plans_manager.dataset_name} -c {self.configuration_name}"
               + (f" -p {self.plans_manager.plans_name}" if self.plans_manager.plans_name != "nnUNetPlans" else ""))
        if self._unlabeled_available():
            stale = stale_preprocessing_problem(self.unlabeled_preprocessed_folder, self.plans_manager.plans,
                                                self.configuration_manager, self.plans_manager.plans_name,
                                                self.configuration_name)
            if stale:
                raise MissingUnlabeledDataError(f"{stale}. Run `{cmd} --overwrite` before training "
                                                f"{self.__class__.__name__}.")
        else:
            msg = (f"No preprocessed unlabeled cases in {self.unlabeled_preprocessed_folder}. Put unlabeled scans in "
                   f"nnUNet_raw/{self.plans_manager.dataset_name}/imagesUnlabeled/ and run `{cmd}` before training "
                   f"{self.__class__.__name__}.")
            if not self.allow_labeled_only:
                raise MissingUnlabeledDataError(msg)
            self.print_to_log_file(f"NOTE: {msg} {self.__class__.__name__} allows a labeled-only run: training on "
                                   f"labeled cases only.")
            return None
        return UnlabeledDataset(self.dataset_class, self.unlabeled_preprocessed_folder,
                                class_locations_file=self.unlabeled_class_locations_file(), rebuild_command=cmd)

    def unlabeled_class_locations_file(self) -> Optional[str]:
        """Class locations of pseudo-labels that make unlabeled crops foreground-aware (oversampled with
        ``unlabeled_oversample_foreground_percent``); None = uniform crops. M&N's refreshes provide one."""
        return None

    def get_dataloaders(self):
        """Labeled + unlabeled training streams (``SemiSupBatchIterator``) and the validation loader, built like
        nnU-Net's ``get_dataloaders``, which has no hook for a second stream or a batch size that changes per epoch."""
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        ds_scales = self._get_deep_supervision_scales()
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        regions = self.label_manager.foreground_regions if self.label_manager.has_regions else None
        self._train_transforms = self.get_training_transforms(
            patch_size, rotation_for_DA, ds_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=self.label_manager.foreground_labels, regions=regions,
            ignore_label=self.label_manager.ignore_label)
        val_transforms = self.get_validation_transforms(
            ds_scales, is_cascaded=self.is_cascaded, foreground_labels=self.label_manager.foreground_labels,
            regions=regions, ignore_label=self.label_manager.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        unlabeled_dataset = self.get_unlabeled_dataset()
        self._has_unlabeled = unlabeled_dataset is not None

        n_proc = get_allowed_n_proc_DA()
        pin = self.device.type == "cuda"
        n_train = n_proc if not self._has_unlabeled else (max(1, n_proc // 2) if n_proc > 0 else 0)
        # Both streams oversample foreground probabilistically: nnU-Net's deterministic "last x % of the batch"
        # rule depends on the batch size, which is b_l/b_u < B here and changes per epoch under LRG; it never
        # fires for a batch of 1 (and always fires for oversample_foreground_percent = 0.5).
        self._labeled_stream = AugmentedStream(
            dataset_tr, initial_patch_size, patch_size, self.label_manager, self._train_transforms,
            self.oversample_foreground_percent, True, n_train, pin)
        if self._has_unlabeled:
            self._unlabeled_stream = AugmentedStream(
                unlabeled_dataset, initial_patch_size, patch_size, self.label_manager,
                self.get_unlabeled_transforms(), self.unlabeled_oversample_foreground_percent, True, n_train, pin)
        val_stream = AugmentedStream(dataset_val, patch_size, patch_size, self.label_manager, val_transforms,
                                     self.oversample_foreground_percent, self.probabilistic_oversampling,
                                     max(1, n_proc // 2) if n_proc else 0, pin, num_cached=max(3, n_proc // 4))
        val_stream.set_batch_size(self.batch_size)
        mt_gen_val = val_stream.augmenter
        _ = next(mt_gen_val)
        return SemiSupBatchIterator(self._labeled_stream, self._unlabeled_stream,
                                    self.iteration_composition), mt_gen_val

    # ------------------------------------------------------------------ the training step
    # The contract (README, "The semi-supervised trainer base"): a method implements compute_losses and, if it needs
    # them, the two hooks; one with several optimisers (M&N) switches between optimizer_step calls in its train_step.
    grad_clip: Optional[float] = 12.0  # nnU-Net's gradient-norm clipping; None = off (every method's one attribute)

    def train_step(self, batch: dict) -> dict:
        x_l, y_l, x_u = self.batch_to_device(batch)
        self.before_step()
        terms = self.optimizer_step(lambda: self.compute_losses(x_l, y_l, x_u), self.optimizer, self.grad_scaler,
                                    self.network.parameters(), self.grad_clip)
        self.after_step(terms)
        return self.log_values(terms)

    def optimizer_step(self, compute_terms: Callable[[], dict], optimizer: torch.optim.Optimizer, grad_scaler,
                       parameters, max_grad_norm: Optional[float], free_gradients: bool = False) -> dict:
        """One optimisation step for any (loss, optimizer) pair: zero the gradients, ``compute_terms()`` (a dict
        with the total under ``"loss"``) under nnU-Net's autocast, then ``backward_and_step``. Returns the terms.
        Every method's step goes through here (M&N's two models included)."""
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            terms = compute_terms()
        self.backward_and_step(terms["loss"], optimizer, grad_scaler, parameters, max_grad_norm, free_gradients,
                               terms=terms)
        return terms

    def sgd(self, momentum: float = 0.99, nesterov: bool = True) -> torch.optim.SGD:
        """nnU-Net's optimiser (SGD over the network, ``initial_lr``, ``weight_decay``); methods change only the
        momentum terms (SKCDF's attribute, CML's reference recipe)."""
        return torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                               momentum=momentum, nesterov=nesterov)

    def iteration_composition(self, iteration: int) -> Optional[Tuple[int, int]]:
        """``(b_l, b_u)`` of iteration ``iteration`` of the epoch when a method varies it within the epoch (M&N's
        LRG), or None: every iteration uses the epoch's composition (``get_batch_composition``), which must hold at
        least what any iteration uses. ``SemiSupBatchIterator`` applies it before the batch reaches ``train_step``."""
        return None

    def compute_losses(self, x_l: Optional[torch.Tensor], y_l, x_u: Optional[torch.Tensor]) -> dict:
        """The method's loss terms for one batch: a dict holding the total under ``"loss"`` (a tensor to
        backpropagate) and any named terms or monitored values (tensors or floats) to log."""
        raise NotImplementedError(f"{self.__class__.__name__} must implement compute_losses (or train_step)")

    def before_step(self) -> None:
        """Hook before the forward pass of each iteration (e.g. SKCDF's EMA transfer, a per-iteration LR)."""

    def after_step(self, terms: dict) -> None:
        """Hook after the optimiser step (EMA teachers, counters)."""

    def batch_to_device(self, batch: dict):
        """(x_l, y_l, x_u) on the device; y_l keeps nnU-Net's form (a list of deep-supervision targets or one
        tensor); None for a part the batch does not hold."""
        def move(t):
            return None if t is None else t.to(self.device, non_blocking=True)
        y_l = batch.get("target")
        y_l = [move(t) for t in y_l] if isinstance(y_l, (list, tuple)) else move(y_l)
        x_u = batch["unlabeled"]["data"] if "unlabeled" in batch else None
        return move(batch.get("data")), y_l, move(x_u)

    def autocast(self):
        """nnU-Net's mixed precision: autocast on CUDA, nothing elsewhere."""
        return torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    @staticmethod
    def log_values(terms: dict) -> dict:
        """``train_step`` outputs must be numpy/float (nnU-Net averages them per epoch)."""
        return {k: v.detach().cpu().numpy() if torch.is_tensor(v) else np.float64(v) for k, v in terms.items()}

    # ------------------------------------------------------------------ optimisation
    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, grad_scaler, parameters,
                          max_grad_norm: Optional[float] = 12.0, free_gradients: bool = False,
                          terms: Optional[dict] = None) -> None:
        """nnU-Net's ``train_step`` recipe for any (loss, optimizer) pair: backward (scaled by the GradScaler on
        CUDA), optional gradient-norm clipping, optimizer step; optionally free the gradients afterwards (e.g. for
        a model that is a teacher next). A NaN/Inf loss stops training before anything is updated (``terms``: the
        named loss terms, to say which one is at fault)."""
        self.stop_on_nonfinite_loss(loss, terms)
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            if max_grad_norm is not None:
                grad_scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
            optimizer.step()
        if free_gradients:
            optimizer.zero_grad(set_to_none=True)

    def stop_on_nonfinite_loss(self, loss: torch.Tensor, terms: Optional[dict] = None) -> None:
        """Raise ``NonFiniteLossError`` (naming the terms, epoch and iteration) if ``loss`` is NaN or ±Inf. Raised
        before the backward pass, so no weight changes and no checkpoint is written: the last checkpoint on disk is
        the last good state (nnU-Net only writes checkpoints at epoch ends)."""
        if bool(torch.isfinite(loss.detach()).all()):
            return
        values = {k: float(torch.as_tensor(v).detach().float().mean()) for k, v in (terms or {}).items()
                  if v is not None and k != "loss"}
        bad = {k: v for k, v in values.items() if not np.isfinite(v)}
        shown = ", ".join(f"{k}={v}" for k, v in (bad or values).items()) or "no named terms"
        it = getattr(self.dataloader_train, "iteration", None)
        where = f"epoch {self.current_epoch}" + (f", iteration {it} of {self.num_iterations_per_epoch}" if it else "")
        raise NonFiniteLossError(
            f"{self.__class__.__name__}: non-finite training loss ({float(loss.detach().float())}) at {where}; "
            f"non-finite terms: {shown}. Training stopped before this step changed any weight; the last checkpoint "
            f"in {self.output_folder} (checkpoint_latest.pth, written at the end of an earlier epoch) is untouched — "
            f"continue from it with --c after fixing the cause. Usual causes: NaN/Inf voxels in a scan (re-run "
            f"nnUNetv2_semisup_preprocess, which refuses them), a learning rate or loss weight too high.")

    # ------------------------------------------------------------------ epochs
    def set_batch_composition(self, b_l: int, b_u: int) -> None:
        """Resize the two streams to ``b_l`` labeled and ``b_u`` unlabeled samples per batch."""
        b_l, b_u = int(b_l), int(b_u)
        if b_l < 0 or b_u < 0 or b_l + b_u == 0:
            raise ValueError(f"{self.__class__.__name__}: invalid batch composition b_l={b_l}, b_u={b_u}")
        if not self._has_unlabeled:
            b_l, b_u = b_l + b_u, 0
        if (b_l, b_u) != self.dataloader_train.composition or not getattr(self, "_composition_logged", False):
            # logged at the first epoch too: the log says what each step saw (the LRG ramp changes it later)
            self.print_to_log_file(f"Batch composition: {b_l} labeled + {b_u} unlabeled")
            self._composition_logged = True
        self._labeled_stream.set_batch_size(b_l)
        if self._unlabeled_stream is not None:
            self._unlabeled_stream.set_batch_size(b_u)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.dataloader_train.iteration = 0
        self.set_batch_composition(*self.get_batch_composition())
        b_l, b_u = self.dataloader_train.composition
        self.logger.log("batch_labeled", b_l, self.current_epoch)
        self.logger.log("batch_unlabeled", b_u, self.current_epoch)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        for prefix, names, title in (("loss_", self.loss_terms, "loss terms"),
                                     ("monitor_", self.monitored_values, "monitored")):
            for name in names:
                values = [float(np.mean(o[name])) for o in train_outputs if name in o]
                value = float(np.mean(values)) if values else float("nan")
                if self.is_ddp:
                    gathered = [None] * dist.get_world_size()
                    dist.all_gather_object(gathered, value)
                    value = float(np.nanmean(gathered)) if not np.all(np.isnan(gathered)) else float("nan")
                self.logger.log(prefix + name, value, self.current_epoch)
            if names:
                self.print_to_log_file(f"{title}: " + ", ".join(
                    f"{n}={self.logger.get_value(prefix + n, step=-1):.4f}" for n in names))

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.dataloader_train, SemiSupBatchIterator):
            self.dataloader_train.finish()  # nnU-Net only finishes its own two augmenters

    # ------------------------------------------------------------------ views of a trained model
    def inference_views(self) -> Dict[str, torch.nn.Module]:
        """The trained model's independent predictors of one input, each a module returning logits (full
        resolution first under deep supervision): where a method holds two (a teacher, two subnets, two decoders, a
        2D and a 3D model), their disagreement shows where the model is unsure (``nnUNetv2_semisup_rank_unlabeled``).
        Default: the network ``nnUNetv2_predict`` uses."""
        return {"network": unwrap(self.network)}

    # ------------------------------------------------------------------ checkpoints
    # get_method_state() is stored in checkpoint["semisup_state"]["method"] (format 2). Format 1 kept SKCDF's and CML's
    # method state under this top-level key instead; read by ``method_state_of`` only
    legacy_method_state_key: Optional[str] = None
    # variants whose networks an older default of this trainer built (README, "Upgrading"): named when a checkpoint's
    # network does not fit, so a model trained before the change can be resumed under the right name
    architecture_variants: Tuple[str, ...] = ()

    def architecture_mismatch_message(self, filename: str, error: BaseException) -> str:
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if ln.startswith(("Missing key", "Unexpected key", "size mismatch"))),
                      lines[-1] if lines else "")
        hint = (f"resume it with the variant that builds that network ({', '.join(self.architecture_variants)}) "
                if self.architecture_variants else "resume it with the trainer (and plans) that wrote it ")
        return (f"{filename} holds a network that does not fit the one {self.__class__.__name__} builds now "
                f"({detail[:300]}). If it was trained before a default of this trainer changed, {hint}after copying "
                f"its model folder to that trainer's name (README, 'Upgrading'); the same name predicts it with "
                f"nnUNetv2_predict -tr.")

    def get_method_state(self) -> dict:
        """Plain (picklable) method state saved in the checkpoint; override and call super()."""
        return {}

    def set_method_state(self, state: dict) -> None:
        """Restore what ``get_method_state`` returned; override and call super()."""

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the semi-supervised extras, written atomically (temp file + rename)."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": unwrap(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }
        for key, obj in self.extra_checkpoint_objects.items():
            if key in NNUNET_CHECKPOINT_KEYS or key in ("semisup_state", self.legacy_method_state_key):
                raise KeyError(f"extra checkpoint key '{key}' collides with nnU-Net's own keys")
            checkpoint[key] = None if obj is None else \
                (unwrap(obj) if isinstance(obj, torch.nn.Module) else obj).state_dict()
        checkpoint["semisup_state"] = {"format_version": CHECKPOINT_FORMAT, "method": self.get_method_state()}
        tmp = filename + ".tmp"
        torch.save(checkpoint, tmp)
        os.replace(tmp, filename)

    def before_resume_initialize(self, checkpoint: dict) -> None:
        """Hook for ``--c``: nnU-Net initialises the trainer inside ``load_checkpoint``; a method that builds parts
        of itself from the checkpoint (M&N's SegFormer config) reads them here."""

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError("nnUNetTrainerSemiSup.load_checkpoint expects a checkpoint file path")
        # read once here (nnU-Net reads the file once more itself: its load_checkpoint takes only a path in 2.8)
        checkpoint = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        if not self.was_initialized:
            self.before_resume_initialize(checkpoint)
        try:
            super().load_checkpoint(filename_or_checkpoint)
        except RuntimeError as e:
            if "state_dict" not in str(e):
                raise
            raise RuntimeError(self.architecture_mismatch_message(filename_or_checkpoint, e)) from None
        if "semisup_state" not in checkpoint:
            raise RuntimeError(f"{filename_or_checkpoint} was not written by a nnunetv2_semisup trainer (no "
                               f"'semisup_state'); it cannot be resumed with {self.__class__.__name__}. Use "
                               f"-pretrained_weights to start from its network weights instead.")
        for key, obj in self.extra_checkpoint_objects.items():
            if key not in checkpoint:
                raise RuntimeError(f"{filename_or_checkpoint} has no '{key}' entry needed by "
                                   f"{self.__class__.__name__}; was it written by a different trainer?")
            if obj is None or checkpoint[key] is None:
                # optional objects such as a CUDA-only GradScaler; a CPU checkpoint resumes on CUDA and vice versa
                if obj is not checkpoint[key]:
                    self.print_to_log_file(f"NOTE: '{key}' is {'not used' if obj is None else 'not saved'} on this "
                                           f"device type; it starts fresh.")
                continue
            (unwrap(obj) if isinstance(obj, torch.nn.Module) else obj).load_state_dict(checkpoint[key])
        self.set_method_state(method_state_of(checkpoint, self.legacy_method_state_key))
        logs = self.logger.local_logger.my_fantastic_logging
        for m in self.monitored_values:  # checkpoints written before monitored values had their own series
            if f"loss_{m}" in logs and f"monitor_{m}" not in logs:
                logs[f"monitor_{m}"] = logs.pop(f"loss_{m}")
        self.logger.local_logger.extra_keys = [k for k in self.logger.local_logger.extra_keys if k in logs]
        self.logger.local_logger.register(self._logged_series())

