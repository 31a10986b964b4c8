"""SKCDF network (Zhang et al., CVPR 2025; docs/skcdf.md): nnU-Net encoder from the plans (plain, or residual for
the ResEnc presets),
the Semantic Knowledge Complementarity Module (SKCM) at the bottleneck, and two nnU-Net decoders (D_l for labeled
data, D_u for unlabeled data) that each end in a main head and an auxiliary class-balanced head.

Forward paths
- ``forward(x)`` (eval *and* train mode): encoder → SKCM self mode → D_u → main head. One logits tensor, so stock
  ``nnUNetv2_predict`` and nnU-Net's validation work unchanged (docs/skcdf.md).
- ``forward(x_l, x_u)``: the two training passes of one iteration in one call (so DDP sees a single forward):
  labeled mode cat(x_l, x_u) → encoder → SKCM cross mode → D_l, and unlabeled mode x_u → encoder → SKCM self mode
  → D_u. Returns ``SKCDFTrainOutput``.

The SKCM lives in ``skcm.py``.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0

from nnunetv2_semisup.methods.skcdf.skcm import SKCM

class SKCDFDecoder(nn.Module):
    """nnU-Net's decoder stages for the plans (transposed conv + StackedConvBlocks on the concatenated skip), then
    optional Dropout3d on the last features and two 1×1×1 heads on the same features: ``head_main`` (S^m) and
    ``head_aux`` (balanced head S^a; absent when ``use_aux`` is False). Unlike ``UNetDecoder`` it does not hold
    the encoder as a submodule, so EMA over the decoder's parameters never touches the shared encoder."""

    def __init__(self, encoder: nn.Module, num_classes: int, n_conv_per_stage: Sequence[int],
                 use_aux: bool = True, dropout_p: float = 0.0, nonlin_first: bool = False):
        super().__init__()
        n_enc = len(encoder.output_channels)
        transpconv_op = get_matching_convtransp(conv_op=encoder.conv_op)
        stages, transpconvs = [], []
        for s in range(1, n_enc):
            below, skip = encoder.output_channels[-s], encoder.output_channels[-(s + 1)]
            stride = encoder.strides[-s]
            transpconvs.append(transpconv_op(below, skip, stride, stride, bias=encoder.conv_bias))
            stages.append(StackedConvBlocks(
                n_conv_per_stage[s - 1], encoder.conv_op, 2 * skip, skip, encoder.kernel_sizes[-(s + 1)], 1,
                encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op,
                encoder.dropout_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs, nonlin_first))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(transpconvs)
        self.dropout = nn.Dropout3d(dropout_p) if dropout_p > 0 else nn.Identity()
        last = encoder.output_channels[0]
        self.head_main = encoder.conv_op(last, num_classes, 1, 1, 0, bias=True)
        self.head_aux = encoder.conv_op(last, num_classes, 1, 1, 0, bias=True) if use_aux else None

    def features(self, skips: List[torch.Tensor], bottleneck: torch.Tensor) -> torch.Tensor:
        x = bottleneck
        for s in range(len(self.stages)):
            x = self.stages[s](torch.cat((self.transpconvs[s](x), skips[-(s + 2)]), 1))
        return self.dropout(x)

    def forward(self, skips, bottleneck) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        f = self.features(skips, bottleneck)
        return self.head_main(f), (self.head_aux(f) if self.head_aux is not None else None)


class SKCDFTrainOutput(NamedTuple):
    """Logits of one training iteration. ``labeled_*``: D_l on cat(x_l, x_u) (B_l + B_u samples);
    ``unlabeled_*``: D_u on x_u. ``*_aux`` are None without auxiliary heads. (A tuple, so DDP and torch.compile
    handle it.)"""
    labeled_main: torch.Tensor
    labeled_aux: Optional[torch.Tensor]
    unlabeled_main: torch.Tensor
    unlabeled_aux: Optional[torch.Tensor]


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


