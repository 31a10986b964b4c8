"""CML's two-subnet network (docs/cml.md).

- ``CMLDualNetwork`` holds two independent nnU-Net networks built from the plans (same architecture, separate
  random initialisation, no shared parameters). ``forward(x)`` is the inference path: the average of the two
  subnets' logits (per deep-supervision scale when deep supervision is on), so stock ``nnUNetv2_predict`` and
  nnU-Net's validation apply their own softmax/argmax to ``(logits₁ + logits₂)/2`` — the reference's averaging order.
  ``forward(x, return_all=True)`` is the training path: ``(out₁, out₂, feat₁, feat₂)`` with ``feat_i`` the
  bottleneck features of subnet i (the output of the deepest encoder stage, the reference's x5). Training goes
  through ``forward`` (not a side method) so DDP and ``torch.compile`` wrappers see every call.
- ``make_decoder_heterogeneous`` (variant ``_hetero``) replaces every transposed convolution of a decoder by
  interpolation with the stage's stride as scale factor (trilinear/bilinear, align_corners=True, as the reference
  VNet's decoder2) followed by a 3×3(×3) convolution C_in → C_out with padding 1 and bias.
"""
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans


class InterpConvUpsample(nn.Module):
    """Interpolation by ``scale`` (align_corners=True) then a k=3, padding-1 convolution with bias.

    Stand-in for the decoder's ``ConvTranspose(C_in, C_out, kernel=stride, stride=stride)``; produces the same
    output shape (``in · stride`` per axis).
    """

    def __init__(self, conv_op, in_channels: int, out_channels: int, scale: Sequence[int]):
        super().__init__()
        dim = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}.get(conv_op)
        if dim is None:
            raise ValueError(f"InterpConvUpsample: unsupported conv_op {conv_op}")
        scale = [int(scale)] * dim if isinstance(scale, int) else [int(s) for s in scale]
        self.scale = tuple(float(s) for s in scale)
        self.mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[dim]
        self.conv = conv_op(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(round(s * f)) for s, f in zip(x.shape[2:], self.scale)]
        return self.conv(F.interpolate(x, size=size, mode=self.mode, align_corners=True))


def make_decoder_heterogeneous(network: nn.Module) -> nn.Module:
    """Replace every transposed convolution of ``network.decoder`` by ``InterpConvUpsample`` (in place).

    New convolutions get the network's own initialisation (nnU-Net's He init) when it has one.
    """
    decoder = getattr(network, "decoder", None)
    transpconvs = getattr(decoder, "transpconvs", None)
    if transpconvs is None:
        raise TypeError(f"CML _hetero needs a U-Net whose decoder has 'transpconvs' (PlainConvUNet, "
                        f"ResidualEncoderUNet); got {network.__class__.__name__}. Use nnUNetTrainerCML instead.")
    encoder = network.encoder
    for i, tc in enumerate(transpconvs):
        stride = tc.stride
        new = InterpConvUpsample(encoder.conv_op, tc.in_channels, tc.out_channels, stride)
        if hasattr(network, "initialize"):
            new.apply(network.initialize)
        transpconvs[i] = new.to(next(tc.parameters()).device)
    return network


def build_subnet(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                 enable_deep_supervision: bool, hetero: bool = False) -> nn.Module:
    """One nnU-Net network from the plans (fresh random init); ``hetero`` swaps its decoder's upsampling."""
    net = get_network_from_plans(configuration_manager.network_arch_class_name,
                                 configuration_manager.network_arch_init_kwargs,
                                 configuration_manager.network_arch_init_kwargs_req_import,
                                 num_input_channels, num_output_channels, allow_init=True,
                                 deep_supervision=enable_deep_supervision)
    if not (hasattr(net, "encoder") and hasattr(net, "decoder")):
        raise TypeError(f"CML needs an encoder/decoder U-Net from the plans (e.g. PlainConvUNet, "
                        f"ResidualEncoderUNet) to read bottleneck features; got {net.__class__.__name__} "
                        f"({configuration_manager.network_arch_class_name}).")
    return make_decoder_heterogeneous(net) if hetero else net


Output = Union[torch.Tensor, List[torch.Tensor]]


def average_outputs(a: Output, b: Output) -> Output:
    """(a + b)/2, per scale for deep-supervision lists."""
    if isinstance(a, (list, tuple)):
        return [(x + y) / 2 for x, y in zip(a, b)]
    return (a + b) / 2


class CMLDualNetwork(nn.Module):
    """Two independent U-Nets; ``forward`` averages their logits (inference), ``return_all`` exposes both outputs
    and both bottleneck features (training)."""

    def __init__(self, net1: nn.Module, net2: nn.Module, hetero: bool = False):
        super().__init__()
        self.net1 = net1
        self.net2 = net2
        self.hetero = hetero

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        """nn.Module's, except that weights of the other subnet pair (identical vs heterogeneous: the default changed)
        stop with the trainer variant that builds them — also in ``nnUNetv2_predict``, which calls this."""
        try:
            return super().load_state_dict(state_dict, strict=strict, **kwargs)
        except RuntimeError as e:
            other = any(k.startswith("net2.decoder.transpconvs.") and k.endswith(".conv.weight") for k in state_dict)
            if other == self.hetero:  # not the pair's layout that differs: nn.Module's own message says what does
                raise
            mine, theirs = ("heterogeneous", "identical") if self.hetero else ("identical", "heterogeneous")
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = next((ln for ln in lines if ln.startswith(("Missing key", "Unexpected key"))), "")[:200]
            variant = "nnUNetTrainerCML_identical" if self.hetero else "nnUNetTrainerCML"
            raise RuntimeError(f"{detail + ' — ' if detail else ''}these CML weights hold {theirs} subnets, the "
                               f"trainer builds {mine} ones (CML's default became the heterogeneous pair): load them with "
                               f"-tr {variant} (its _short/_paper variants likewise), after copying the model folder "
                               f"to that trainer's name (README, 'Upgrading')") from e

    @staticmethod
    def _run(net: nn.Module, x: torch.Tensor) -> Tuple[Output, torch.Tensor]:
        skips = net.encoder(x)
        return net.decoder(skips), skips[-1]

    def forward(self, x: torch.Tensor, return_all: bool = False):
        out1, feat1 = self._run(self.net1, x)
        out2, feat2 = self._run(self.net2, x)
        if return_all:
            return out1, out2, feat1, feat2
        return average_outputs(out1, out2)

    def set_deep_supervision(self, enabled: bool) -> None:
        self.net1.decoder.deep_supervision = enabled
        self.net2.decoder.deep_supervision = enabled

    @property
    def deep_supervision(self) -> bool:
        return self.net1.decoder.deep_supervision


def build_cml_network(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                      enable_deep_supervision: bool = True, hetero: bool = False) -> CMLDualNetwork:
    """The CML inference/training wrapper: two subnets built one after the other (different random init)."""
    net1 = build_subnet(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                        enable_deep_supervision, hetero=False)
    net2 = build_subnet(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                        enable_deep_supervision, hetero=hetero)
    return CMLDualNetwork(net1, net2, hetero=hetero)
