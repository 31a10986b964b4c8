"""Small helpers every method shares: float32 promotion, one-hot targets, hard-label checks, EMA of weights, the sigmoid ramp-up and
a model's eval-mode context."""
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """float32/float64 unchanged, anything else (half-precision autocast outputs) → float32: losses run in fp32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def one_hot(labels: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """(B, *spatial) integer labels → (B, C, *spatial) one-hot of ``dtype``."""
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).to(dtype)


def hard_label_map(logits: torch.Tensor, target: torch.Tensor, who: str = "loss") -> torch.Tensor:
    """A hard label map for ``logits`` (B, C, ...): (B, 1, ...) (nnU-Net's target layout) or (B, ...) → long
    (B, ...); any other shape stops with both shapes named (``who``: the loss, for the message)."""
    if target.ndim == logits.ndim:
        if target.shape[1] != 1:
            raise ValueError(f"{who} expects a hard label map (B, 1, ...) or (B, ...), got target shape "
                             f"{tuple(target.shape)}")
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"{who}: target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    return target.long()


@torch.no_grad()
def ema_(target: torch.Tensor, source: torch.Tensor, decay: float) -> None:
    """target ← decay · target + (1 − decay) · source, in place."""
    target.mul_(decay).add_(source.detach().to(target.dtype), alpha=1 - decay)


@torch.no_grad()
def ema_update(target: torch.nn.Module, source: torch.nn.Module, decay: float) -> None:
    """``ema_`` for every floating-point parameter and buffer of ``target`` from the same-named one of ``source``.

    Non-float buffers (e.g. BatchNorm's ``num_batches_tracked``) are copied. Both modules must have the same
    structure (same ``state_dict`` keys).
    """
    src = source.state_dict()
    for name, t in target.state_dict().items():
        if t.dtype.is_floating_point:
            ema_(t, src[name], decay)
        else:
            t.copy_(src[name])


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """exp(−5 (1 − t)²) with t = clip(current / rampup_length, 0, 1) (Laine & Aila 2017); 1 if length is 0."""
    if rampup_length <= 0:
        return 1.0
    t = float(np.clip(current / rampup_length, 0.0, 1.0))
    return float(np.exp(-5.0 * (1.0 - t) ** 2))


@contextmanager
def eval_mode(module: torch.nn.Module):
    """``module`` in eval mode inside the block, its previous mode restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
