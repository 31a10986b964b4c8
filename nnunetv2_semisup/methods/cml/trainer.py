"""``nnUNetTrainerCML``: Cross-View Mutual Learning (Wu et al., ACM MM 2024) on nnU-Net (docs/cml.md).

Two nnU-Net networks (``CMLDualNetwork``); subnet 2 upsamples by interpolation + conv like the reference's
heterogeneous VNet pair (``_identical``: two subnets of the same architecture).
- Pretraining, the first round(0.12·E) epochs (round half up; fixed at the first start and restored on ``--c``):
  L_pre = l_w·(sup_DS(o¹(X_l,mix), Y_mix) + sup_DS(o²(X_l,mix), Y_mix)) + λ2·(dis(f¹_l, f²_l) + dis(f²_l, f¹_l));
  the unlabeled stream is idle (b_u = 0, never advanced).
- Self-training, the remaining epochs, continuing from the last pretraining state (same optimiser and schedule; the
  reference's best-checkpoint reload selected on the test list is deliberately not ported):
  L = l_w·(sup¹_l + sup²_l) + λ1·(sup_DS(o¹_u, T¹) + sup_DS(o²_u, T²)) + λ2·(dis_l(1,2) + dis_l(2,1) + dis_u(1,2)
  + dis_u(2,1)), with T¹, T² the heterogeneous CutMix targets of paper eq. 9 built from LCC-filtered pseudo-labels
  of the unmixed unlabeled batch (no_grad, network in its current mode). No ramp-ups. One backward, one step.
- sup = ½·(CE + per-sample Dice incl. background) applied to every deep-supervision output with nnU-Net's DS weights;
  dis = 1 + mean per-voxel channel cosine at the bottleneck, partner detached (``methods/cml/losses.py``).
- CutMix (``methods/cml/cutmix.py``): one zero box of ⌊β·s⌋ per axis per mixing operation, shared by all pairs; halves
  a (first B/2) and b (second B/2); mixing at full resolution, DS targets by nnU-Net's downsampling of the mixed label.
- Batches: B_l = B_u = largest even number ≤ nnU-Net's per-GPU batch size, at least 2 (rounded with a logged note);
  with ``batch_size_override`` (the global batch, split over the GPUs) the per-GPU share must be even (else refused).
- Optimiser: nnU-Net's default over both subnets (one SGD, poly LR over all epochs, clipping at 12).
- Inference: ``CMLDualNetwork.forward`` = (logits₁ + logits₂)/2; ``network_weights`` holds both subnets.
- Method state (checkpoint ``semisup_state``): stage, pretraining length, mask draws, self-training iterations.
"""
import math
from typing import Optional, Tuple

import torch
from torch import distributed as dist

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunetv2_semisup.methods.cml.cutmix import cutmix_box_mask, cutmix_pairs, ds_targets, heterogeneous_targets
from nnunetv2_semisup.methods.cml.losses import CMLSupLoss, feature_discrepancy
from nnunetv2_semisup.methods.cml.network import CMLDualNetwork, build_cml_network
from nnunetv2_semisup.methods.cml.pseudo_labels import cml_pseudo_labels
from nnunetv2_semisup.training.semisup_base import nnUNetTrainerSemiSup, unwrap

PRETRAIN, SELFTRAIN = "pretrain", "selftrain"


