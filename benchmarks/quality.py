"""Synthetic quality benchmark: every method at the same label budget, several seeds, mean ± std Dice and HD95.

Methods: stock nnU-Net on the labeled cases only, Mean Teacher, M&N, SKCDF, CML (labeled + unlabeled cases), and
stock nnU-Net fully supervised (the same cases, same seed and order, with every unlabeled case labeled: the upper
bound). Each seed is a different synthetic dataset (training and test cases) and a fresh training run. The
pipeline is the demo's (:mod:`nnunetv2_semisup.demo`: real nnU-Net CLI, ``*_short`` trainers, stock
``nnUNetv2_predict --disable_tta``, ``evaluate_folders`` in mm mode).

Writes to ``--docs`` (default ``docs/``): ``quality_synthetic.md`` (table and the exact settings),
``quality_synthetic.json`` (every number) and ``quality_synthetic_dice.png`` (Dice per method: mean foreground
Dice with per-seed points, and Dice per label). Work folders go to ``--work``.

    python benchmarks/quality.py                                   # 3 seeds, the demo's schedule
    python benchmarks/quality.py --seeds 0 --epochs 8 --iterations 25 --device cpu

Without ``nnUNet_semisup_segformer`` M&N uses a tiny randomly initialised SegFormer (offline), which the outputs
say; its numbers then do not represent the method.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

from nnunetv2_semisup import demo

FULL = "fully supervised"
DISPLAY_FULL = "nnU-Net (fully supervised)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="dataset/run seeds (default 0 1 2)")
    p.add_argument("--methods", nargs="+", default=list(demo.DEFAULT_METHODS),
                   help="semi-supervised trainers and the labeled-only baseline (default: the demo's)")
    p.add_argument("--no-full", action="store_true", help="skip the fully supervised upper bound")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--epochs", type=int, default=demo.DEFAULT_EPOCHS)
    p.add_argument("--iterations", type=int, default=demo.DEFAULT_ITERATIONS)
    p.add_argument("--labeled", type=int, default=demo.DEFAULT_LABELED)
    p.add_argument("--unlabeled", type=int, default=demo.DEFAULT_UNLABELED)
    p.add_argument("--test", type=int, default=demo.DEFAULT_TEST)
    p.add_argument("--shape", type=int, nargs=3, default=list(demo.DEFAULT_SHAPE))
    p.add_argument("--features", type=int, nargs="+", default=list(demo.DEFAULT_FEATURES),
                   help="feature cap per stage (0: nnU-Net's plans)")
    p.add_argument("--patch", type=int, nargs=3, default=list(demo.DEFAULT_PATCH),
                   help="patch size cap (0 0 0: nnU-Net's plans)")
    p.add_argument("--work", default="quality_work", help="work folder (default ./quality_work)")
    p.add_argument("--docs", default="docs", help="where the table, JSON and PNG go (default docs/)")
    args = p.parse_args(argv)
    if args.features == [0]:
        args.features = None
    if args.patch == [0, 0, 0]:
        args.patch = None
    return args


def make_config(args, seed: int, full: bool) -> demo.DemoConfig:
    return demo.DemoConfig(
        out=os.path.abspath(os.path.join(args.work, f"seed{seed}" + ("_full" if full else ""))), device=args.device,
        methods=[demo.BASELINE] if full else list(args.methods), epochs=args.epochs, iterations=args.iterations,
        seed=seed, labeled=args.labeled, unlabeled=args.unlabeled, test=args.test, shape=tuple(args.shape),
        features=args.features, patch_size=args.patch)


def run_seed(args, seed: int, on_result=None, progress_stream=sys.stdout) -> list:
    """All methods on one seed; returns result dicts (a failing method is recorded with its error).

    Order: both datasets (semi-supervised split and all-labeled), then the labeled-only baseline, the fully
    supervised upper bound and the semi-supervised methods, so an interrupted run still has the two references.
    ``on_result(rows_so_far)`` is called after every method (the outputs are rewritten each time)."""
    out = []
    semi = make_config(args, seed, False)
    runs = [(semi, False)] + ([] if args.no_full else [(make_config(args, seed, True), True)])
    progress = demo.Progress(sum(len(demo.dataset_steps(c, f)) + 3 * len(c.methods) for c, f in runs),
                             progress_stream)
    for cfg, full in runs:
        demo.prepare_out_folder(cfg.out)
        note = demo.segformer_setup(cfg)
        if note:
            print(note, file=progress_stream, flush=True)
        progress.say(f"--- seed {seed}{' (all training cases labeled)' if full else ''}: {cfg.out}")
        for what, fn in demo.dataset_steps(cfg, all_labeled=full):
            progress.step(what, fn)
    jobs = [(semi, m, False) for m in semi.methods]
    if not args.no_full:
        jobs.insert(1 if demo.BASELINE in semi.methods[:1] else 0, (runs[1][0], demo.BASELINE, True))
    for cfg, method, full in jobs:
        results = []
        try:
            for what, fn in demo.method_steps(cfg, method, results, display_name=DISPLAY_FULL if full else None):
                progress.step(what, fn)
        except demo.DemoStepError as e:
            progress.say(f"FAILED ({method}, seed {seed}): {e}")
            out.append({"method": FULL if full else method, "trainer": method, "seed": seed, "error": str(e)})
        else:
            r = results[0]
            out.append({"method": FULL if full else method, "trainer": method, "name": r.name, "seed": seed,
                        "dice": r.dice, "hd95": r.hd95, "per_label_dice": r.per_label_dice,
                        "train_seconds": r.train_seconds, "seconds": r.seconds,
                        "segformer": os.environ.get("nnUNet_semisup_segformer") if "MN" in method else None})
        if on_result is not None:
            on_result(out)
    return out


def summarize(rows: list, order: list) -> list:
    """Per method: mean ± std (ddof 0) over seeds of mean foreground Dice and HD95, per-label Dice means."""
    table = []
    for key in order:
        ok = [r for r in rows if r["method"] == key and "error" not in r]
        failed = [r for r in rows if r["method"] == key and "error" in r]
        if not ok and not failed:
            continue
        name = DISPLAY_FULL if key == FULL else demo.METHOD_NAMES.get(key, key)
        entry = {"method": key, "name": name, "n": len(ok), "failed": len(failed)}
        for m in ("dice", "hd95", "train_seconds"):
            vals = np.array([r[m] for r in ok], float)
            entry[m] = (float(np.nanmean(vals)) if len(vals) else math.nan,
                        float(np.nanstd(vals)) if len(vals) else math.nan)
        labels = list(dict.fromkeys(k for r in ok for k in r["per_label_dice"]))
        entry["per_label_dice"] = {k: float(np.mean([r["per_label_dice"][k] for r in ok])) for k in labels}
        table.append(entry)
    return table


def _pm(mean_std, digits):
    m, s = mean_std
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(summary: list) -> str:
    labels = list(dict.fromkeys(k for e in summary for k in e["per_label_dice"]))
    head = ["method", "Dice (mean fg)", "HD95 mm (mean fg)"] + [f"Dice {k}" for k in labels] + ["train time", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [e["name"], _pm(e["dice"], 3), _pm(e["hd95"], 2)]
        cells += [f"{e['per_label_dice'][k]:.3f}" if k in e["per_label_dice"] else "n/a" for k in labels]
        cells += [demo.format_seconds(e["train_seconds"][0]) if not math.isnan(e["train_seconds"][0]) else "n/a",
                  f"{e['n']}" + (f" ({e['failed']} failed)" if e["failed"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: list, rows: list, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [e["name"] for e in summary]
    labels = list(dict.fromkeys(k for e in summary for k in e["per_label_dice"]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    x = np.arange(len(summary))
    ax.bar(x, [e["dice"][0] for e in summary], yerr=[e["dice"][1] for e in summary], capsize=4, color="#8fb3d9")
    for i, e in enumerate(summary):
        pts = [r["dice"] for r in rows if r["method"] == e["method"] and "error" not in r]
        ax.scatter([i] * len(pts), pts, color="k", s=12, zorder=3)
    ax.set_xticks(x, names, rotation=25, ha="right")
    ax.set_ylabel("Dice (mean over foreground labels)")
    ax.set_ylim(0, 1)
    ax.set_title("Dice per method (bars: mean ± std over seeds; dots: seeds)")
    ax = axes[1]
    w = 0.8 / max(1, len(labels))
    for j, k in enumerate(labels):
        ax.bar(x + (j - (len(labels) - 1) / 2) * w, [e["per_label_dice"].get(k, np.nan) for e in summary], w, label=k)
    ax.set_xticks(x, names, rotation=25, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title("Dice per label (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(args, rows: list, t0: float, argv=None, complete: bool = True) -> str:
    order = list(args.methods) + ([] if args.no_full else [FULL])
    order = [demo.BASELINE, FULL] + [m for m in order if m not in (demo.BASELINE, FULL)]
    summary = summarize(rows, order)
    os.makedirs(args.docs, exist_ok=True)
    command = "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    tiny_segformer = any(r.get("segformer") and "tiny_segformer" in r["segformer"] for r in rows)
    settings = (f"{len(args.seeds)} seed(s) {args.seeds}; {args.labeled} labeled + {args.unlabeled} unlabeled "
                f"training cases (fully supervised: all {args.labeled + args.unlabeled} labeled), {args.test} test "
                f"cases per seed, shape {'x'.join(map(str, args.shape))}; plans' features capped at "
                f"{args.features}, patch at {args.patch}; `*_short` trainers, {args.epochs} epochs x "
                f"{args.iterations} iterations, fold `all`, device {args.device}; mm-mode evaluation (HD95 in mm, "
                f"empty predictions penalised).")
    text = (f"# Quality (synthetic)\n\nCommand: `{command}`\n\n{settings}\n\n"
            + ("" if complete else "**Incomplete run: written after each method; methods missing below did not "
               "finish.**\n\n")
            + ("M&N used a tiny randomly initialised SegFormer (nnUNet_semisup_segformer unset, offline): its "
               "numbers do not represent the method.\n\n" if tiny_segformer else "")
            + f"Machine: {platform.platform()}, {os.cpu_count()} CPU(s); time so far "
              f"{demo.format_seconds(time.time() - t0)}.\n\n{markdown_table(summary)}\n\n"
              f"![Dice per method](quality_synthetic_dice.png)\n")
    with open(os.path.join(args.docs, "quality_synthetic.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.docs, "quality_synthetic.json"), "w") as f:
        json.dump({"command": command, "settings": settings, "complete": complete, "summary": summary,
                   "runs": rows}, f, indent=2)
    if summary:
        plot(summary, rows, os.path.join(args.docs, "quality_synthetic_dice.png"))
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    rows = []
    for seed in args.seeds:
        done = list(rows)
        rows = done + run_seed(args, seed, on_result=lambda r: write_outputs(args, done + r, t0, argv, False))
    print("\n" + write_outputs(args, rows, t0, argv, True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
