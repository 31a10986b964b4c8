"""``nnUNetTrainerSKCDF``: Semantic Knowledge Complementarity based Decoupling Framework (Zhang et al., CVPR 2025),
ported to nnU-Net; user documentation and every deviation from the reference code: docs/skcdf.md.

One iteration (docs/skcdf.md):
1. EMA "knowledge transfer" head(l) → decoder(u ← l) → head(u) on parameter values, ω = 0.99, before the forward.
2. labeled mode on cat(x_l, x_u) (SKCM cross attention, D_l) → (o_A, o_A^a).
3. L_sup = DCCE(o_A[:B], y) + masked DCCE(o_A^a[:B], y, M_l), M_l ~ Bernoulli(p[y]).
4. pseudo-labels ŷ = argmax o_A[B:], ŷ^a = argmax o_A^a[B:] (hard, detached, train mode).
5. unlabeled mode on x_u (SKCM self attention, D_u) → (o_u, o_u^a).
6. L_u = DCCE(o_u, ŷ) + masked DCCE(o_u^a, ŷ^a, M_u), M_u ~ Bernoulli(q(e)[ŷ^a]).
7. loss = L_sup + w(e)·L_u, one backward, SGD step (nnU-Net optimiser and clipping by default).

Port decisions (docs/skcdf.md): nnU-Net encoder/decoders from the plans; batch = B labeled + B unlabeled with B the
(per-GPU) batch size (``batch_size_override`` replaces the plans'; B_l ≠ B_u is an error); deep supervision off; nnU-Net's
optimiser/schedule; p_c counted over all labeled training cases of the fold (absent classes → p_c = 1 with a
warning); ramp without the reference's one-epoch lag; ``network_weights`` = the whole SKCDF module, whose
``forward`` is the inference path (encoder → SKCM self → D_u main head). Method state in the checkpoint: class
counts, p, last ramp weight. Region-based and ignore-label datasets are rejected.
"""
import warnings
from typing import Optional

import numpy as np
import torch

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunetv2_semisup.methods.skcdf.losses import (MASK_MODES, balanced_probabilities, bernoulli_mask,
                                                  class_voxel_counts, dcce_terms, masked_dcce_terms,
                                                  sigmoid_rampup_weight, unlabeled_probabilities)
from nnunetv2_semisup.methods.skcdf.network import SKCDFNet, SKCDFTrainOutput, skcdf_net_from_plans
from nnunetv2_semisup.training.helpers import ema_
from nnunetv2_semisup.training.semisup_base import nnUNetTrainerSemiSup, unwrap


@torch.no_grad()
def knowledge_transfer(net: SKCDFNet, omega: float, heads: bool = True) -> None:
    """EMA transfers of docs/skcdf.md in the order H → D → H, on parameter values only:
    1. D_l.main ← ω·D_l.main + (1 − ω)·D_l.aux                       (skipped when ``heads`` is False)
    2. θ_u ← ω·θ_u + (1 − ω)·θ_l for every parameter of D_u (stages, norms, both heads), same-named D_l parameter
    3. D_u.main ← ω·D_u.main + (1 − ω)·D_u.aux                       (skipped when ``heads`` is False)
    Norm running statistics, the encoder, the SKCM and optimiser state are untouched."""
    dl, du = net.decoder_l, net.decoder_u
    heads = heads and dl.head_aux is not None and du.head_aux is not None
    if heads:
        for a, b in zip(dl.head_main.parameters(), dl.head_aux.parameters()):
            ema_(a, b, omega)
    src = dict(dl.named_parameters())
    for name, p in du.named_parameters():
        ema_(p, src[name], omega)
    if heads:
        for a, b in zip(du.head_main.parameters(), du.head_aux.parameters()):
            ema_(a, b, omega)


ARCHITECTURE_ATTRIBUTES = ("skcdf_use_skcm", "skcdf_use_aux", "skcdf_num_heads", "skcdf_local_patch",
                           "skcdf_attn_dropout", "skcdf_dropout_p", "skcdf_inference_decoder")


