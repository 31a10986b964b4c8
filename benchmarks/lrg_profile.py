"""Per-model labeled/unlabeled profile of M&N's learning-rate-guided sampling, default trainer vs the paper.

Prints, for each model, the unlabeled share of its epochs at 0 / 25 / 50 / 75 / 100 % of its co-training, and the
first co-training epoch (as a fraction of its co-training) at which the share reaches 1/5 … 4/5, for
- the paper / reference (B = 5, composite schedule with the restart at own epoch 500, 4000 own epochs),
- ``nnUNetTrainerMN`` at nnU-Net's default schedule (E = 1000) for a planned batch of 2 and of 5 (the share is
  ⌊5r⌋/5 realised over the iterations of an epoch at B patches per step),
- the pre-fix default (W = 0.125·E global epochs, b_u = ⌊B·(η₀ − η)/η₀⌋ per epoch) for B = 2, for comparison.
Pure schedule arithmetic (the functions the trainer calls); no training. Run: ``python benchmarks/lrg_profile.py``.
"""

from nnunetv2_semisup.methods.mn.schedule import (TRAIN_2D, TRAIN_3D, MNEpochPlan, PolySchedule,
                                                  ReferenceCompositeSchedule, WarmupCosineSchedule, lr_warmup_epochs,
                                                  warmup_stage_epochs)

from nnunetv2_semisup.methods.mn.lrg import (cotraining_lr_peak, iteration_unlabeled, lrg_paper, lrg_ratio,
                                             unlabeled_share)

ITERATIONS = 250


def share_profile(schedule, W, T, B, lrg_batch=5):
    peak = cotraining_lr_peak(schedule, W, T)
    out = []
    for e in range(W, T):
        s = unlabeled_share(lrg_ratio("paper", e, W, T, lr=schedule(e), peak_epoch=peak[0], peak_lr=peak[1]),
                            lrg_batch)
        out.append(sum(iteration_unlabeled(i, s, B) for i in range(ITERATIONS)) / (ITERATIONS * B))
    return out


def old_profile(schedule, W, T, B):
    return [lrg_paper(B, schedule(e), schedule.initial_lr) / B for e in range(W, T)]


def row(name, shares):
    n = len(shares)
    at = [shares[min(n - 1, int(round(f * (n - 1))))] for f in (0, 0.25, 0.5, 0.75, 1.0)]
    firsts = []
    for k in (1, 2, 3, 4):
        idx = next((i for i, x in enumerate(shares) if x >= k / 5 - 1e-9), None)
        firsts.append("never" if idx is None else f"{idx / n:.3f}")
    return f"| {name} | " + " | ".join(f"{x:.2f}" for x in at) + " | " + " | ".join(firsts) + " |"


def main(argv=None):
    import argparse
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    print("| model, setting | share at 0 % | 25 % | 50 % | 75 % | end | first ≥ 1/5 | ≥ 2/5 | ≥ 3/5 | ≥ 4/5 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ref = ReferenceCompositeSchedule(1.0, 4000, 50, 500)
    paper = [lrg_paper(5, ref(e), 1.0) / 5 for e in range(500, 4000)]
    print(row("both models, paper/reference (B = 5, restart schedule)", paper))
    E = 1000
    plan = MNEpochPlan(E, warmup_stage_epochs(E))
    for B in (2, 5):
        for model in (TRAIN_3D, TRAIN_2D):
            T = plan.schedule_length(model)
            sched = PolySchedule(0.01, T) if model == TRAIN_3D else \
                WarmupCosineSchedule(1e-3, T, lr_warmup_epochs(T, 50 / 4000))
            print(row(f"{model.upper()}, default E = {E} (W = {plan.warmup_epochs}, T = {T}), B = {B}",
                      share_profile(sched, plan.warmup_epochs, T, B)))
    old = MNEpochPlan(E, int(round(0.125 * E)))
    for model in (TRAIN_3D, TRAIN_2D):
        T = old.schedule_length(model)
        sched = PolySchedule(0.01, T) if model == TRAIN_3D else \
            WarmupCosineSchedule(1e-3, T, lr_warmup_epochs(T, 50 / 4000))
        print(row(f"{model.upper()}, before the fix (W = 125, T = {T}), B = 2", old_profile(sched, 125, T, 2)))


if __name__ == "__main__":
    main()
