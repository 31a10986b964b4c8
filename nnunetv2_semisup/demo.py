"""``nnUNetv2_semisup_demo``: the whole job in one command, on a synthetic dataset (no downloads, no GPU needed).

Steps (each runs the real command-line tools in a subprocess, with an explicit environment that points nnU-Net at
sub-folders of ``--out`` only; the user's own nnU-Net folders are never touched):

1. write a synthetic dataset (:mod:`nnunetv2_semisup.synthetic`): labeled, unlabeled and test cases;
2. ``nnUNetv2_plan_and_preprocess`` (stock nnU-Net, labeled cases), then shrink the planned U-Net's feature
   widths (``--features``) and its patch size (``--patch``) so a CPU trains it in minutes (data, spacing and
   topology stay as planned);
3. ``nnUNetv2_semisup_preprocess`` (unlabeled scans, same plans);
4. per method: ``nnUNetv2_train DATASET 3d_fullres all -tr <trainer>`` with the ``*_short`` schedule
   (``nnUNet_semisup_short_epochs``/``_iterations``), ``nnUNetv2_predict --disable_tta`` on the test cases, and
   :func:`nnunetv2_semisup.evaluation.evaluate.evaluate_folders` (mm mode: Dice, HD95 in mm);
5. one table: mean foreground Dice and HD95 per method, time taken.

M&N's 2D model: when ``nnUNet_semisup_segformer`` is unset, a tiny randomly initialised SegFormer config is saved
into the demo folder and used instead of the pretrained SegFormer-B2 (offline; M&N's numbers are then not
representative), and the demo says so.

The pieces (:func:`build_env`, :func:`prepare_dataset`, :func:`run_method`, :func:`format_table`) are reused by
``benchmarks/quality.py``.
"""
import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from nnunetv2_semisup.workflows.commands import CommandError, bin_path, run_command  # noqa: F401 (re-exported)

DATASET_ID = 977
DATASET_NAME = f"Dataset{DATASET_ID:03d}_SemiSupDemo"
CONFIGURATION = "3d_fullres"
MARKER = ".nnunetv2_semisup_demo"

BASELINE = "nnUNetTrainer_semisupShort"
DEFAULT_METHODS = [BASELINE, "nnUNetTrainerMeanTeacher_short", "nnUNetTrainerMN_short", "nnUNetTrainerSKCDF_short",
                   "nnUNetTrainerCML_short"]
METHOD_NAMES = {
    BASELINE: "nnU-Net (labeled only)",
    "nnUNetTrainerMeanTeacher_short": "Mean Teacher",
    "nnUNetTrainerMN_short": "M&N",
    "nnUNetTrainerMN_labeledIntact_short": "M&N (B labeled + LRG's unlabeled on top)",
    "nnUNetTrainerSKCDF_short": "SKCDF",
    "nnUNetTrainerCML_short": "CML",
    "nnUNetTrainerSKCDF_paper_short": "SKCDF (_paper recipe)",
    "nnUNetTrainerSKCDF_earlyRamp_short": "SKCDF (λ_u ramp over the first 40 %)",
    "nnUNetTrainerCML_paper_short": "CML (_paper recipe)",
    "nnUNetTrainerWeakStrong_short": "weak→strong",
    "nnUNetTrainer_contrastRemap_short": "nnU-Net (labeled only) + contrast remapping",
}
LABELED_ONLY = {BASELINE, "nnUNetTrainer_contrastRemap_short"}  # trainers that never read the unlabeled scans

# Defaults calibrated on a 2-core CPU (see docs/benchmarks.md, "Quality (synthetic)"): the default synthetic shape
# (24x48x48), nnU-Net's plans with a 16x32x32 patch and 8-32 features, and enough iterations (300) for the
# labeled-only baseline to leave the all-background phase that nnU-Net goes through early in training (measured on
# this dataset: after 25 to 175 iterations, varying between runs; after 300 the organ is segmented in every run).
DEFAULT_SHAPE = (24, 48, 48)
DEFAULT_FEATURES = (8, 16, 32, 32)
DEFAULT_PATCH = (16, 32, 32)
DEFAULT_EPOCHS = 12
DEFAULT_ITERATIONS = 25
DEFAULT_LABELED = 4
DEFAULT_UNLABELED = 16
DEFAULT_TEST = 6

