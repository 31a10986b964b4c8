"""M&N epoch bookkeeping, learning-rate schedules and pseudo-label refresh points (LRG is in ``lrg.py``).

Documentation: docs/mn.md (epochs, schedules, the reference's composite schedule). Everything here is a pure function of epoch counters, so resuming (``--c``) only needs the
global epoch and the stored counters.

Epoch plan: global epochs e = 0 .. E−1; warm-up stage e < W (both models trained on labeled batches);
co-training epoch j = e − W + 1: odd j trains the 3D model, even j the 2D model (without co-training, every
co-training epoch trains 3D). Each model m has its own epoch counter e_m (epochs in which m was trained so far)
and its own schedule length T_3D = W + ⌈(E − W)/2⌉, T_2D = W + ⌊(E − W)/2⌋ (no co-training: T_3D = E, T_2D = W).
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional


WARMUP, TRAIN_3D, TRAIN_2D = "warmup", "3d", "2d"


def warmup_stage_epochs(num_epochs: int, fraction: float = 0.125, absolute: Optional[int] = None,
                        cotraining: bool = True) -> int:
    """W: ``absolute`` if given, else the W for which the supervised stage is ``fraction`` of each model's *own*
    schedule (the paper: 500 of 4000 = 12.5 %). With co-training, after the warm-up the global epochs alternate
    between the models, so T_m = W + (E − W)/2 and W/T_m = f gives W = f·E/(2 − f) (E/15 for f = 1/8: W = 67,
    T_3D = 534 at E = 1000); without co-training the 3D model trains every epoch (T_3D = E) and W = f·E.
    At least 1 (so short runs still have a supervised stage) and at most E."""
    if absolute is not None:
        w = int(absolute)
    elif fraction <= 0:
        w = 0
    else:
        exact = fraction * num_epochs / (2 - fraction) if cotraining else fraction * num_epochs
        w = max(1, int(round(exact)))
    if not 0 <= w <= num_epochs:
        raise ValueError(f"M&N warm-up stage of {w} epochs does not fit into num_epochs={num_epochs}; set "
                         f"mn_warmup_epochs/mn_warmup_fraction accordingly")
    return w


@dataclass(frozen=True)
class MNEpochPlan:
    """Which model trains in global epoch e, and each model's own epoch counter and schedule length."""
    num_epochs: int
    warmup_epochs: int
    cotraining: bool = True

    @property
    def T_3d(self) -> int:
        rest = self.num_epochs - self.warmup_epochs
        return self.num_epochs if not self.cotraining else self.warmup_epochs + (rest + 1) // 2

    @property
    def T_2d(self) -> int:
        rest = self.num_epochs - self.warmup_epochs
        return self.warmup_epochs if not self.cotraining else self.warmup_epochs + rest // 2

    def schedule_length(self, model: str) -> int:
        return self.T_3d if model == TRAIN_3D else self.T_2d

    def phase(self, e: int) -> str:
        """'warmup' (both models), '3d' or '2d' for global epoch e."""
        if e < self.warmup_epochs:
            return WARMUP
        if not self.cotraining:
            return TRAIN_3D
        j = e - self.warmup_epochs + 1
        return TRAIN_3D if j % 2 == 1 else TRAIN_2D

    def trains(self, e: int, model: str) -> bool:
        p = self.phase(e)
        return p == WARMUP or p == model

    def own_epoch(self, e: int, model: str) -> int:
        """Number of epochs before global epoch e in which ``model`` was trained (= its counter at e)."""
        W = self.warmup_epochs
        if e <= W:
            return e
        done = e - W  # co-training epochs before e
        if model == TRAIN_3D:
            return W + (done if not self.cotraining else (done + 1) // 2)
        return W + (0 if not self.cotraining else done // 2)


# ---------------------------------------------------------------------------------------------- LR schedules
class PolySchedule:
    """nnU-Net's poly decay η₀·(1 − e/T)^0.9 (``PolyLRScheduler`` formula), η_final = 0."""

    def __init__(self, initial_lr: float, total: int, exponent: float = 0.9):
        self.initial_lr, self.final_lr, self.total, self.exponent = initial_lr, 0.0, total, exponent

    def __call__(self, e: int) -> float:
        return self.initial_lr * (1 - e / self.total) ** self.exponent


class WarmupCosineSchedule:
    """Port 2D schedule: linear warm-up 0.01·η₀ → η₀ over w epochs, then cosine η₀ → 0 until T."""

    def __init__(self, initial_lr: float, total: int, warmup: int):
        if warmup < 1 or total < 1:
            raise ValueError(f"schedule needs total ≥ 1 and warm-up ≥ 1 epochs, got {total} and {warmup}")
        self.initial_lr, self.final_lr, self.total, self.warmup = initial_lr, 0.0, total, warmup

    def cosine(self, e: int, start: int, end: int) -> float:
        return self.initial_lr * (1 + math.cos(math.pi * (e - start) / max(1, end - start))) / 2

    def __call__(self, e: int) -> float:
        if e < self.warmup:
            return self.initial_lr * (0.01 + 0.99 * e / self.warmup)
        return self.cosine(e, self.warmup, self.total)  # (a schedule of T ≤ w epochs never gets here)


class ReferenceCompositeSchedule(WarmupCosineSchedule):
    """The reference's composite schedule, generalised: linear warm-up 0.01·η₀ → η₀ over w epochs, cosine
    η₀ → 0 until the end of the supervised stage W, then a **restart** at η₀ with cosine → 0 until T.
    With w = 50, W = 500, T = 4000 this is exactly the reference's ``SequentialLR``."""

    def __init__(self, initial_lr: float, total: int, warmup: int, restart: int):
        if not 0 < warmup < restart < total:
            raise ValueError(f"reference schedule needs 0 < warm-up ({warmup}) < restart ({restart}) < total ({total})")
        super().__init__(initial_lr, total, warmup)
        self.restart = restart

    def __call__(self, e: int) -> float:
        if e < self.restart:
            return WarmupCosineSchedule(self.initial_lr, self.restart, self.warmup)(e)
        return self.cosine(e, self.restart, self.total)


def lr_warmup_epochs(total: int, ratio: float) -> int:
    """w = max(1, round(T·ratio)) (ratio = 50/4000 in the reference)."""
    return max(1, int(round(total * ratio)))


class ModelLRScheduler:
    """Sets one model's learning rate from its own epoch counter.

    ``step(global_epoch)`` is what nnU-Net's ``on_train_epoch_start`` calls with ``self.current_epoch``: the
    scheduler steps only if its model is trained in that epoch (so over a run it steps exactly T_m times) and
    sets lr = schedule(e_m).
    """

    def __init__(self, optimizer, schedule: Callable[[int], float], plan: MNEpochPlan, model: str):
        self.optimizer, self.schedule, self.plan, self.model = optimizer, schedule, plan, model
        self.num_steps = 0
        self.last_own_epoch = None
        self._last_lr = [g["lr"] for g in optimizer.param_groups]

    def step(self, global_epoch: int) -> bool:
        if not self.plan.trains(global_epoch, self.model):
            return False
        e = self.plan.own_epoch(global_epoch, self.model)
        lr = self.schedule(e)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)
        self.num_steps += 1
        self.last_own_epoch = e
        return True

    def get_last_lr(self):
        return self._last_lr

    def state_dict(self) -> dict:
        return {"num_steps": self.num_steps, "last_own_epoch": self.last_own_epoch, "last_lr": self._last_lr}

    def load_state_dict(self, state: dict) -> None:
        self.num_steps, self.last_own_epoch, self._last_lr = state["num_steps"], state["last_own_epoch"], \
            state["last_lr"]


# ---------------------------------------------------------------------------------------------- pseudo refresh
def due_pseudo_label_refreshes(e: int, plan: MNEpochPlan, fractions, done) -> list:
    """Refresh points due at the start of global epoch e: 'warmup' at e = W, and each fraction f at the
    first 3D epoch whose own counter is ≥ ⌈f·T_3D⌉. ``done`` holds points already served; points falling on the
    same epoch are served by one refresh."""
    due = []
    if plan.warmup_epochs > 0 and e >= plan.warmup_epochs and "warmup" not in done:
        due.append("warmup")
    if plan.phase(e) == TRAIN_3D:
        e3 = plan.own_epoch(e, TRAIN_3D)
        for f in fractions:
            if f not in done and e3 >= math.ceil(f * plan.T_3d):
                due.append(f)
    return due
