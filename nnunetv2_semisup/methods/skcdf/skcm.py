"""Semantic Knowledge Complementarity Module (SKCM) of SKCDF (Zhang et al., CVPR 2025;
docs/skcdf.md): a local block (token learner Conv3d(1 → P³, kernel = stride = P) per channel, attention
inside each P×P×P patch) followed by a global block (dense channel-shared token learner R^{|S|} → R^{|S|},
attention over the whole bottleneck). Each block: t = token learner, e = LN(t), x = LN(Attn(e) + t),
out = GELU(Conv1×1(x)); no outer residual. Attention is *channel* attention: the affinity is Qᵀ·K (C' × C'),
normalised by ψ = instance norm over the whole matrix (no 1/√d), softmax over keys. Cross mode (labeled pass):
labeled and unlabeled samples attend to each other (unlabeled embeddings detached); self mode (unlabeled pass,
inference): every sample attends to itself with N heads, in the reference's head layout.

Deliberate deviations from the reference code: any bottleneck shape (sides not divisible by P are zero-padded at
the end and cropped after the local block), any B_l = B_u ≥ 1, no batch duplication in eval mode, the unused
``map_in`` parameters are omitted.
"""
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
    zero-padded at the end before the block and cropped after it (port decision, docs/skcdf.md).
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
    """Semantic Knowledge Complementarity Module: local block then global block, no outer residual (docs/skcdf.md).

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