OFFLINE_SEGFORMER_NOTE = (
    "NOTE: nnUNet_semisup_segformer is not set, so M&N uses a small randomly initialised SegFormer saved in {folder} "
    "instead of the pretrained SegFormer-B2 (nvidia/segformer-b2-finetuned-ade-512-512). M&N's numbers below are "
    "therefore NOT representative of the method. To use the real model: export "
    "nnUNet_semisup_segformer=nvidia/segformer-b2-finetuned-ade-512-512 (or a local copy) and run again.")


# a failing step: the message names the command and ends with the tail of its output
DemoStepError = CommandError


@dataclass
class DemoConfig:
    out: str
    device: str = "cpu"
    methods: Sequence[str] = tuple(DEFAULT_METHODS)
    epochs: int = DEFAULT_EPOCHS
    iterations: int = DEFAULT_ITERATIONS
    seed: int = 0
    labeled: int = DEFAULT_LABELED
    unlabeled: int = DEFAULT_UNLABELED
    test: int = DEFAULT_TEST
    shape: Sequence[int] = DEFAULT_SHAPE
    features: Optional[Sequence[int]] = DEFAULT_FEATURES
    patch_size: Optional[Sequence[int]] = DEFAULT_PATCH
    preset: str = "default"           # nnunetv2_semisup.synthetic preset (the quality benchmark uses "cohort*")
    unseen: Optional[str] = None      # cohort preset: the scanner no labeled case comes from (controlled track)
    dataset_id: int = DATASET_ID
    dataset_name: str = DATASET_NAME
    keep_checkpoint_every: int = 0    # > 0: training keeps checkpoint_epoch<N>.pth every so many epochs

    # the demo's own nnU-Net folders and outputs, all under --out
    raw = property(lambda self: os.path.join(self.out, "nnUNet_raw"))
    preprocessed = property(lambda self: os.path.join(self.out, "nnUNet_preprocessed"))
    results = property(lambda self: os.path.join(self.out, "nnUNet_results"))
    raw_dataset = property(lambda self: os.path.join(self.raw, self.dataset_name))
    logs = property(lambda self: os.path.join(self.out, "logs"))

    def predictions(self, method: str) -> str:
        return os.path.join(self.out, "predictions", method)

    def evaluation(self, method: str) -> str:
        return os.path.join(self.out, "evaluation", method)


@dataclass
class MethodResult:
    method: str
    dice: float
    hd95: float
    seconds: float
    train_seconds: float
    per_label_dice: Dict[str, float] = field(default_factory=dict)
    display_name: Optional[str] = None
    per_label_hd95: Dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.display_name or METHOD_NAMES.get(self.method, self.method)