class SKCDFNet(nn.Module):
    """Encoder (nnU-Net's ``PlainConvEncoder``, or its ``ResidualEncoder`` when ``n_blocks_per_stage`` is given: the
    ResEnc presets) + SKCM + D_l + D_u (docs/skcdf.md). The decoders are nnU-Net's plain decoder stages in both
    cases, as in ``ResidualEncoderUNet``.

    ``patch_size`` fixes the bottleneck shape (the global token learner is a dense map over it). ``use_skcm``
    False replaces the SKCM by the identity (ablation ``_noSKCM``/``_DF``); ``use_aux`` False builds no auxiliary
    heads (``_noABSH``/``_DF``); ``dropout_p`` > 0 adds Dropout3d on the bottleneck and on the last decoder
    features (reference: 0.5). ``inference_decoder`` "labeled" makes ``forward(x)`` use D_l's main head (Table 4
    ablation only).
    """

    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage, conv_op,
                 kernel_sizes, strides, n_conv_per_stage=None, n_conv_per_stage_decoder=2,
                 patch_size: Sequence[int] = (), n_blocks_per_stage=None,
                 conv_bias: bool = False, norm_op=None, norm_op_kwargs=None, dropout_op=None, dropout_op_kwargs=None,
                 nonlin=None, nonlin_kwargs=None, nonlin_first: bool = False, use_skcm: bool = True,
                 use_aux: bool = True, num_heads: int = 2, local_patch: int = 2, attn_dropout: float = 0.1,
                 dropout_p: float = 0.0, inference_decoder: str = "unlabeled"):
        super().__init__()
        if inference_decoder not in ("unlabeled", "labeled"):
            raise ValueError(f"inference_decoder must be 'unlabeled' or 'labeled', got {inference_decoder!r}")
        self.inference_decoder = inference_decoder
        if conv_op is not nn.Conv3d:
            raise ValueError(f"SKCDF needs a 3D configuration (Conv3d); got conv_op={conv_op}. Train a 3d_fullres "
                             f"(or 3d_lowres) configuration.")
        if len(patch_size) != 3:
            raise ValueError(f"SKCDFNet needs the 3D patch size (it fixes the SKCM's bottleneck shape), got "
                             f"{tuple(patch_size)}")
        if isinstance(n_conv_per_stage_decoder, int):
            n_conv_per_stage_decoder = [n_conv_per_stage_decoder] * (n_stages - 1)
        if (n_conv_per_stage is None) == (n_blocks_per_stage is None):
            raise ValueError("SKCDFNet needs n_conv_per_stage (plain encoder) or n_blocks_per_stage (residual "
                             "encoder), exactly one of them")
        self.residual = n_blocks_per_stage is not None
        if self.residual:
            self.encoder = ResidualEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes,
                                           strides, n_blocks_per_stage, conv_bias, norm_op, norm_op_kwargs,
                                           dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, return_skips=True)
        else:
            self.encoder = PlainConvEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes,
                                            strides, n_conv_per_stage, conv_bias, norm_op, norm_op_kwargs, dropout_op,
                                            dropout_op_kwargs, nonlin, nonlin_kwargs, return_skips=True,
                                            nonlin_first=nonlin_first)
        ks = [[k] * 3 if isinstance(k, int) else list(k) for k in self.encoder.kernel_sizes]
        shape = [int(s) for s in patch_size]
        for stage_stride, stage_kernel in zip(self.encoder.strides, ks):
            shape = [conv_output_size(n, k, s) for n, k, s in zip(shape, stage_kernel, stage_stride)]
        self.bottleneck_shape = tuple(shape)
        self.num_classes = num_classes
        bottleneck_channels = self.encoder.output_channels[-1]
        self.use_skcm, self.use_aux = use_skcm, use_aux
        self.skcm = SKCM(bottleneck_channels, self.bottleneck_shape, num_heads, local_patch, attn_dropout) \
            if use_skcm else None
        self.bottleneck_dropout = nn.Dropout3d(dropout_p) if dropout_p > 0 else nn.Identity()
        self.decoder_l = SKCDFDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, use_aux, dropout_p,
                                      nonlin_first)
        self.decoder_u = SKCDFDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, use_aux, dropout_p,
                                      nonlin_first)
        # nnU-Net init (He, neg. slope 1e-2) for encoder and decoders, plus ResidualEncoderUNet's zero init of each
        # residual branch's last norm; SKCM keeps its own init
        init = InitWeights_He(1e-2)
        for m in (self.encoder, self.decoder_l, self.decoder_u):
            m.apply(init)
        if self.residual:
            self.encoder.apply(init_last_bn_before_add_to_0)

    def _bottleneck(self, h: torch.Tensor, mode: str) -> torch.Tensor:
        h = self.bottleneck_dropout(h)
        return self.skcm(h, mode) if self.skcm is not None else h

    def _encode(self, x: torch.Tensor, mode: str):
        skips = self.encoder(x)
        return skips, self._bottleneck(skips[-1], mode)

    def forward_labeled(self, x_l: torch.Tensor, x_u: torch.Tensor):
        """Labeled mode: cat(x_l, x_u) → E → SKCM cross → D_l → (main, aux) for all B_l + B_u samples."""
        if x_l.shape[0] != x_u.shape[0]:
            raise ValueError(f"SKCDF needs as many labeled as unlabeled samples per batch (B_l = B_u), got "
                             f"B_l={x_l.shape[0]} and B_u={x_u.shape[0]}.")
        skips, b = self._encode(torch.cat((x_l, x_u), 0), "cross")
        return self.decoder_l(skips, b)

    def forward_unlabeled(self, x: torch.Tensor):
        """Unlabeled mode (also inference): x → E → SKCM self → D_u → (main, aux)."""
        skips, b = self._encode(x, "self")
        return self.decoder_u(skips, b)

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """x → E → SKCM self → D_u main head (default), or D_l main head (``inference_decoder="labeled"``, the
        ablation of the paper's Table 4; still SKCM self mode)."""
        if self.inference_decoder == "unlabeled":
            return self.forward_unlabeled(x)[0]
        skips, b = self._encode(x, "self")
        return self.decoder_l(skips, b)[0]

    def forward(self, x: torch.Tensor, x_u: Optional[torch.Tensor] = None):
        if x_u is None:
            return self.forward_inference(x)
        lm, la = self.forward_labeled(x, x_u)
        um, ua = self.forward_unlabeled(x_u)
        return SKCDFTrainOutput(lm, la, um, ua)


def skcdf_net_from_plans(configuration_manager, num_input_channels: int, num_output_channels: int,
                         **skcdf_kwargs) -> SKCDFNet:
    """Build ``SKCDFNet`` from an nnU-Net configuration with a ``PlainConvUNet`` or ``ResidualEncoderUNet``
    architecture (the default planner and the ResEnc presets)."""
    import pydoc
    arch = configuration_manager.network_arch_class_name
    if arch.split(".")[-1] not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise ValueError(f"SKCDF builds its encoder/decoders from PlainConvUNet or ResidualEncoderUNet plans, but this "
                         f"configuration uses {arch}. Plan with the default planner (nnUNetPlans) or a ResEnc preset "
                         f"(nnUNetPlannerResEncM/L/XL).")
    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    for k in configuration_manager.network_arch_init_kwargs_req_import:
        if kwargs.get(k) is not None:
            kwargs[k] = pydoc.locate(kwargs[k])
    kwargs.pop("deep_supervision", None)
    return SKCDFNet(num_input_channels, num_output_channels, patch_size=configuration_manager.patch_size,
                    **kwargs, **skcdf_kwargs)
