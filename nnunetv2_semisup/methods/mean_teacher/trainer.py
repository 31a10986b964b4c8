"""``nnUNetTrainerMeanTeacher``: the classic Mean Teacher baseline (Tarvainen & Valpola, NeurIPS 2017) on
nnU-Net's network, as used for 3D segmentation by UA-MT (Yu et al., MICCAI 2019) without the uncertainty mask.

- Teacher = exponential moving average of the student (nnU-Net's planned network), decay 0.99 with the
  reference implementations' warm-up ``α_t = min(1 − 1/(t + 1), 0.99)`` (t = optimiser steps so far).
- Consistency = mean squared error between student and teacher softmax on the unlabeled batch; the teacher sees
  the input plus Gaussian noise (σ = 0.1, clipped to ±0.2) and gets no gradient.
- Weight λ(e) = 0.1 · exp(−5 (1 − e/E_r)²) for epochs e < E_r = 0.4 · num_epochs, then 0.1 (sigmoid ramp-up).
  UA-MT ramps over its whole run (λ reaches half strength only at 63 % of it); 40 % lets the unlabeled term act at
  full weight for the last 60 % of any schedule length, which is what a short or long nnU-Net run needs to profit
  from it. ``nnUNetTrainerMeanTeacher_uamtRamp`` keeps UA-MT's whole-run ramp.
- Supervised loss = nnU-Net's loss (Dice + CE with deep supervision) on the labeled batch.
- Batch: nnU-Net's B labeled patches intact plus B unlabeled patches (UA-MT: 2 + 2, nnU-Net's usual B = 2), so the
  labeled data is seen as often as by nnU-Net alone (``mt_unlabeled_batch_size`` changes B_u; until 2026-12-06 the
  default split B into ⌈B/2⌉ + ⌊B/2⌋, kept by ``nnUNetTrainerMeanTeacher_halfBatch``).
- ``network_weights`` in the checkpoint = the student (what ``nnUNetv2_predict`` uses); the teacher is saved
  under ``mt_teacher_weights``.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from nnunetv2_semisup.training.helpers import ema_update, sigmoid_rampup  # noqa: F401 (re-exported)
from nnunetv2_semisup.training.semisup_base import nnUNetTrainerSemiSup, unwrap


def mean_teacher_ema_decay(step: int, decay: float) -> float:
    """α_t = min(1 − 1/(t + 1), decay): early on the teacher follows the student closely."""
    return min(1.0 - 1.0 / (step + 1), decay)


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of (softmax(student) − softmax(teacher))², channels on dim 1."""
    return F.mse_loss(torch.softmax(student_logits.float(), 1), torch.softmax(teacher_logits.float(), 1))


class nnUNetTrainerMeanTeacher(nnUNetTrainerSemiSup):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mt_ema_decay = 0.99
        self.mt_consistency_weight = 0.1
        self.mt_rampup_fraction = 0.4
        self.mt_noise_std = 0.1
        self.mt_noise_clip = 0.2
        self.mt_unlabeled_batch_size: Optional[int] = None   # B_u on top of nnU-Net's B labeled; None = B
        self.loss_terms = ("sup", "cons")
        self.teacher = None
        self.mt_global_step = 0

    def initialize(self):
        super().initialize()
        self.teacher = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, enable_deep_supervision=False).to(self.device)
        self.teacher.load_state_dict(unwrap(self.network).state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        self.extra_checkpoint_objects["mt_teacher_weights"] = self.teacher

    def get_batch_composition(self) -> Tuple[int, int]:
        b_u = self.batch_size if self.mt_unlabeled_batch_size is None else int(self.mt_unlabeled_batch_size)
        if b_u < 1:
            raise ValueError(f"mt_unlabeled_batch_size must be >= 1, got {b_u}")
        return self.batch_size, b_u

    def consistency_weight(self, epoch: float = None) -> float:
        epoch = self.current_epoch if epoch is None else epoch
        return self.mt_consistency_weight * sigmoid_rampup(epoch, self.mt_rampup_fraction * self.num_epochs)

    def inference_views(self) -> dict:
        return {"student": unwrap(self.network), "teacher": self.teacher}

    def get_method_state(self) -> dict:
        return {**super().get_method_state(), "mt_global_step": self.mt_global_step}

    def set_method_state(self, state: dict) -> None:
        super().set_method_state(state)
        self.mt_global_step = state["mt_global_step"]

    def compute_losses(self, x_l, target, x_u) -> dict:
        b_l = x_l.shape[0]
        output = self.network(x_l if x_u is None else torch.cat((x_l, x_u)))
        outputs = output if isinstance(output, (list, tuple)) else [output]
        sup_out = [o[:b_l] for o in outputs]
        l_sup = self.loss(sup_out if isinstance(output, (list, tuple)) else sup_out[0], target)
        if x_u is not None:
            with torch.no_grad():
                noise = torch.clamp(torch.randn_like(x_u) * self.mt_noise_std, -self.mt_noise_clip, self.mt_noise_clip)
                teacher_out = self.teacher(x_u + noise)
            l_cons = softmax_mse(outputs[0][b_l:], teacher_out)
        else:
            l_cons = torch.zeros((), device=self.device)
        return {"loss": l_sup + self.consistency_weight() * l_cons, "sup": l_sup, "cons": l_cons}

    def after_step(self, terms: dict) -> None:
        ema_update(self.teacher, unwrap(self.network), mean_teacher_ema_decay(self.mt_global_step, self.mt_ema_decay))
        self.mt_global_step += 1
