"""SKCDF network (Zhang et al., CVPR 2025; spec ``skcdf.md`` §1.2, §1.3, §3.1): nnU-Net encoder from the plans,
the Semantic Knowledge Complementarity Module (SKCM) at the bottleneck, and two nnU-Net decoders (D_l for labeled
data, D_u for unlabeled data) that each end in a main head and an auxiliary class-balanced head.

Forward paths
- ``forward(x)`` (eval *and* train mode): encoder → SKCM self mode → D_u → main head. One logits tensor, so stock
  ``nnUNetv2_predict`` and nnU-Net's validation work unchanged (spec §3.4).
- ``forward(x_l, x_u)``: the two training passes of one iteration in one call (so DDP sees a single forward):
  labeled mode cat(x_l, x_u) → encoder → SKCM cross mode → D_l, and unlabeled mode x_u → encoder → SKCM self mode
  → D_u. Returns ``SKCDFTrainOutput``.

SKCM (spec §1.3, generalised as in §3.1): a local block (token learner Conv3d(1 → P³, kernel = stride = P) per
channel, attention inside each P×P×P patch) followed by a global block (dense channel-shared token learner
R^{|S|} → R^{|S|}, attention over the whole bottleneck). Each block: t = token learner, e = LN(t),
x = LN(Attn(e) + t), out = GELU(Conv1×1(x)); no outer residual. Attention is *channel* attention: the affinity
is Qᵀ·K (C' × C'), normalised by ψ = instance norm over the whole matrix (no 1/√d), softmax over keys.
Deliberate deviations from the reference code: any bottleneck shape (sides not divisible by P are zero-padded at
the end and cropped after the local block), any B_l = B_u ≥ 1, no batch duplication in eval mode, the unused
``map_in`` parameters are omitted.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He

PSI_EPS = 1e-5  # InstanceNorm2d default eps of the reference's ψ
LN_EPS = 1e-6


def psi(affinity: torch.Tensor) -> torch.Tensor:
    """ψ: normalise every affinity matrix (last two dims) to zero mean / unit (biased) variance, no affine —
    ``InstanceNorm2d(1)`` of the reference applied to a (1, 1, rows, cols) matrix."""
    mean = affinity.mean(dim=(-2, -1), keepdim=True)
    var = affinity.var(dim=(-2, -1), keepdim=True, unbiased=False)
    return (affinity - mean) / torch.sqrt(var + PSI_EPS)


class ChannelAttention(nn.Module):
    """Channel-wise attention on token matrices ``e`` of shape (B, Np, T, C): Np independent "patches" of T
    positions × C channels per sample (local block: Np patches, T = P³; global block: Np = 1, T = |S|).

    q, k, v = e·W (Linear C → C' = N·C, no bias); W_out: Linear C' → C, no bias.
    - self mode: per sample, patch and head h: A_h = softmax(ψ(Q_hᵀ K_h)) (C × C), O_h = A_h V_hᵀ; heads are
      re-concatenated to C' before W_out. ``head_split``: which channels j of C' form head h — "inner": j mod N = h
      (local block of the reference), "outer": j // C = h (global block). ``head_merge``: where channel c of head h
      goes back in C' — "inner": index c·N + h (both blocks of the reference), "outer": index h·C + c. The
      reference's global block splits head-major but merges channel-major; since W_out is shared with cross mode
      (no head split), that is a different function from a consistent layout, not a relabelling of weights.
    - cross mode (batch = [labeled; unlabeled], equal halves): no head split; a labeled sample's queries attend to
      keys/values of *all* unlabeled samples at the same patch (concatenated along channels, sample-major), computed
      from the **detached** unlabeled embeddings; an unlabeled sample's (detached) queries attend to all labeled
      samples. A = softmax(ψ(Qᵀ K)) ∈ R^{C' × B·C'}.
    Attention dropout after the softmax; projection dropout after W_out (in self mode only if
    ``proj_dropout_in_self``).
    """

    def __init__(self, channels: int, num_heads: int = 2, dropout: float = 0.1, head_split: str = "inner",
                 head_merge: str = "inner", proj_dropout_in_self: bool = True):
        super().__init__()
        for name, layout in (("head_split", head_split), ("head_merge", head_merge)):
            if layout not in ("inner", "outer"):
                raise ValueError(f"{name} must be 'inner' or 'outer', got {layout!r}")
        self.channels, self.num_heads = channels, num_heads
        self.head_split, self.head_merge = head_split, head_merge
        inner = num_heads * channels
        self.q = nn.Linear(channels, inner, bias=False)
        self.k = nn.Linear(channels, inner, bias=False)
        self.v = nn.Linear(channels, inner, bias=False)
        self.out = nn.Linear(inner, channels, bias=False)
        self.attn_drop = nn.Dropout(dropout)
        self.proj_drop = nn.Dropout(dropout)
        self.proj_dropout_in_self = proj_dropout_in_self

    # heads: (B, Np, T, C') <-> (B, Np, N, T, C)
    def _split(self, x):
        b, n, t, _ = x.shape
        if self.head_split == "inner":
            return x.view(b, n, t, self.channels, self.num_heads).permute(0, 1, 4, 2, 3)
        return x.view(b, n, t, self.num_heads, self.channels).permute(0, 1, 3, 2, 4)

    def _merge(self, x):
        b, n, h, t, c = x.shape
        if self.head_merge == "inner":
            return x.permute(0, 1, 3, 4, 2).reshape(b, n, t, c * h)
        return x.permute(0, 1, 3, 2, 4).reshape(b, n, t, h * c)

    def forward(self, e: torch.Tensor, mode: str = "self") -> torch.Tensor:
        # fp32 even under autocast: the affinity has no 1/sqrt(d) scaling and ψ squares it (variance), which
        # overflows float16 once the affinities' spread passes ~256; the reference trained in fp32
        with torch.autocast(device_type=e.device.type, enabled=False):
            return self._attention(e.float() if e.dtype in (torch.float16, torch.bfloat16) else e, mode)

    def _attention(self, e: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "self":
            q, k, v = self._split(self.q(e)), self._split(self.k(e)), self._split(self.v(e))
            attn = torch.softmax(psi(torch.einsum("bnhtc,bnhtd->bnhcd", q, k)), dim=-1)
            o = torch.einsum("bnhcd,bnhtd->bnhtc", self.attn_drop(attn), v)
            o = self.out(self._merge(o))
            return self.proj_drop(o) if self.proj_dropout_in_self else o
        if mode != "cross":
            raise ValueError(f"attention mode must be 'self' or 'cross', got {mode!r}")
        if e.shape[0] % 2:
            raise ValueError(f"SKCM cross mode needs equal labeled and unlabeled halves, got an odd batch of "
                             f"{e.shape[0]}; use B_l = B_u.")
        half = e.shape[0] // 2
        e_l, e_u = e[:half], e[half:].detach()
        return torch.cat((self._cross(self.q(e_l), self.k(e_u), self.v(e_u)),
                          self._cross(self.q(e_u), self.k(e_l), self.v(e_l))), 0)

    def _cross(self, q, k, v):
        b, n, t, c = k.shape
        # all samples of the other flow, concatenated along channels (sample-major): (Np, T, B·C')
        k = k.permute(1, 2, 0, 3).reshape(n, t, b * c)
        v = v.permute(1, 2, 0, 3).reshape(n, t, b * c)
        attn = torch.softmax(psi(torch.einsum("bntc,ntd->bncd", q, k)), dim=-1)
        o = torch.einsum("bncd,ntd->bntc", self.attn_drop(attn), v)
        return self.proj_drop(self.out(o))


class _SKCMBlock(nn.Module):
    """Shared skeleton: tokens t → r = t → e = LN_attn(t) → a = Attn(e) → LN_ffn(a + r) → GELU(Conv1×1)."""

    def __init__(self, channels, num_heads, dropout, head_split, head_merge, proj_dropout_in_self):
        super().__init__()
        self.ln_attn = nn.LayerNorm(channels, eps=LN_EPS)
        self.attn = ChannelAttention(channels, num_heads, dropout, head_split, head_merge, proj_dropout_in_self)
        self.ln_ffn = nn.LayerNorm(channels, eps=LN_EPS)
        self.out_conv = nn.Conv3d(channels, channels, 1, bias=True)

    def _attend(self, t, mode):
        return self.ln_ffn(self.attn(self.ln_attn(t), mode) + t)


class LocalSKCMBlock(_SKCMBlock):
    """Local block (P = ``patch``): channel attention inside every P×P×P patch of every sample.

    Token learner = Conv3d(1 → P³, kernel = stride = P) applied to each channel separately: the P³ outputs of patch
    n are placed back at the patch's voxels in raster order (z, y, x). Sides that are not a multiple of P are
    zero-padded at the end before the block and cropped after it (port decision, spec §3.1).
    """

    def __init__(self, channels: int, patch: int = 2, num_heads: int = 2, dropout: float = 0.1):
        super().__init__(channels, num_heads, dropout, head_split="inner", head_merge="inner",
                         proj_dropout_in_self=False)
        self.patch = patch
        self.token_learner = nn.Conv3d(1, patch ** 3, kernel_size=patch, stride=patch, bias=True)

    def forward(self, h: torch.Tensor, mode: str = "self") -> torch.Tensor:
        b, c, d, hh, w = h.shape
        p = self.patch
        pads = [(-s) % p for s in (d, hh, w)]
        if any(pads):
            h = F.pad(h, (0, pads[2], 0, pads[1], 0, pads[0]))
        dp, hp, wp = d + pads[0], hh + pads[1], w + pads[2]
        nd, nh, nw = dp // p, hp // p, wp // p
        t = self.token_learner(h.reshape(b * c, 1, dp, hp, wp))  # (B·C, P³, nd, nh, nw)
        t = t.view(b, c, p ** 3, nd, nh, nw).permute(0, 3, 4, 5, 2, 1).reshape(b, nd * nh * nw, p ** 3, c)
        x = self._attend(t, mode)  # (B, Np, P³, C)
        x = x.view(b, nd, nh, nw, p, p, p, c).permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, dp, hp, wp)
        x = F.gelu(self.out_conv(x))
        return x[:, :, :d, :hh, :w]


class GlobalSKCMBlock(_SKCMBlock):
    """Global block: a dense channel-shared token learner R^{|S|} → R^{|S|} (Conv3d(1 → |S|, kernel = stride =
    (D, H, W))) whose outputs are the |S| spatial positions; one attention over the whole bottleneck per sample."""

    def __init__(self, channels: int, spatial_shape: Sequence[int], num_heads: int = 2, dropout: float = 0.1):
        # the reference's layout: heads split head-major (j // C) but merged channel-major (c·N + h)
        super().__init__(channels, num_heads, dropout, head_split="outer", head_merge="inner",
                         proj_dropout_in_self=True)
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        n = int(np.prod(self.spatial_shape))
        self.token_learner = nn.Conv3d(1, n, kernel_size=self.spatial_shape, stride=self.spatial_shape, bias=True)

    def forward(self, h: torch.Tensor, mode: str = "self") -> torch.Tensor:
        b, c = h.shape[:2]
        if tuple(h.shape[2:]) != self.spatial_shape:
            raise ValueError(f"SKCM global block was built for a bottleneck of {self.spatial_shape} but got "
                             f"{tuple(h.shape[2:])}; the network only runs at the planned patch size.")
        n = int(np.prod(self.spatial_shape))
        t = self.token_learner(h.reshape(b * c, 1, *self.spatial_shape)).view(b, c, n).transpose(1, 2)
        x = self._attend(t.unsqueeze(1), mode)[:, 0]  # (B, |S|, C)
        x = x.transpose(1, 2).reshape(b, c, *self.spatial_shape)
        return F.gelu(self.out_conv(x))


class SKCM(nn.Module):
    """Semantic Knowledge Complementarity Module: local block then global block, no outer residual (spec §1.3).

    ``forward(h, mode)``: mode "self" (unlabeled pass, inference; samples independent) or "cross" (labeled pass on
    [labeled; unlabeled] halves of equal size).
    """

    def __init__(self, channels: int, spatial_shape: Sequence[int], num_heads: int = 2, patch: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.local_block = LocalSKCMBlock(channels, patch, num_heads, dropout)
        self.global_block = GlobalSKCMBlock(channels, spatial_shape, num_heads, dropout)
        self.apply(init_skcm)

    def forward(self, h: torch.Tensor, mode: str = "self") -> torch.Tensor:
        if mode == "cross" and h.shape[0] % 2:
            raise ValueError(f"SKCM cross mode needs B_l = B_u (batch = labeled half + unlabeled half), got an odd "
                             f"batch of {h.shape[0]} samples.")
        return self.global_block(self.local_block(h, mode), mode)


def init_skcm(module: nn.Module) -> None:
    """Reference init: Conv3d Xavier-normal (biases keep PyTorch's default, as in the reference), Linear
    Xavier-uniform, LayerNorm weight 1 / bias 0."""
    if isinstance(module, nn.Conv3d):
        nn.init.xavier_normal_(module.weight)
    elif isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class SKCDFDecoder(nn.Module):
    """nnU-Net's decoder stages for the plans (transposed conv + StackedConvBlocks on the concatenated skip), then
    optional Dropout3d on the last features and two 1×1×1 heads on the same features: ``head_main`` (S^m) and
    ``head_aux`` (balanced head S^a; absent when ``use_aux`` is False). Unlike ``UNetDecoder`` it does not hold
    the encoder as a submodule, so EMA over the decoder's parameters never touches the shared encoder."""

    def __init__(self, encoder: PlainConvEncoder, num_classes: int, n_conv_per_stage: Sequence[int],
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
    """Encoder (nnU-Net ``PlainConvEncoder`` from the plans) + SKCM + D_l + D_u (spec §3.1).

    ``patch_size`` fixes the bottleneck shape (the global token learner is a dense map over it). ``use_skcm``
    False replaces the SKCM by the identity (ablation ``_noSKCM``/``_DF``); ``use_aux`` False builds no auxiliary
    heads (``_noABSH``/``_DF``); ``dropout_p`` > 0 adds Dropout3d on the bottleneck and on the last decoder
    features (reference: 0.5). ``inference_decoder`` "labeled" makes ``forward(x)`` use D_l's main head (Table 4
    ablation only).
    """

    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage, conv_op,
                 kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder, patch_size: Sequence[int],
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
        if isinstance(n_conv_per_stage_decoder, int):
            n_conv_per_stage_decoder = [n_conv_per_stage_decoder] * (n_stages - 1)
        self.encoder = PlainConvEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                                        n_conv_per_stage, conv_bias, norm_op, norm_op_kwargs, dropout_op,
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
        # nnU-Net init (He, neg. slope 1e-2) for encoder and decoders; SKCM keeps its own init
        init = InitWeights_He(1e-2)
        for m in (self.encoder, self.decoder_l, self.decoder_u):
            m.apply(init)

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
    """Build ``SKCDFNet`` from an nnU-Net configuration with a ``PlainConvUNet`` architecture."""
    import pydoc
    arch = configuration_manager.network_arch_class_name
    if arch.split(".")[-1] != "PlainConvUNet":
        raise ValueError(f"SKCDF builds its encoder/decoders from PlainConvUNet plans, but this configuration uses "
                         f"{arch}. Plan with the default planner (nnUNetPlans) or use a PlainConvUNet configuration.")
    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    for k in configuration_manager.network_arch_init_kwargs_req_import:
        if kwargs.get(k) is not None:
            kwargs[k] = pydoc.locate(kwargs[k])
    kwargs.pop("deep_supervision", None)
    return SKCDFNet(num_input_channels, num_output_channels, patch_size=configuration_manager.patch_size,
                    **kwargs, **skcdf_kwargs)