# ------------------------------------------------------------------------------------------------- environment
def build_env(cfg: DemoConfig, base: Optional[dict] = None, for_training: bool = True) -> dict:
    """The environment of every subprocess: nnU-Net's folders inside ``cfg.out``, the trainer hook, the schedule.

    Any ``nnUNet_*`` variable of the caller except ``nnUNet_semisup_segformer`` is dropped, so the user's own
    nnU-Net setup neither leaks in nor gets written to. ``nnUNet_n_proc_DA=0`` (single-threaded augmentation,
    fastest on a small CPU) is set for training only: ``nnUNetv2_plan_and_preprocess`` crashes with it.
    """
    from nnunetv2_semisup.trainer_dir import TRAINER_DIR
    base = dict(os.environ if base is None else base)
    env = {k: v for k, v in base.items()
           if not k.startswith("nnUNet_") or k == "nnUNet_semisup_segformer"}
    env.update({
        "nnUNet_raw": cfg.raw, "nnUNet_preprocessed": cfg.preprocessed, "nnUNet_results": cfg.results,
        "nnUNet_extTrainer": TRAINER_DIR, "nnUNet_compile": "0",
        "nnUNet_semisup_short_epochs": str(cfg.epochs), "nnUNet_semisup_short_iterations": str(cfg.iterations),
        "nnUNet_semisup_short_val_iterations": "1", "nnUNet_def_n_proc": "1",
        # the demo evaluates on the test cases; nnU-Net's final validation on the training cases is skipped
        "nnUNet_semisup_short_skip_validation": "1",
        # --seed seeds the data and the training runs (initialisation, sampling, augmentation in one process)
        "nnUNet_semisup_seed": str(cfg.seed),
        "PYTHONUNBUFFERED": "1",
    })
    if cfg.keep_checkpoint_every > 0:
        env["nnUNet_semisup_short_keep_every"] = str(cfg.keep_checkpoint_every)
    if for_training:
        env["nnUNet_n_proc_DA"] = "0" if cfg.device == "cpu" else str(max(1, min(4, (os.cpu_count() or 2) // 2)))
    return env


# ------------------------------------------------------------------------------------------------- pipeline
def shrink_plans(plans_file: str, features: Optional[Sequence[int]] = None,
                 patch_size: Optional[Sequence[int]] = None) -> dict:
    """Make the planned 3d_fullres U-Net cheaper for a CPU: cap each stage's feature count at ``features`` (per
    stage; extra stages keep the last value) and the patch size at ``patch_size`` (rounded down to a multiple of
    the network's total stride per axis). Topology, spacing and normalisation stay as nnU-Net planned them.
    Returns ``{"features_per_stage": ..., "patch_size": ...}`` of 3d_fullres."""
    with open(plans_file) as f:
        plans = json.load(f)
    conf = plans["configurations"][CONFIGURATION]
    arch = conf["architecture"]["arch_kwargs"]
    if features:
        n = arch["n_stages"]
        caps = [int(features[min(i, len(features) - 1)]) for i in range(n)]
        arch["features_per_stage"] = [min(a, b) for a, b in zip(arch["features_per_stage"], caps)]
    if patch_size:
        total_stride = [int(math.prod(s[d] for s in arch["strides"])) for d in range(len(conf["patch_size"]))]
        conf["patch_size"] = [max(t, min(p, int(c)) // t * t)
                              for p, c, t in zip(conf["patch_size"], patch_size, total_stride)]
    with open(plans_file, "w") as f:
        json.dump(plans, f, indent=2)
    return {"features_per_stage": arch["features_per_stage"], "patch_size": conf["patch_size"]}


class Progress:
    """Per-step progress lines: ``[k/N] what ... done in X s (elapsed Y)``."""

    def __init__(self, total: int, stream=None):
        self.total, self.k, self.start = total, 0, time.time()
        self.stream = stream or sys.stdout

    def elapsed(self) -> str:
        return format_seconds(time.time() - self.start)

    def step(self, what: str, fn: Callable):
        self.k += 1
        print(f"[{self.k}/{self.total}] {what} ... (elapsed {self.elapsed()})", file=self.stream, flush=True)
        t0 = time.time()
        out = fn()
        print(f"[{self.k}/{self.total}] done in {format_seconds(time.time() - t0)} (elapsed {self.elapsed()})",
              file=self.stream, flush=True)
        return out

    def say(self, text: str):
        print(text, file=self.stream, flush=True)


def format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s} s"


def prepare_out_folder(out: str) -> None:
    """Create ``out`` (or reuse one made by the demo); refuse a non-empty folder the demo did not make."""
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MARKER)):
        raise DemoStepError(f"--out {out} exists, is not empty and was not made by nnUNetv2_semisup_demo; "
                            f"choose another folder (the demo deletes and rewrites what is inside)")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("made by nnUNetv2_semisup_demo; safe to delete\n")


def dataset_steps(cfg: DemoConfig, all_labeled: bool = False) -> List[tuple]:
    """(description, function) for making, planning and preprocessing the dataset. ``all_labeled`` writes the
    same cases (same seed and order) with every unlabeled case labeled: the fully supervised upper bound."""
    def make():
        from nnunetv2_semisup.synthetic import make_synthetic_dataset
        for folder in (cfg.raw_dataset, os.path.join(cfg.preprocessed, cfg.dataset_name),
                       os.path.join(cfg.results, cfg.dataset_name)):
            shutil.rmtree(folder, ignore_errors=True)
        for folder in (cfg.raw, cfg.preprocessed, cfg.results):
            os.makedirs(folder, exist_ok=True)
        n_l, n_u = (cfg.labeled + cfg.unlabeled, 0) if all_labeled else (cfg.labeled, cfg.unlabeled)
        make_synthetic_dataset(cfg.raw_dataset, n_l, n_u, cfg.test, cfg.seed, tuple(cfg.shape), preset=cfg.preset,
                               unseen=cfg.unseen)

    def plan():
        run_command(["nnUNetv2_plan_and_preprocess", "-d", cfg.dataset_id, "-c", CONFIGURATION,
                     "-np", max(1, min(4, os.cpu_count() or 1))],
                    build_env(cfg, for_training=False), os.path.join(cfg.logs, "plan_and_preprocess.log"))
        if cfg.features or cfg.patch_size:
            shrink_plans(os.path.join(cfg.preprocessed, cfg.dataset_name, "nnUNetPlans.json"), cfg.features,
                         cfg.patch_size)

    def preprocess_unlabeled():
        run_command(["nnUNetv2_semisup_preprocess", "-d", cfg.dataset_id, "-c", CONFIGURATION, "-np", 1],
                    build_env(cfg, for_training=False), os.path.join(cfg.logs, "semisup_preprocess.log"))

    n_l = cfg.labeled + cfg.unlabeled if all_labeled else cfg.labeled
    n_u = 0 if all_labeled else cfg.unlabeled
    steps = [(f"synthetic dataset {cfg.dataset_name}: {n_l} labeled, {n_u} unlabeled, {cfg.test} test cases, "
              f"{'x'.join(map(str, cfg.shape))} voxels", make),
             ("nnUNetv2_plan_and_preprocess (stock nnU-Net, labeled cases)"
              + (f", then plans shrunk for the CPU (features <= {list(cfg.features or [])}, patch <= "
                 f"{list(cfg.patch_size or [])})" if cfg.features or cfg.patch_size else ""), plan)]
    if n_u:
        steps.append(("nnUNetv2_semisup_preprocess (unlabeled scans, same plans)", preprocess_unlabeled))
    return steps


def method_steps(cfg: DemoConfig, method: str, results: List[MethodResult], tag: str = "",
                 display_name: Optional[str] = None) -> List[tuple]:
    """(description, function) for training, predicting and evaluating one method; appends a MethodResult.
    ``tag`` distinguishes log/prediction folders of repeated runs of one trainer."""
    state = {}
    log_name = method + (f"_{tag}" if tag else "")

    def train():
        t0 = time.time()
        run_command(["nnUNetv2_train", cfg.dataset_id, CONFIGURATION, "all", "-tr", method, "-device", cfg.device],
                    build_env(cfg), os.path.join(cfg.logs, f"train_{log_name}.log"))
        state["train"] = time.time() - t0
        state["t0"] = t0

    def predict():
        pred = cfg.predictions(log_name)
        shutil.rmtree(pred, ignore_errors=True)
        run_command(["nnUNetv2_predict", "-i", os.path.join(cfg.raw_dataset, "imagesTs"), "-o", pred,
                     "-d", cfg.dataset_id, "-c", CONFIGURATION, "-f", "all", "-tr", method, "-device", cfg.device,
                     "--disable_tta", "-npp", 1, "-nps", 1],
                    build_env(cfg), os.path.join(cfg.logs, f"predict_{log_name}.log"))

    def evaluate():
        result = evaluate_method(cfg, method, log_name, state["train"], time.time() - state["t0"])
        result.display_name = display_name
        results.append(result)

    what = display_name or METHOD_NAMES.get(method, method)
    data = "labeled cases" if method in LABELED_ONLY else "labeled + unlabeled cases"
    return [(f"train {what}: nnUNetv2_train {cfg.dataset_id} {CONFIGURATION} all -tr {method} -device {cfg.device} "
             f"({data}, {cfg.epochs} epochs x {cfg.iterations} iterations)", train),
            (f"predict the {cfg.test} test cases with nnUNetv2_predict (-tr {method}, --disable_tta)", predict),
            (f"evaluate {what} (Dice, HD95 in mm)", evaluate)]


def evaluate_method(cfg: DemoConfig, method: str, log_name: str, train_seconds: float,
                    seconds: float) -> MethodResult:
    from nnunetv2_semisup.evaluation.evaluate import evaluate_folders
    summary = evaluate_folders(os.path.join(cfg.raw_dataset, "labelsTs"), cfg.predictions(log_name),
                               dataset_json=os.path.join(cfg.raw_dataset, "dataset.json"),
                               output_folder=cfg.evaluation(log_name))
    fg = summary["foreground_mean"]
    per_label = {summary["labels"][k]: v["dice"] for k, v in summary["mean"].items()}
    per_label_hd95 = {summary["labels"][k]: v["hd95"] for k, v in summary["mean"].items()}
    return MethodResult(method, float(fg["dice"]), float(fg["hd95"]), seconds, train_seconds, per_label,
                        per_label_hd95=per_label_hd95)


def segformer_setup(cfg: DemoConfig, env: Optional[dict] = None) -> Optional[str]:
    """If M&N runs and ``nnUNet_semisup_segformer`` is unset, save a tiny SegFormer into the demo folder, export
    the variable (this process, hence every subprocess) and return the note to print; else None."""
    env = os.environ if env is None else env
    if not any("MN" in m for m in cfg.methods) or env.get("nnUNet_semisup_segformer"):
        return None
    from nnunetv2_semisup.methods.mn.segformer import save_tiny_segformer
    folder = os.path.join(cfg.out, "tiny_segformer")
    shutil.rmtree(folder, ignore_errors=True)
    save_tiny_segformer(folder, num_labels=4, seed=cfg.seed)
    env["nnUNet_semisup_segformer"] = folder
    return OFFLINE_SEGFORMER_NOTE.format(folder=folder)


# ------------------------------------------------------------------------------------------------- output
def _fmt(x: float, digits: int) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def format_table(results: Sequence[MethodResult]) -> str:
    """Markdown-style table: method, trainer, mean foreground Dice, mean HD95 (mm), time taken."""
    header = ["method", "trainer (-tr)", "Dice (mean fg)", "HD95 mm (mean fg)", "train", "train+predict+eval"]
    rows = [[r.name, r.method, _fmt(r.dice, 3), _fmt(r.hd95, 2), format_seconds(r.train_seconds),
             format_seconds(r.seconds)] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


# ------------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_semisup_demo",
        description="Synthetic dataset -> stock nnU-Net planning/preprocessing -> unlabeled preprocessing -> "
                    "short training of stock nnU-Net (labeled only) and the semi-supervised trainers -> stock "
                    "nnUNetv2_predict -> Dice/HD95 table. Everything is written under --out; your own nnU-Net "
                    "folders are not used. Defaults take about 5 minutes on an idle 2-core CPU.")
    p.add_argument("--out", default="nnunetv2_semisup_demo",
                   help="working folder (nnUNet_raw/preprocessed/results, predictions, logs); "
                        "default ./nnunetv2_semisup_demo")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="training/inference device (default cpu)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="TRAINER",
                   help=f"trainers to run (default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"epochs per method (default {DEFAULT_EPOCHS})")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help=f"iterations per epoch (default {DEFAULT_ITERATIONS})")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic dataset and of the training runs (default 0)")
    p.add_argument("--labeled", type=int, default=DEFAULT_LABELED, help=f"labeled cases (default {DEFAULT_LABELED})")
    p.add_argument("--unlabeled", type=int, default=DEFAULT_UNLABELED,
                   help=f"unlabeled cases (default {DEFAULT_UNLABELED})")
    p.add_argument("--test", type=int, default=DEFAULT_TEST, help=f"test cases (default {DEFAULT_TEST})")
    p.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("Z", "Y", "X"),
                   help="synthetic volume shape (default %(default)s)")
    p.add_argument("--features", type=int, nargs="+", default=list(DEFAULT_FEATURES),
                   help="cap of the U-Net's features per stage after planning (default %(default)s); "
                        "--features 0 keeps nnU-Net's")
    p.add_argument("--patch", type=int, nargs=3, default=list(DEFAULT_PATCH), metavar=("Z", "Y", "X"),
                   help="cap of the planned patch size (default %(default)s); --patch 0 0 0 keeps nnU-Net's")
    args = p.parse_args(argv)
    for name in ("epochs", "iterations", "labeled", "test"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    unknown = [m for m in args.methods if not trainer_exists(m)]
    if unknown:
        p.error(f"--methods: unknown trainer(s) {', '.join(unknown)}; use a trainer of this package (e.g. "
                f"{', '.join(DEFAULT_METHODS)}) or of nnU-Net (e.g. nnUNetTrainer)")
    if args.unlabeled < 1 and any(m not in LABELED_ONLY for m in args.methods):
        p.error("--unlabeled must be >= 1 for the semi-supervised trainers")
    if args.features == [0]:
        args.features = None
    if args.patch == [0, 0, 0]:
        args.patch = None
    return args


def trainer_exists(name: str) -> bool:
    """A trainer class of this package or of nnU-Net with this name (what nnUNetv2_train would find)."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2_semisup import trainers as trainer_registry
    if isinstance(getattr(trainer_registry, name, None), type):
        return True
    folder = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
    return recursive_find_python_class(folder, name, "nnunetv2.training.nnUNetTrainer") is not None


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    return DemoConfig(out=os.path.abspath(args.out), device=args.device, methods=list(args.methods),
                      epochs=args.epochs, iterations=args.iterations, seed=args.seed, labeled=args.labeled,
                      unlabeled=args.unlabeled, test=args.test, shape=tuple(args.shape), features=args.features,
                      patch_size=args.patch)


def run_demo(cfg: DemoConfig, stream=None) -> List[MethodResult]:
    """Run every step; return one result per method (raises DemoStepError on the first failing step)."""
    stream = stream or sys.stdout
    prepare_out_folder(cfg.out)
    results: List[MethodResult] = []
    steps = dataset_steps(cfg)
    for m in cfg.methods:
        steps += method_steps(cfg, m, results)
    progress = Progress(len(steps), stream)
    progress.say(f"nnUNetv2_semisup demo in {cfg.out} (device {cfg.device}; logs in {cfg.logs})")
    note = segformer_setup(cfg)
    if note:
        progress.say(note)
    for what, fn in steps:
        progress.step(what, fn)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args)
    t0 = time.time()
    try:
        results = run_demo(cfg)
    except DemoStepError as e:
        print(f"\nnnUNetv2_semisup_demo stopped: {e}", file=sys.stderr)
        return 1
    print(f"\nResults on {cfg.test} synthetic test cases (mean over labels organ, organ2, lesion; "
          f"short schedule: {cfg.epochs} epochs x {cfg.iterations} iterations, {cfg.labeled} labeled + "
          f"{cfg.unlabeled} unlabeled cases):\n")
    print(format_table(results))
    if any("MN" in m for m in cfg.methods) and os.environ.get("nnUNet_semisup_segformer", "").startswith(cfg.out):
        print("\n(M&N ran with a small randomly initialised SegFormer, not the pretrained SegFormer-B2: its numbers "
              "are not representative.)")
    print(f"\nTotal time {format_seconds(time.time() - t0)}. Everything is in {cfg.out} "
          f"(per-case metrics: {os.path.join(cfg.out, 'evaluation')}).")
    print("A schedule this short shows that the pipeline works end to end; it does not rank the methods.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