class nnUNetTrainerSKCDF(nnUNetTrainerSemiSup):
    # balanced masks and pseudo-labels assume dense labels; the SKCM is built for 3D bottlenecks
    supports_regions = supports_ignore_label = False
    supported_patch_dims = (3,)
    legacy_method_state_key = "skcdf_state"  # where checkpoints of format 1 kept the method state

    # --- architecture (class attributes: read by build_network_architecture at prediction time too) ---
    skcdf_use_skcm = True
    skcdf_use_aux = True
    skcdf_num_heads = 2
    skcdf_local_patch = 2
    skcdf_attn_dropout = 0.1
    skcdf_dropout_p = 0.0
    skcdf_inference_decoder = "unlabeled"  # "labeled": Table 4 ablation rows only

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # --- hyperparameters (docs/skcdf.md) ---
        self.skcdf_lambda_u = 10.0
        self.skcdf_rampup = True
        self.skcdf_rampup_fraction = 1.0  # share of the run the ramp spans (published: all of it; _earlyRamp: 0.4)
        self.skcdf_ema_omega = 0.99
        self.skcdf_use_ema = True
        self.skcdf_mask_mode = "reference"
        self.skcdf_momentum = 0.99       # nnU-Net's SGD momentum (_paper: 0.9)
        self.enable_deep_supervision = False
        self.loss_terms = ("sup_main", "sup_aux", "u_main", "u_aux") if self.skcdf_use_aux else ("sup_main", "u_main")
        self.monitored_values = ("w_u", "mask_l", "mask_u") if self.skcdf_use_aux else ("w_u",)
        # --- state ---
        self.skcdf_class_counts: Optional[np.ndarray] = None
        self.skcdf_p: Optional[np.ndarray] = None
        self.skcdf_last_ramp_weight: Optional[float] = None
        self.skcdf_iterations = 0

    # ------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = False) -> SKCDFNet:
        """The full SKCDF module (encoder, SKCM, D_l, D_u, all heads); ``forward(x)`` = inference path. Deep
        supervision is not supported (docs/skcdf.md)."""
        if enable_deep_supervision:
            raise ValueError(f"{cls.__name__} does not support deep supervision (the method's losses and EMA are "
                             f"defined on the full-resolution heads); keep enable_deep_supervision = False.")
        return skcdf_net_from_plans(configuration_manager, num_input_channels, num_output_channels,
                                    use_skcm=cls.skcdf_use_skcm, use_aux=cls.skcdf_use_aux,
                                    num_heads=cls.skcdf_num_heads, local_patch=cls.skcdf_local_patch,
                                    attn_dropout=cls.skcdf_attn_dropout, dropout_p=cls.skcdf_dropout_p,
                                    inference_decoder=cls.skcdf_inference_decoder)

    def set_deep_supervision_enabled(self, enabled: bool):
        """No-op: the SKCDF module has no deep-supervision outputs (nnU-Net's validation toggles this flag
        unconditionally, so it must not fail)."""

    def initialize(self):
        self.refuse_instance_overrides(ARCHITECTURE_ATTRIBUTES)
        if self.skcdf_mask_mode not in MASK_MODES:
            raise ValueError(f"skcdf_mask_mode must be one of {MASK_MODES}, got {self.skcdf_mask_mode!r}")
        super().initialize()  # build_network_architecture refuses deep supervision

    def configure_optimizers(self):
        optimizer = self.sgd(momentum=self.skcdf_momentum)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def get_batch_composition(self):
        """B labeled + B unlabeled, B = nnU-Net's per-GPU batch size (``batch_size_override`` sets the global one)."""
        return self.batch_size, self.batch_size

    # ------------------------------------------------------------------ balanced-head probabilities
    def compute_class_counts(self) -> np.ndarray:
        """Voxel counts per class over all labeled *training* cases of the current fold (not validation cases)."""
        tr_keys, _ = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, tr_keys)
        num_classes = self.label_manager.num_segmentation_heads

        def segs():
            for k in tr_keys:
                yield np.asarray(dataset.load_case(k)[1])

        return class_voxel_counts(segs(), num_classes)

    def on_train_start(self):
        super().on_train_start()
        if self.skcdf_p is None:  # fresh run (a resumed run restored counts and p from the checkpoint)
            self.skcdf_class_counts = self.compute_class_counts()
            names = {int(v): k for k, v in self.dataset_json["labels"].items() if isinstance(v, int)}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.skcdf_p = balanced_probabilities(self.skcdf_class_counts,
                                                      [names.get(i, str(i)) for i in
                                                       range(len(self.skcdf_class_counts))])
            for w in caught:
                self.print_to_log_file(f"WARNING: {w.message}")
                warnings.warn(str(w.message))
        self.print_to_log_file(f"SKCDF class voxel counts {self.skcdf_class_counts.tolist()}; balanced-head "
                               f"probabilities p = {np.round(self.skcdf_p, 6).tolist()}")

    def unlabeled_mask_probabilities(self, epoch: Optional[int] = None) -> np.ndarray:
        return unlabeled_probabilities(self.skcdf_p, self.current_epoch if epoch is None else epoch, self.num_epochs)

    def unlabeled_weight(self, epoch: Optional[int] = None) -> float:
        """w(e) = λ_u·exp(−5(1 − min(e/R, 1))²), R = f·(E − 1), f = ``skcdf_rampup_fraction``, with the ramp; λ_u
        without."""
        epoch = self.current_epoch if epoch is None else epoch
        if not self.skcdf_rampup:
            return float(self.skcdf_lambda_u)
        return sigmoid_rampup_weight(epoch, self.num_epochs, self.skcdf_lambda_u, self.skcdf_rampup_fraction)

    # ------------------------------------------------------------------ training
    def inference_views(self) -> dict:
        """D_u's main head (what predicts) and D_l's, both after the encoder and the SKCM's self-attention mode."""
        net = unwrap(self.network)
        return {"D_u": _Decoder(net, "unlabeled"), "D_l": _Decoder(net, "labeled")}

    def get_method_state(self) -> dict:
        return {**super().get_method_state(),
                "class_counts": None if self.skcdf_class_counts is None else np.asarray(self.skcdf_class_counts).copy(),
                "p": None if self.skcdf_p is None else np.asarray(self.skcdf_p).copy(),
                "last_ramp_weight": self.skcdf_last_ramp_weight, "iterations": self.skcdf_iterations}

    def set_method_state(self, state: dict) -> None:
        super().set_method_state(state)
        self.skcdf_class_counts = None if state["class_counts"] is None else np.asarray(state["class_counts"])
        self.skcdf_p = None if state["p"] is None else np.asarray(state["p"], dtype=np.float64)
        self.skcdf_last_ramp_weight = state["last_ramp_weight"]
        self.skcdf_iterations = int(state["iterations"])

    def knowledge_transfer(self) -> None:
        knowledge_transfer(unwrap(self.network), self.skcdf_ema_omega, heads=self.skcdf_use_aux)

    def terms_from_outputs(self, out: SKCDFTrainOutput, y: torch.Tensor, b: int) -> dict:
        """All loss terms of docs/skcdf.md steps 3, 4, 6, 7 from the network outputs of one iteration."""
        zero = out.labeled_main.new_zeros((), dtype=torch.float32)
        ce, dc = dcce_terms(out.labeled_main[:b], y)
        sup_main, sup_aux, u_aux = ce + dc, zero, zero
        frac_l = frac_u = float("nan")
        with torch.no_grad():
            pseudo = out.labeled_main[b:].argmax(1)
            pseudo_aux = out.labeled_aux[b:].argmax(1) if out.labeled_aux is not None else None
        ce, dc = dcce_terms(out.unlabeled_main, pseudo)
        u_main = ce + dc
        if out.labeled_aux is not None:
            m_l = bernoulli_mask(self.skcdf_p, y)
            ce, dc = masked_dcce_terms(out.labeled_aux[:b], y, m_l, self.skcdf_mask_mode)
            sup_aux = ce + dc
            m_u = bernoulli_mask(self.unlabeled_mask_probabilities(), pseudo_aux)
            ce, dc = masked_dcce_terms(out.unlabeled_aux, pseudo_aux, m_u, self.skcdf_mask_mode)
            u_aux = ce + dc
            frac_l, frac_u = float(m_l.mean()), float(m_u.mean())
        w = self.unlabeled_weight()
        loss = sup_main + sup_aux + w * (u_main + u_aux)
        return {"loss": loss, "sup_main": sup_main, "sup_aux": sup_aux, "u_main": u_main, "u_aux": u_aux,
                "w_u": w, "mask_l": frac_l, "mask_u": frac_u}

    def batch_to_device(self, batch: dict):
        if "data" not in batch or "unlabeled" not in batch:
            raise RuntimeError(f"{self.__class__.__name__} needs labeled and unlabeled samples in every batch "
                               f"(got b_l={batch.get('b_l')}, b_u={batch.get('b_u')}); run "
                               f"nnUNetv2_semisup_preprocess for the unlabeled scans.")
        x_l, y_l, x_u = super().batch_to_device(batch)
        if x_u.shape[0] != x_l.shape[0]:
            raise ValueError(f"{self.__class__.__name__}: B_l = B_u is required (SKCM cross attention pairs the "
                             f"two flows), got B_l={x_l.shape[0]}, B_u={x_u.shape[0]}. Set batch_size_override "
                             f"instead of changing get_batch_composition.")
        return x_l, y_l, x_u

    def before_step(self) -> None:
        if self.skcdf_use_ema:
            self.knowledge_transfer()  # docs/skcdf.md: every iteration, before the forward

    def compute_losses(self, x_l, y_l, x_u) -> dict:
        y = (y_l[0] if isinstance(y_l, (list, tuple)) else y_l)[:, 0].long()
        return self.terms_from_outputs(self.network(x_l, x_u), y, x_l.shape[0])

    def after_step(self, terms: dict) -> None:
        self.skcdf_iterations += 1
        self.skcdf_last_ramp_weight = terms["w_u"]


class _Decoder(torch.nn.Module):
    """One decoder's main head of an SKCDF network as a module (inference path: encoder, SKCM self mode)."""

    def __init__(self, net, which: str):
        super().__init__()
        self.net, self.which = net, which

    def forward(self, x):
        skips, b = self.net._encode(x, "self")
        return (self.net.decoder_u if self.which == "unlabeled" else self.net.decoder_l)(skips, b)[0]
