"""M&N learning-rate-guided sampling (LRG): how many unlabeled patches each batch of a co-training epoch holds.

Paper eq. 10 gives b_u = ⌊r·B⌋ with r = (η₀ − η)/(η₀ − η_final); the reference code uses r = (e − W)/(T − W).
The port (docs/mn.md, "Learning-rate-guided sampling at nnU-Net's batch sizes") measures r from the LR at which the
model's co-training starts (``cotraining_lr_peak``; η₀ for the paper's restart schedule), quantises the epoch's
unlabeled share as ⌊r·B_LRG⌋/B_LRG with the paper's B_LRG = 5, and spreads it over the epoch's iterations at
nnU-Net's batch size B (``iteration_unlabeled``). All pure functions of the counters, so ``--c`` resumes exactly.
"""
import math
from typing import Callable, Tuple

import numpy as np

def lrg_paper(batch_size: int, lr: float, initial_lr: float, final_lr: float = 0.0) -> int:
    """Paper eq. 10: b_u = ⌊r·B⌋ with r = clamp((η₀ − η)/(η₀ − η_final), 0, 1)."""
    r = min(1.0, max(0.0, (initial_lr - lr) / (initial_lr - final_lr)))
    return int(math.floor(r * batch_size + 1e-12))


def lrg_linear(batch_size: int, own_epoch: int, warmup_epochs: int, total: int) -> int:
    """Reference code: b_u = ⌊(e_m − W)/(T_m − W)·B⌋ (never B inside a run)."""
    if own_epoch < warmup_epochs:
        return 0
    return int(math.floor((own_epoch - warmup_epochs) / (total - warmup_epochs) * batch_size))


def lrg_uniform(rng: np.random.Generator, batch_size: int, n_labeled: int, n_unlabeled: int) -> int:
    """'No LRG' ablation: each of the B patches comes from labeled ∪ unlabeled with probability proportional to
    case counts, i.e. b_u ~ Binomial(B, |U|/(|L|+|U|))."""
    return int(rng.binomial(batch_size, n_unlabeled / (n_labeled + n_unlabeled)))


def cotraining_lr_peak(schedule: Callable[[int], float], warmup_epochs: int, total: int) -> Tuple[int, float]:
    """(own epoch, LR) of the highest learning rate a model's schedule reaches in its co-training part
    (own epochs W … T − 1). LRG measures the decay from there: with the paper's restart schedule this is η₀ at
    e = W; with a schedule that keeps decaying through the warm-up stage it is the LR at e = W, so the unlabeled
    share starts at 0 when co-training starts, as in the paper; if co-training starts inside the model's LR
    warm-up (W = 0) it is the end of that warm-up."""
    if total <= warmup_epochs:
        return warmup_epochs, schedule(warmup_epochs)
    lrs = [schedule(e) for e in range(warmup_epochs, total)]
    k = int(np.argmax(lrs))
    return warmup_epochs + k, lrs[k]


def lrg_ratio(mode: str, own_epoch: int, warmup_epochs: int, total: int, lr: float = None,
              peak_epoch: int = None, peak_lr: float = None, final_lr: float = 0.0) -> float:
    """r ∈ [0, 1] of a co-training epoch: ``"paper"`` eq. 10 measured from the co-training peak,
    r = (η_peak − η)/(η_peak − η_final) (0 while the LR still rises towards the peak); ``"linear"`` the reference
    code's (e_m − W)/(T_m − W)."""
    if mode == "paper":
        if own_epoch < peak_epoch or peak_lr <= final_lr:
            return 0.0
        return min(1.0, max(0.0, (peak_lr - lr) / (peak_lr - final_lr)))
    if mode == "linear":
        return 0.0 if own_epoch < warmup_epochs else min(1.0, (own_epoch - warmup_epochs) / (total - warmup_epochs))
    raise ValueError(f"unknown mn_lrg_mode '{mode}' for a per-epoch ratio; use 'paper' or 'linear'")


def unlabeled_share(ratio: float, lrg_batch_size: int) -> float:
    """Share of unlabeled patches in an epoch: ⌊r·B_LRG⌋/B_LRG — eq. 10's b_u/B with the paper's B_LRG = 5, so
    the share moves 0 → 1/5 → … → 4/5 over co-training whatever nnU-Net's planned batch size is."""
    return math.floor(ratio * lrg_batch_size + 1e-9) / lrg_batch_size


def epoch_composition(share: float, batch_size: int) -> Tuple[int, int]:
    """Patches the two loaders deliver per iteration for an epoch with this unlabeled share: (B − ⌊s·B⌋,
    ⌈s·B⌉). Each iteration uses B of them (``iteration_unlabeled``); when s·B is an integer (e.g. B = 5) that is
    every patch, otherwise one patch per iteration is loaded but not used."""
    x = share * batch_size
    lo, hi = math.floor(x + 1e-9), math.ceil(x - 1e-9)
    return batch_size - lo, hi


def iteration_unlabeled(iteration: int, share: float, batch_size: int) -> int:
    """b_u of iteration i of an epoch: ⌊(i + 1)·s·B⌋ − ⌊i·s·B⌋, so the first n iterations hold ⌊n·s·B⌋ unlabeled
    patches (each iteration ⌊s·B⌋ or ⌈s·B⌉ of its B) — the epoch's share is s at any B, memory stays at B."""
    x = share * batch_size
    return math.floor((iteration + 1) * x + 1e-9) - math.floor(iteration * x + 1e-9)
