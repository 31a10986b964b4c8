"""Exponential moving average of network weights (Mean Teacher and EMA transfers)."""
import torch


@torch.no_grad()
def ema_update(target: torch.nn.Module, source: torch.nn.Module, decay: float) -> None:
    """target ← decay · target + (1 − decay) · source, for every floating-point parameter and buffer.

    Non-float buffers (e.g. BatchNorm's ``num_batches_tracked``) are copied. Both modules must have the same
    structure (same ``state_dict`` keys).
    """
    src = source.state_dict()
    for name, t in target.state_dict().items():
        s = src[name]
        if t.dtype.is_floating_point:
            t.mul_(decay).add_(s.detach().to(t.dtype), alpha=1 - decay)
        else:
            t.copy_(s)
