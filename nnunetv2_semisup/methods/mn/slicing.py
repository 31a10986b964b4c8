"""3D ↔ 2D slicing for the M&N 2D model (docs/mn.md).

A batch (N, C, S0, S1, S2) is cut along spatial axis ``axis`` (0, 1 or 2; nnU-Net's first spatial axis is
normally the through-plane one) into N·S_axis slices (N·S_axis, C, ·, ·); slice n·S_axis + k is index k of
sample n. ``from_slices`` is the inverse. ``slicewise_forward`` runs a 2D model over the slices in chunks of
``chunk_size`` (bounded memory), optionally with activation checkpointing per chunk when gradients are needed.

Deviation (accepted, docs/mn.md): in train mode, BatchNorm layers see per-chunk batch statistics. With
checkpointing, the recomputation in the backward pass runs with BatchNorm momentum 0 so running statistics are
updated exactly once per chunk (as without checkpointing).
"""
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nnunetv2_semisup.methods.mn.segformer import apply_window, patch_to_unit_range


def to_slices(x: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """(N, C, S0, S1, S2) → (N·S_axis, C, the two other spatial axes in order)."""
    if x.ndim != 5 or axis not in (0, 1, 2):
        raise ValueError(f"to_slices expects a (N, C, S0, S1, S2) tensor and axis in {{0, 1, 2}}, got shape "
                         f"{tuple(x.shape)} and axis {axis}")
    d = axis + 2
    x = x.movedim(d, 1)  # (N, S_axis, C, a, b)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def from_slices(y: torch.Tensor, n: int, axis: int = 0) -> torch.Tensor:
    """Inverse of ``to_slices``: (N·S, C, a, b) → (N, C, S0, S1, S2) with the slice axis at ``axis``."""
    if y.shape[0] % n:
        raise ValueError(f"{y.shape[0]} slices cannot be split into {n} samples")
    y = y.reshape(n, y.shape[0] // n, *y.shape[1:])  # (N, S, C, a, b)
    return y.movedim(1, axis + 2)


@contextmanager
def frozen_batchnorm_stats(module: nn.Module):
    """Temporarily set the momentum of every BatchNorm to 0 (running statistics unchanged; outputs unchanged)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


class _CheckpointedCall:
    """The function given to ``checkpoint``: the first call is the forward pass, later calls are recomputations
    and must not update BatchNorm running statistics a second time."""

    def __init__(self, model: nn.Module):
        self.model, self.calls = model, 0

    def __call__(self, x):
        self.calls += 1
        if self.calls == 1:
            return self.model(x)
        with frozen_batchnorm_stats(self.model):
            return self.model(x)


def forward_chunks(model: nn.Module, slices: torch.Tensor, chunk_size: int = 32,
                   use_checkpointing: bool = False) -> torch.Tensor:
    """``model`` on (M, C, a, b) slices in chunks of ``chunk_size`` (≤ 0: all at once), outputs concatenated."""
    if chunk_size is None or chunk_size <= 0:
        chunk_size = slices.shape[0]
    checkpointing = use_checkpointing and torch.is_grad_enabled()
    outs = []
    for start in range(0, slices.shape[0], chunk_size):
        chunk = slices[start:start + chunk_size]
        if checkpointing:
            outs.append(checkpoint(_CheckpointedCall(model), chunk, use_reentrant=False))
        else:
            outs.append(model(chunk))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def slicewise_forward(model: nn.Module, x: torch.Tensor, axis: int = 0, chunk_size: int = 32,
                      use_checkpointing: bool = False) -> torch.Tensor:
    """3D logits (N, C_out, S0, S1, S2) of a 2D ``model`` applied slice by slice along ``axis``."""
    return from_slices(forward_chunks(model, to_slices(x, axis), chunk_size, use_checkpointing), x.shape[0], axis)


class SliceWiseModel(nn.Module):
    """A 2D model applied to 3D batches slice by slice: (N, C, S0, S1, S2) → (N, C_out, S0, S1, S2).

    One module call per training step, so DDP can wrap it (chunking and checkpointing happen inside).

    ``window``: map nnU-Net's intensities to [0, 1] first, the range a model pretrained on natural images expects
    instead of nnU-Net's z-scores — ``(low, high)`` per channel (``segformer.input_window``: one fixed window, so a
    tissue gets the same value in every patch), ``"patch"`` (each patch by its own percentiles,
    ``segformer.patch_to_unit_range``; the default before 2026-12-06) or None (nnU-Net's intensities as they are).
    """

    def __init__(self, model: nn.Module, axis: int = 0, chunk_size: int = 32, use_checkpointing: bool = True,
                 window=None):
        super().__init__()
        self.model = model
        self.axis, self.chunk_size, self.use_checkpointing = axis, chunk_size, use_checkpointing
        self.set_window(window)

    def set_window(self, window) -> None:
        self.per_patch = window == "patch"
        fixed = window is not None and not self.per_patch
        device = next(iter(self.model.parameters()), torch.empty(0)).device
        # not persistent: derived from the plans, and checkpoints keep the keys they had before
        for i, name in enumerate(("window_low", "window_high")):
            value = torch.tensor(window[i], dtype=torch.float32, device=device) if fixed else None
            self.register_buffer(name, value, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_patch:
            x = patch_to_unit_range(x)
        elif self.window_low is not None:
            x = apply_window(x, self.window_low, self.window_high)
        return slicewise_forward(self.model, x, self.axis, self.chunk_size, self.use_checkpointing)