def resolve_pair_batch_size(per_gpu: int, override: Optional[int] = None, world_size: int = 1
                            ) -> Tuple[int, Optional[str]]:
    """(B, note): B_l = B_u for CML (docs/cml.md) from nnU-Net's per-GPU batch size. A planned odd size rounds down to
    pairs (minimum 2), with a note to log; a size the user asked for (``batch_size_override``, the global batch over
    ``world_size`` GPUs) must give an even per-GPU share ≥ 2."""
    if override is not None:
        if per_gpu < 2 or per_gpu % 2:
            even = 2 * world_size * max(1, round(override / (2 * world_size)))
            raise ValueError(f"batch_size_override={override} is invalid for CML: it gives {per_gpu} patches per GPU "
                             f"on {world_size} GPU(s), and CML mixes pairs of patches, so the labeled and unlabeled "
                             f"batches per GPU must be even and ≥ 2 (e.g. batch_size_override={even}).")
        return per_gpu, None
    b = max(2, int(per_gpu) // 2 * 2)
    note = None if b == per_gpu else (f"CML needs pairs of patches: planned batch size {per_gpu} -> "
                                      f"{b} labeled + {b} unlabeled patches per iteration")
    return b, note


def pretrain_epochs_for(num_epochs: int, fraction: float) -> int:
    """round(fraction · E), rounding halves up (Python's round() would round 0.5 to even). With 0 < fraction < 1 and
    E ≥ 2 each stage gets at least one epoch, so a short run (tests, demo: E = 2-8) still pretrains and then
    self-trains; from E = 5 on (fraction 0.12) this is plain rounding."""
    n = int(math.floor(fraction * num_epochs + 0.5))
    if 0 < fraction < 1 and num_epochs >= 2:
        n = min(max(n, 1), num_epochs - 1)
    return n


class nnUNetTrainerCML(nnUNetTrainerSemiSup):
    supports_regions = supports_ignore_label = False  # hard pseudo-labels and CutMix of label maps
    legacy_method_state_key = "cml_state"  # where checkpoints of format 1 kept the method state
    architecture_variants = ("nnUNetTrainerCML_identical",)  # the default before the heterogeneous pair
    # a class attribute: nnUNetv2_predict builds the network from the class (build_network_architecture) without
    # instantiating it. True = the reference's heterogeneous pair (subnet 2 upsamples by interpolation + conv)
    cml_hetero = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.cml_lambda1 = 1.0  # unlabeled loss weight
        self.cml_lambda2 = 0.2  # discrepancy weight
        self.cml_labeled_weight = 1.0  # l_w
        self.cml_beta = 2 / 3  # cube side ratio
        self.cml_pretrain_fraction = 0.12  # pretraining share of epochs
        self.cml_lcc = True  # largest-connected-component filter on pseudo-labels
        self.cml_binary_threshold = 0.5  # foreground threshold when C = 2
        if len(self.configuration_manager.patch_size) == 2:
            # the paper's 2D (ACDC) recipe; 3D (LA, BraTS) uses the values above. Variants set theirs after this.
            self.cml_lambda1, self.cml_lambda2, self.cml_beta = 0.5, 0.1, 1 / 2
        self.loss_terms = ("sup_l1", "sup_l2", "sup_u1", "sup_u2", "dis_l", "dis_u")
        self.monitored_values = ("stage", "lcc_removed")
        # state (checkpointed under 'cml_state')
        self.cml_stage = PRETRAIN
        self.cml_pretrain_epochs: Optional[int] = None
        self.cml_mask_draws = 0
        self.cml_selftrain_iterations = 0
        self._cml_sup = None
        self._cml_logged = set()

    # ------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> CMLDualNetwork:
        return build_cml_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                 enable_deep_supervision, hetero=cls.cml_hetero)

    def set_deep_supervision_enabled(self, enabled: bool):
        unwrap(self.network).set_deep_supervision(enabled)

    def initialize(self):
        self.refuse_instance_overrides(("cml_hetero",))
        super().initialize()
        # sup applied per DS output with nnU-Net's own DS weights (those of self.loss); one output without DS
        self._cml_sup = DeepSupervisionWrapper(CMLSupLoss(), self.loss.weight_factors if isinstance(
            self.loss, DeepSupervisionWrapper) else [1.0])
        if self.cml_pretrain_epochs is None:
            self.cml_pretrain_epochs = pretrain_epochs_for(self.num_epochs, self.cml_pretrain_fraction)
        self.pair_batch_size()  # refuse a bad override before training
        self.print_to_log_file(f"CML: {'heterogeneous' if type(self).cml_hetero else 'identical'} subnets, "
                               f"lambda1={self.cml_lambda1}, lambda2={self.cml_lambda2}, "
                               f"labeled weight={self.cml_labeled_weight}, beta={self.cml_beta:.4g} "
                               f"({len(self.configuration_manager.patch_size)}D configuration)")

    def inference_views(self) -> dict:
        net = unwrap(self.network)
        return {"subnet1": net.net1, "subnet2": net.net2}

    def get_method_state(self) -> dict:
        return {**super().get_method_state(), "stage": self.cml_stage, "pretrain_epochs": self.cml_pretrain_epochs,
                "mask_draws": self.cml_mask_draws, "selftrain_iterations": self.cml_selftrain_iterations}

    def set_method_state(self, state: dict) -> None:
        super().set_method_state(state)
        self.cml_stage, self.cml_pretrain_epochs = state["stage"], state["pretrain_epochs"]
        self.cml_mask_draws, self.cml_selftrain_iterations = state["mask_draws"], state["selftrain_iterations"]

    # ------------------------------------------------------------------ stages and batches
    def cml_stage_for_epoch(self, epoch: int) -> str:
        return PRETRAIN if epoch < self.cml_pretrain_epochs else SELFTRAIN

    def uses_unlabeled(self) -> bool:
        """Self-training consumes unlabeled patches only if a term needs them (not for ``_supOnly``)."""
        return self.cml_lambda1 != 0 or self.cml_lambda2 != 0

    def get_batch_composition(self) -> Tuple[int, int]:
        b = self.pair_batch_size()
        if self.cml_stage_for_epoch(self.current_epoch) == PRETRAIN or not self.uses_unlabeled():
            return b, 0
        return b, b

    def pair_batch_size(self) -> int:
        """B_l = B_u from nnU-Net's per-GPU batch size (``resolve_pair_batch_size``); a rounding is logged once."""
        world_size = dist.get_world_size() if self.is_ddp else 1
        b, note = resolve_pair_batch_size(self.batch_size, self.batch_size_override, world_size)
        if note and "batch" not in self._cml_logged:
            self._cml_logged.add("batch")
            self.print_to_log_file(f"NOTE: {note}")
        return b

    def on_train_epoch_start(self):
        stage = self.cml_stage_for_epoch(self.current_epoch)
        if stage != self.cml_stage or "stage" not in self._cml_logged:
            self._cml_logged.add("stage")
            self.print_to_log_file(f"CML stage: {stage} (pretraining epochs 0..{self.cml_pretrain_epochs - 1}, "
                                   f"self-training from epoch {self.cml_pretrain_epochs} of {self.num_epochs})")
        self.cml_stage = stage
        super().on_train_epoch_start()

    # ------------------------------------------------------------------ training
    def cml_iteration_lr(self) -> Optional[float]:
        """Per-iteration learning rate, or None to keep nnU-Net's per-epoch schedule (default)."""
        return None

    def _draw_mask(self, patch_size, device) -> torch.Tensor:
        mask, corner = cutmix_box_mask(patch_size, self.cml_beta, device=device)
        self.cml_mask_draws += 1
        if not corner and "mask" not in self._cml_logged:
            self._cml_logged.add("mask")
            self.print_to_log_file(f"WARNING: cml_beta={self.cml_beta} gives a zero-sized CutMix box for patch "
                                   f"{tuple(patch_size)}: no mixing.")
        return mask

    def set_iteration_lr(self) -> None:
        """The one place a per-iteration LR reaches the optimiser: before every step, and at every epoch start
        (``_PerIterationLR``, so nnU-Net logs the LR in use)."""
        lr = self.cml_iteration_lr()
        if lr is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = lr

    def before_step(self) -> None:
        self.set_iteration_lr()

    def compute_losses(self, x_l, y_l, x_u) -> dict:
        dev = self.device
        y_l = y_l[0] if isinstance(y_l, (list, tuple)) else y_l
        ds_scales = self._get_deep_supervision_scales()
        selftrain = self.cml_stage == SELFTRAIN and x_u is not None and self.uses_unlabeled()
        with_unsup = selftrain and self.cml_lambda1 != 0

        m_l = self._draw_mask(x_l.shape[2:], dev)
        x_lmix = cutmix_pairs(x_l, m_l)
        t_l = ds_targets(cutmix_pairs(y_l, m_l), ds_scales)
        h = x_lmix.shape[0]
        out = {"stage": float(self.cml_stage == SELFTRAIN)}
        x = x_lmix
        if selftrain:
            m_u = self._draw_mask(x_u.shape[2:], dev)
            x = torch.cat((x_lmix, cutmix_pairs(x_u, m_u)))
            if with_unsup:
                with torch.no_grad():  # pseudo-labels of the unmixed batch, network left in its current mode
                    p1, p2, _, _ = self.network(x_u, return_all=True)
                pl1, r1 = cml_pseudo_labels(_full_res(p1), self.cml_lcc, self.cml_binary_threshold)
                pl2, r2 = cml_pseudo_labels(_full_res(p2), self.cml_lcc, self.cml_binary_threshold)
                t1, t2 = heterogeneous_targets(pl1, pl2, m_u)
                t_u1, t_u2 = ds_targets(t1[:, None], ds_scales), ds_targets(t2[:, None], ds_scales)
                out["lcc_removed"] = (r1 + r2) / 2
        o1, o2, f1, f2 = self.network(x, return_all=True)
        o1, o2 = _as_list(o1), _as_list(o2)

        sup_l1 = self._cml_sup([o[:h] for o in o1], t_l)
        sup_l2 = self._cml_sup([o[:h] for o in o2], t_l)
        dis_l = feature_discrepancy(f1[:h], f2[:h]) + feature_discrepancy(f2[:h], f1[:h])
        loss = self.cml_labeled_weight * (sup_l1 + sup_l2) + self.cml_lambda2 * dis_l
        out.update(sup_l1=sup_l1, sup_l2=sup_l2, dis_l=dis_l)
        if selftrain:
            dis_u = feature_discrepancy(f1[h:], f2[h:]) + feature_discrepancy(f2[h:], f1[h:])
            loss = loss + self.cml_lambda2 * dis_u
            out["dis_u"] = dis_u
            if with_unsup:
                sup_u1 = self._cml_sup([o[h:] for o in o1], t_u1)
                sup_u2 = self._cml_sup([o[h:] for o in o2], t_u2)
                loss = loss + self.cml_lambda1 * (sup_u1 + sup_u2)
                out.update(sup_u1=sup_u1, sup_u2=sup_u2)
        return {"loss": loss, **out}

    def after_step(self, terms: dict) -> None:
        if self.cml_stage == SELFTRAIN:
            self.cml_selftrain_iterations += 1


def _as_list(output) -> list:
    return list(output) if isinstance(output, (list, tuple)) else [output]


def _full_res(output) -> torch.Tensor:
    return output[0] if isinstance(output, (list, tuple)) else output
