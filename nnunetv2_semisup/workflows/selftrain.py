"""Offline self-training with stock nnU-Net (``nnUNetv2_semisup_selftrain``): teacher -> filtered pseudo-labels ->
student, repeated for several rounds, the recipe of the FLARE22 winner (github:Ziyan-Huang/FLARE22), of the
AbdomenCT-1K noisy-student baseline and of ST++ (reliable cases first).

Every step runs stock nnU-Net (``nnUNetv2_train``, ``nnUNetv2_predict --save_probabilities``,
``nnUNetv2_extract_fingerprint``, ``nnUNetv2_move_plans_between_datasets`` or ``nnUNetv2_plan_experiment``,
``nnUNetv2_preprocess``); this module only decides what to run, scores and selects the pseudo-labels and writes the
student's raw dataset. Round r:

1. teacher: round 1 trains (or reuses) ``-tr/-p/-c/-f`` on the labeled cases of the source dataset; round r > 1 uses
   round r-1's final model;
2. pseudo-labels: every ``imagesUnlabeled/`` scan predicted with probabilities, one ``nnUNetv2_predict`` per fold
   (``-num_parts/-part_id`` let other machines write parts of it);
3. scores: per case the reliability scores of :mod:`reliability`, the hard pseudo-label (the argmax of the folds'
   mean probabilities, as ``nnUNetv2_ensemble`` computes it) and, with ``ignore_below``, the same label with
   unconfident voxels set to nnU-Net's ignore label; a CSV of every case, kept or dropped, and PNGs of the most and
   least reliable pseudo-labels;
4. student dataset: a new raw dataset (labeled cases + the kept pseudo-labeled cases; images hard-linked or
   copied) whose ``dataset.json`` records which cases are pseudo-labeled, by which teacher, with their scores;
5. student plans: the teacher's plans moved over (default: same network, data identical to the teacher's
   preprocessing) or a planner of the user's choice; stock preprocessing;
6. student training (and, optionally, fine-tuning on the labeled cases alone).

All state lives on disk (``<nnUNet_results>/<source dataset>/selftrain_<first student id>/``), so re-running the same
command continues where it stopped; a finished step is not redone. The test set is never read.
"""
import csv
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from nnunetv2_semisup.workflows import reliability
from nnunetv2_semisup.workflows.commands import command_line, run_command

STATE_FILE = "selftrain.json"
FINETUNE_TRAINER = "nnUNetTrainerSelfTrainFinetune"
EPOCH_LINE = r": Epoch \d+\s*$"
PREDICT_LINE = r"^Predicting "
# settings that change what is computed; the others (device, workers, parts, and the number of rounds: more rounds
# continue a finished run) may change between re-runs
RESULT_KEYS = ("source_dataset", "teacher", "first_student_id", "student_name", "student_trainer",
               "student_configuration", "student_planner", "student_plans", "student_folds", "keep", "score",
               "ignore_below", "finetune", "finetune_trainer", "disable_tta")


class SelfTrainError(RuntimeError):
    """Bad input or a failed step; the message names what is wrong and what to do."""


# ------------------------------------------------------------------------------------------------- folders
def nnunet_folder(kind: str) -> str:
    value = os.environ.get(kind)
    if not value:
        raise SelfTrainError(f"The environment variable {kind} is not set. Set nnU-Net's three folders first "
                             f"(export nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=...).")
    return value


def find_dataset_name(dataset_id: int, kinds=("nnUNet_raw",)) -> Optional[str]:
    """``DatasetXXX_Name`` of ``dataset_id`` in any of the folders ``kinds`` (None if absent)."""
    prefix = f"Dataset{int(dataset_id):03d}_"
    for kind in kinds:
        folder = nnunet_folder(kind)
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.startswith(prefix) and os.path.isdir(os.path.join(folder, name)):
                    return name
    return None


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def write_json_atomic(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=_json_default)
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


# ------------------------------------------------------------------------------------------------- models
@dataclass
class Model:
    """A (possibly not yet trained) nnU-Net model: dataset, trainer, plans, configuration and folds."""
    dataset: str
    trainer: str
    plans: str
    configuration: str
    folds: List[str]

    @property
    def folder(self) -> str:
        return os.path.join(nnunet_folder("nnUNet_results"), self.dataset,
                            f"{self.trainer}__{self.plans}__{self.configuration}")

    def fold_folder(self, fold: str) -> str:
        return os.path.join(self.folder, f"fold_{fold}")

    def final_checkpoint(self, fold: str) -> str:
        return os.path.join(self.fold_folder(fold), "checkpoint_final.pth")

    def is_trained(self) -> bool:
        return all(os.path.isfile(self.final_checkpoint(f)) for f in self.folds)

    @property
    def dataset_id(self) -> int:
        return int(self.dataset[len("Dataset"):len("Dataset") + 3])

    def describe(self) -> str:
        return (f"-d {self.dataset_id} -tr {self.trainer} -p {self.plans} -c {self.configuration} "
                f"-f {' '.join(self.folds)}")


@dataclass
class SelfTrainSettings:
    source_dataset: str                     # DatasetXXX_Name with imagesTr/labelsTr and imagesUnlabeled
    teacher: Model                          # round 1's teacher (on the source dataset)
    first_student_id: int                   # round r's student dataset gets id first_student_id + r - 1
    student_name: Optional[str] = None      # default: <source name>SelfTrain<r>
    student_trainer: str = "nnUNetTrainer"
    student_configuration: Optional[str] = None   # default: the teacher's
    student_planner: Optional[str] = None   # None: the teacher's plans are moved over
    student_plans: Optional[str] = None     # default: the teacher's plans name (moved), else "nnUNetPlans"
    student_folds: List[str] = field(default_factory=lambda: ["all"])
    rounds: int = 1
    keep: float = 1.0
    score: str = "confidence"
    ignore_below: Optional[float] = None
    finetune: bool = False
    finetune_trainer: str = FINETUNE_TRAINER
    disable_tta: bool = False
    device: str = "cuda"
    num_processes: int = 3                  # preprocessing / fingerprint / export workers
    num_parts: int = 1
    part_id: Optional[int] = None           # with num_parts > 1: predict only this part, then stop
    pictures: int = 3                       # PNGs of the most and of the least reliable pseudo-labels per round
    quiet: bool = False

    def __post_init__(self):
        self.student_configuration = self.student_configuration or self.teacher.configuration
        if self.student_plans is None:
            self.student_plans = self.teacher.plans if self.student_planner is None else "nnUNetPlans"

    # --- names -------------------------------------------------------------------------------------------------
    @property
    def source_name(self) -> str:
        return self.source_dataset.split("_", 1)[1]

    def student_dataset(self, r: int) -> str:
        name = self.student_name or f"{self.source_name}SelfTrain"
        return f"Dataset{self.first_student_id + r - 1:03d}_{name}{r}"

    def student(self, r: int) -> Model:
        return Model(self.student_dataset(r), self.student_trainer, self.student_plans,
                     self.student_configuration, list(self.student_folds))

    def finetuned(self, r: int) -> Model:
        return Model(self.student_dataset(r), self.finetune_trainer, self.student_plans,
                     self.student_configuration, ["all"])

    def final_model(self, r: int) -> Model:
        """What round r produces (and round r + 1 uses as its teacher)."""
        return self.finetuned(r) if self.finetune else self.student(r)

    def teacher_of(self, r: int) -> Model:
        return self.teacher if r == 1 else self.final_model(r - 1)

    @property
    def work(self) -> str:
        return os.path.join(nnunet_folder("nnUNet_results"), self.source_dataset,
                            f"selftrain_{self.first_student_id:03d}")

    def round_folder(self, r: int) -> str:
        return os.path.join(self.work, f"round_{r}")

    def record(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: d[k] for k in RESULT_KEYS}


# ------------------------------------------------------------------------------------------------- checks
def _labels_without_ignore(dataset_json: dict) -> dict:
    return {k: v for k, v in dataset_json["labels"].items() if k != "ignore"}


def check_teacher_matches(model: Model, dataset_json: dict) -> None:
    """Refuse a trained (or partly trained) teacher whose files say it was trained on another dataset."""
    plans_file = os.path.join(model.folder, "plans.json")
    ds_file = os.path.join(model.folder, "dataset.json")
    if not os.path.isfile(plans_file):
        return
    plans = read_json(plans_file)
    if plans.get("dataset_name") != model.dataset:
        raise SelfTrainError(
            f"The teacher in {model.folder} was trained on {plans.get('dataset_name')}, not on {model.dataset} "
            f"(its plans.json says so): its pseudo-labels would not mean this dataset's labels. Train a teacher on "
            f"{model.dataset} (remove or rename that folder and run again) or name another one with -tr/-p/-c.")
    current = os.path.join(nnunet_folder("nnUNet_preprocessed"), model.dataset, model.plans + ".json")
    if os.path.isfile(current):
        from nnunetv2_semisup.data.preprocess_unlabeled import PREPROCESSING_KEYS
        now = read_json(current)["configurations"].get(model.configuration, {})
        then = plans["configurations"].get(model.configuration, {})
        differ = [k for k in PREPROCESSING_KEYS if k in now and now.get(k) != then.get(k)]
        if differ:
            raise SelfTrainError(
                f"The teacher in {model.folder} was trained with other plans than {current} now holds (configuration "
                f"'{model.configuration}' differs in {', '.join(differ)}): the dataset was re-planned after it was "
                f"trained. Retrain the teacher (remove that folder) or restore the plans it was trained with.")
    if os.path.isfile(ds_file):
        trained = read_json(ds_file)
        for key, what in (("labels", "labels"), ("channel_names", "channels")):
            a = trained.get(key) if key != "labels" else _labels_without_ignore(trained)
            b = dataset_json.get(key) if key != "labels" else _labels_without_ignore(dataset_json)
            if a != b:
                raise SelfTrainError(
                    f"The teacher in {model.folder} was trained with {what} {a}, but {model.dataset}'s dataset.json "
                    f"now declares {b}. Retrain the teacher (remove that folder) or restore dataset.json.")


def check_student_ids(settings: SelfTrainSettings) -> None:
    """Every student dataset id must be free, or hold a dataset this very run made (then the run resumes)."""
    for r in range(1, settings.rounds + 1):
        dataset_id = settings.first_student_id + r - 1
        wanted = settings.student_dataset(r)
        for kind in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            existing = find_dataset_name(dataset_id, (kind,))
            if existing is None:
                continue
            if existing == settings.source_dataset:
                raise SelfTrainError(f"-o {settings.first_student_id}: round {r}'s student would get dataset id "
                                     f"{dataset_id}, the source dataset's. Choose a free id.")
            if existing != wanted or not _made_by_this_run(settings, r):
                raise SelfTrainError(
                    f"Dataset id {dataset_id} is taken: {os.path.join(nnunet_folder(kind), existing)} exists and was "
                    f"not made by this self-training run. Round {r}'s student needs a free id: choose another "
                    f"-o (round r uses -o + r - 1), or remove that dataset.")


def _made_by_this_run(settings: SelfTrainSettings, r: int) -> bool:
    state_file = os.path.join(settings.work, STATE_FILE)
    if not os.path.isfile(state_file):
        return False
    return settings.student_dataset(r) in read_json(state_file).get("student_datasets", [])


def _trainer_class(name: str):
    """The trainer class nnU-Net would use for ``-tr name`` (None if no such trainer exists): its own lookup, in its
    trainer folder and then in the folder nnUNet_extTrainer points at for ours."""
    import warnings
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2_semisup.trainer_dir import TRAINER_DIR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name,
                                          "nnunetv2.training.nnUNetTrainer")
        if cls is None:
            cls = recursive_find_python_class(TRAINER_DIR, name, "nnunetv2_semisup.nnunet_ext")
    return cls


def check_settings(settings: SelfTrainSettings, unlabeled: Dict[str, List[str]], dataset_json: dict,
                   num_labeled: int) -> None:
    """Everything that can be refused before anything is written."""
    from nnunetv2_semisup.training.semisup_base import nnUNetTrainerSemiSup
    from nnunetv2_semisup.trainer_dir import ext_trainer_env_problem
    if not 0 < settings.keep <= 1:
        raise SelfTrainError(f"--keep {settings.keep}: the share of pseudo-labeled cases to keep must be in (0, 1].")
    if settings.score not in reliability.SCORES:
        raise SelfTrainError(f"--score {settings.score}: choose one of {sorted(reliability.SCORES)}.")
    if settings.score == "disagreement" and len(settings.teacher.folds) < 2:
        raise SelfTrainError("--score disagreement compares the folds of the teacher: give several (-f 0 1 2 3 4).")
    if settings.score == "round_variance" and settings.rounds < 2:
        raise SelfTrainError("--score round_variance (FLARE22's filter) compares the pseudo-labels of consecutive "
                             "rounds: use --rounds 2 or more.")
    if settings.ignore_below is not None and not 0 < settings.ignore_below < 1:
        raise SelfTrainError(f"--ignore-below {settings.ignore_below}: a probability threshold in (0, 1).")
    if settings.rounds < 1:
        raise SelfTrainError("--rounds must be >= 1.")
    if settings.num_parts < 1 or (settings.part_id is not None and not 0 <= settings.part_id < settings.num_parts):
        raise SelfTrainError(f"--part-id {settings.part_id} --num-parts {settings.num_parts}: need 0 <= part-id < "
                             f"num-parts.")
    if not 1 <= settings.first_student_id <= 999:
        raise SelfTrainError(f"-o {settings.first_student_id}: nnU-Net dataset ids run from 1 to 999.")
    if settings.first_student_id + settings.rounds - 1 > 999:
        raise SelfTrainError(f"-o {settings.first_student_id} with --rounds {settings.rounds} needs ids up to "
                             f"{settings.first_student_id + settings.rounds - 1}; nnU-Net's ids end at 999.")
    if dataset_json.get("regions_class_order") is not None or any(
            isinstance(v, (list, tuple)) for v in dataset_json["labels"].values()):
        raise SelfTrainError(f"{settings.source_dataset} is region-based; self-training here writes label maps "
                             f"from softmax probabilities and supports label-based datasets only.")
    if "ignore" in dataset_json["labels"]:
        raise SelfTrainError(f"{settings.source_dataset} already has an ignore label; self-training adds its own for "
                             f"unconfident voxels and supports datasets without one only.")
    if not unlabeled:
        raise SelfTrainError(f"{settings.source_dataset} has no unlabeled scans.")
    folds_5 = [f for f in settings.teacher.folds if f != "all"]
    splits = os.path.join(nnunet_folder("nnUNet_preprocessed"), settings.source_dataset, "splits_final.json")
    if folds_5 and num_labeled < 5 and not os.path.isfile(splits):
        raise SelfTrainError(f"-f {' '.join(settings.teacher.folds)}: nnU-Net's 5-fold split needs at least 5 "
                             f"labeled cases ({settings.source_dataset} has {num_labeled}). Train -f all, or provide "
                             f"{splits}.")
    for what, name in (("teacher trainer (-tr)", settings.teacher.trainer),
                       ("student trainer (--student-trainer)", settings.student_trainer)) + (
            (("fine-tuning trainer (--finetune-trainer)", settings.finetune_trainer),) if settings.finetune else ()):
        cls = _trainer_class(name)
        if cls is None:
            raise SelfTrainError(f"The {what} {name} does not exist in nnU-Net or nnunetv2_semisup.")
        if cls.__module__.startswith("nnunetv2_semisup") and ext_trainer_env_problem():
            raise SelfTrainError(ext_trainer_env_problem())
        if name != settings.teacher.trainer and issubclass(cls, nnUNetTrainerSemiSup):
            raise SelfTrainError(f"The {what} {name} is a semi-supervised trainer, but the student's dataset has no "
                                 f"unlabeled scans (its pseudo-labeled cases are labeled): use a supervised trainer "
                                 f"such as nnUNetTrainer.")
    check_teacher_matches(settings.teacher, dataset_json)
    check_student_ids(settings)


def check_state(settings: SelfTrainSettings) -> None:
    """A work folder left by an earlier run must have been made with the same settings."""
    state_file = os.path.join(settings.work, STATE_FILE)
    if not os.path.isfile(state_file):
        return
    saved = read_json(state_file).get("settings", {})
    now = json.loads(json.dumps(settings.record(), default=_json_default))
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differ:
        detail = "; ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in differ)
        raise SelfTrainError(
            f"{settings.work} holds a self-training run made with other settings ({detail}). Re-run with the same "
            f"settings to continue it, choose another -o for a new run, or add --overwrite to delete that run "
            f"(its work folder and its student datasets) and start again.")


def overwrite_run(settings: SelfTrainSettings, say: Callable[[str], None]) -> None:
    """Delete the work folder and the student datasets this run made (never anything else)."""
    state_file = os.path.join(settings.work, STATE_FILE)
    ours = read_json(state_file).get("student_datasets", []) if os.path.isfile(state_file) else []
    for dataset in ours:
        for kind in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            folder = os.path.join(nnunet_folder(kind), dataset)
            if os.path.isdir(folder):
                say(f"--overwrite: deleting {folder}")
                shutil.rmtree(folder)
    if os.path.isdir(settings.work):
        say(f"--overwrite: deleting {settings.work}")
        shutil.rmtree(settings.work)


# ------------------------------------------------------------------------------------------------- the run
class Runner:
    """Runs the rounds; one line per step on ``stream``, the stock commands' output in ``<work>/logs/``."""

    def __init__(self, settings: SelfTrainSettings, stream=None):
        self.s = settings
        self.stream = stream or sys.stdout
        self.t0 = time.time()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        raw = nnunet_folder("nnUNet_raw")
        self.source_raw = os.path.join(raw, settings.source_dataset)
        self.dataset_json = read_json(os.path.join(self.source_raw, "dataset.json"))
        self.file_ending = self.dataset_json["file_ending"]

    # --- output -------------------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def step(self, r: int, what: str, done: bool = False) -> None:
        elapsed = int(time.time() - self.t0)
        self.say(f"[round {r}/{self.s.rounds}] {what}" + (" ... already done" if done else "")
                 + f" ({elapsed // 60}:{elapsed % 60:02d})")

    def run(self, r: int, args: Sequence, log_name: str, what: str, pattern: Optional[str] = None,
            total: Optional[int] = None) -> None:
        log = os.path.join(self.s.work, "logs", f"round_{r}_{log_name}.log")
        self.step(r, f"{what}: {command_line(args)}  (log: {log})")
        run_command(args, self.env, log, progress_pattern=pattern, progress_total=total,
                    progress_desc=what, quiet=self.s.quiet)

    # --- state --------------------------------------------------------------------------------------------------
    def state(self) -> dict:
        path = os.path.join(self.s.work, STATE_FILE)
        return read_json(path) if os.path.isfile(path) else {}

    def update_state(self, **kw) -> None:
        state = self.state()
        state.update(kw)
        write_json_atomic(os.path.join(self.s.work, STATE_FILE), state)

    def mark_done(self, key: str) -> None:
        state = self.state()
        state.setdefault("done", [])
        if key not in state["done"]:
            state["done"].append(key)
        write_json_atomic(os.path.join(self.s.work, STATE_FILE), state)

    def is_done(self, key: str) -> bool:
        return key in self.state().get("done", [])

    def stop_point(self, r: int, step: str) -> None:
        """``nnUNet_semisup_selftrain_stop_after=STEP`` (or ``STEP@ROUND``) ends the command after that step as if
        it had been killed, to try resuming (like ``nnUNet_semisup_short_stop_after`` for the trainers)."""
        wanted = os.environ.get("nnUNet_semisup_selftrain_stop_after", "")
        if wanted in (step, f"{step}@{r}"):
            raise SelfTrainError(f"stopped after step '{step}' of round {r} (nnUNet_semisup_selftrain_stop_after); "
                                 f"run the command again to continue")

    # --- steps --------------------------------------------------------------------------------------------------
    def ensure_teacher_data(self) -> None:
        """Plan and preprocess the source dataset for the teacher if that was never done (stock nnU-Net)."""
        t = self.s.teacher
        pp = os.path.join(nnunet_folder("nnUNet_preprocessed"), t.dataset)
        plans_file = os.path.join(pp, t.plans + ".json")
        if t.is_trained():
            return
        if not os.path.isfile(plans_file):
            if t.plans != "nnUNetPlans":
                raise SelfTrainError(f"{plans_file} does not exist: plan {t.dataset} with the planner of "
                                     f"{t.plans} first (nnUNetv2_plan_experiment -d {t.dataset_id} -pl PLANNER), "
                                     f"then run this command again.")
            self.run(1, ["nnUNetv2_plan_and_preprocess", "-d", t.dataset_id, "-c", t.configuration,
                         "--verify_dataset_integrity", "-np", self.s.num_processes],
                     "plan_and_preprocess_source", "plan and preprocess the labeled cases")
        plans = read_json(plans_file)
        if t.configuration not in plans["configurations"]:
            raise SelfTrainError(f"-c {t.configuration} is not a configuration of {plans_file} "
                                 f"({sorted(plans['configurations'])}).")
        ident = plans["configurations"][t.configuration].get("data_identifier")
        data = os.path.join(pp, ident) if ident else None
        if data and not (os.path.isdir(data) and os.listdir(data)):
            self.run(1, ["nnUNetv2_preprocess", "-d", t.dataset_id, "-plans_name", t.plans, "-c", t.configuration,
                         "-np", self.s.num_processes], "preprocess_source", "preprocess the labeled cases")
        from nnunetv2_semisup.training.semisup_base import nnUNetTrainerSemiSup
        if issubclass(_trainer_class(t.trainer), nnUNetTrainerSemiSup):
            self.run(1, ["nnUNetv2_semisup_preprocess", "-d", t.dataset_id, "-c", t.configuration, "-p", t.plans,
                         "-np", self.s.num_processes, "--quiet"], "semisup_preprocess_source",
                     "preprocess the unlabeled scans for the semi-supervised teacher")

    def train(self, r: int, model: Model, role: str, extra: Sequence = ()) -> None:
        for fold in model.folds:
            if os.path.isfile(model.final_checkpoint(fold)):
                self.step(r, f"train the {role} ({model.describe()}), fold {fold}", done=True)
                continue
            resume = os.path.isfile(os.path.join(model.fold_folder(fold), "checkpoint_latest.pth"))
            args = ["nnUNetv2_train", model.dataset_id, model.configuration, fold, "-tr", model.trainer,
                    "-p", model.plans, "-device", self.s.device] + (["--c"] if resume else list(extra))
            self.run(r, args, re.sub(r"\W+", "_", f"train {role} fold {fold}").strip("_"),
                     f"{'resume' if resume else 'train'} the {role}, fold {fold}", EPOCH_LINE)
            if not os.path.isfile(model.final_checkpoint(fold)):
                raise SelfTrainError(f"nnUNetv2_train ended without writing {model.final_checkpoint(fold)} (stopped "
                                     f"early?). Run this command again to continue the training with --c.")

    def predict(self, r: int, teacher: Model, cases: Dict[str, List[str]]) -> bool:
        """Stock predictions with probabilities of every unlabeled scan, one folder per fold. Returns False when
        only one part was asked for (``--part-id``) and other parts are still missing."""
        all_there = True
        for fold in teacher.folds:
            out = os.path.join(self.s.round_folder(r), "predictions", f"fold_{fold}")
            missing = [c for c in cases if not self._prediction_complete(out, c)]
            if not missing:
                self.step(r, f"pseudo-labels of {len(cases)} unlabeled scans, fold {fold}", done=True)
                continue
            args = ["nnUNetv2_predict", "-i", os.path.join(self.source_raw, "imagesUnlabeled"), "-o", out,
                    "-d", teacher.dataset_id, "-tr", teacher.trainer, "-p", teacher.plans, "-c", teacher.configuration,
                    "-f", fold, "--save_probabilities", "--continue_prediction", "-device", self.s.device]
            if self.s.disable_tta:
                args.append("--disable_tta")
            if self.s.part_id is not None:
                args += ["-num_parts", self.s.num_parts, "-part_id", self.s.part_id]
            total = len(missing) if self.s.part_id is None else None
            self.run(r, args, f"predict_fold_{fold}" + (f"_part{self.s.part_id}" if self.s.part_id is not None
                                                         else ""),
                     f"pseudo-labels: predict {len(missing)} unlabeled scans with probabilities, fold {fold}"
                     + (f", part {self.s.part_id} of {self.s.num_parts}" if self.s.part_id is not None else ""),
                     PREDICT_LINE, total)
            still = [c for c in cases if not self._prediction_complete(out, c)]
            if still:
                all_there = False
                if self.s.part_id is None:
                    raise SelfTrainError(f"nnUNetv2_predict ended without predicting {len(still)} case(s) into {out} "
                                         f"(e.g. {still[:3]}); see its log above.")
        return all_there

    def _prediction_complete(self, folder: str, case: str) -> bool:
        return all(os.path.isfile(os.path.join(folder, case + ext)) for ext in (self.file_ending, ".npz", ".pkl"))

    def score(self, r: int, teacher: Model, cases: Dict[str, List[str]]) -> Dict[str, dict]:
        """Scores, hard pseudo-labels and (with ``ignore_below``) ignore-marked labels of every case; cached per case
        in ``round_r/scores/<case>.json`` so an interrupted pass continues."""
        from batchgenerators.utilities.file_and_folder_operations import load_pickle

        from nnunetv2_semisup.progress import progress
        rf = self.s.round_folder(r)
        for sub in ("scores", "pseudo_labels", "student_labels"):
            os.makedirs(os.path.join(rf, sub), exist_ok=True)
        rw = self._reader_writer(next(iter(cases.values()))[0])
        ignore_label = self._ignore_label()
        todo = [c for c in cases if not os.path.isfile(os.path.join(rf, "scores", c + ".json"))]
        self.step(r, f"score the pseudo-labels of {len(cases)} scans (score '{self.s.score}'"
                  + (f", voxels below {self.s.ignore_below} ignored" if self.s.ignore_below is not None else "")
                  + ")", done=not todo)
        for case in progress(todo, desc="scores", quiet=self.s.quiet):
            probs, props = [], None
            for fold in teacher.folds:
                pred = os.path.join(rf, "predictions", f"fold_{fold}")
                try:
                    with np.load(os.path.join(pred, case + ".npz")) as f:
                        probs.append(f["probabilities"].astype(np.float32))
                    props = load_pickle(os.path.join(pred, case + ".pkl"))
                except Exception as e:  # a prediction damaged by an interruption: delete it, predict it again
                    for ext in (self.file_ending, ".npz", ".pkl"):
                        if os.path.isfile(os.path.join(pred, case + ext)):
                            os.remove(os.path.join(pred, case + ext))
                    raise SelfTrainError(f"The prediction of {case} in {pred} cannot be read ({e}); it was deleted. "
                                         f"Run this command again to predict it anew.") from e
            scores = reliability.case_scores(probs)
            mean = probs[0] if len(probs) == 1 else np.mean(probs, axis=0)
            labels = reliability.hard_labels(mean).astype(np.uint8 if mean.shape[0] < 256 else np.int16)
            if r > 1 and self.s.score == "round_variance":
                earlier = [self._read_seg(rw, os.path.join(self.s.round_folder(k), "pseudo_labels",
                                                          case + self.file_ending)) for k in range(1, r)]
                scores["round_variance"] = reliability.round_variance(earlier + [labels])
            else:
                scores["round_variance"] = math.nan
            student = labels
            scores["ignored_share"] = 0.0
            if self.s.ignore_below is not None:
                conf = reliability.voxel_confidence(mean)
                student = reliability.mark_unconfident(labels, conf, self.s.ignore_below, ignore_label)
                scores["ignored_share"] = float(np.mean(student == ignore_label))
            self._write_seg(rw, labels, os.path.join(rf, "pseudo_labels", case + self.file_ending), props)
            self._write_seg(rw, student, os.path.join(rf, "student_labels", case + self.file_ending), props)
            write_json_atomic(os.path.join(rf, "scores", case + ".json"), scores)
        return {c: read_json(os.path.join(rf, "scores", c + ".json")) for c in cases}

    def select(self, r: int, scores: Dict[str, dict]) -> List[str]:
        """The kept cases; writes ``round_r/pseudo_labels.csv`` (every case, kept or dropped) and the PNGs."""
        rf = self.s.round_folder(r)
        csv_file = os.path.join(rf, "pseudo_labels.csv")
        if self.s.score == "round_variance" and r == 1:
            kept = reliability.reliability_order(scores, "confidence")   # FLARE22: every case in the first rounds
            rule = "round 1 keeps every case (FLARE22: the cross-round filter needs two rounds)"
        else:
            kept = reliability.select_reliable(scores, self.s.score, self.s.keep)
            rule = f"the {self.s.keep:g} most reliable by '{self.s.score}'"
        order = reliability.reliability_order(scores, self.s.score if not (r == 1 and self.s.score ==
                                                                             "round_variance") else "confidence")
        if not os.path.isfile(csv_file):
            columns = ["case", "rank", "kept", "confidence", "entropy", "disagreement", "round_variance",
                       "foreground_voxels", "ignored_share"]
            tmp = csv_file + ".tmp"
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(columns)
                for rank, case in enumerate(order, 1):
                    sc = scores[case]
                    w.writerow([case, rank, int(case in kept)] + [_fmt(sc.get(k)) for k in columns[3:]])
            os.replace(tmp, csv_file)
            self.write_pictures(r, order)
        self.step(r, f"keep {len(kept)} of {len(scores)} pseudo-labeled scans: {rule} (every case with its scores: "
                  f"{csv_file})")
        return kept

    def write_pictures(self, r: int, order: List[str]) -> None:
        """PNGs of the most and least reliable pseudo-labels: image | pseudo-label (| voxels marked ignore), one row
        per structure on the slice where it is largest (the pictures of ``nnUNetv2_semisup_evaluate --png``)."""
        from nnunetv2_semisup.evaluation.pictures import write_png
        n = min(self.s.pictures, len(order))
        if n <= 0:
            return
        rf = self.s.round_folder(r)
        rw = None
        picks = [("most_reliable", i, c) for i, c in enumerate(order[:n], 1)] + \
                [("least_reliable", i, c) for i, c in enumerate(reversed(order[-n:]), 1)]
        for tag, i, case in picks:
            images = [os.path.join(self.source_raw, "imagesUnlabeled", f"{case}_0000{self.file_ending}")]
            rw = rw or self._reader_writer(images[0])
            image = rw.read_images(images)[0][0]
            labels = self._read_seg(rw, os.path.join(rf, "pseudo_labels", case + self.file_ending))
            maps = [None, labels]
            if self.s.ignore_below is not None:
                student = self._read_seg(rw, os.path.join(rf, "student_labels", case + self.file_ending))
                maps.append((student == self._ignore_label()).astype(np.uint8))
            write_png(os.path.join(rf, "png", f"{tag}_{i}_{case}.png"), image, maps)

    def build_student_dataset(self, r: int, kept: List[str], scores: Dict[str, dict], teacher: Model,
                              cases: Dict[str, List[str]]) -> None:
        """The student's raw dataset: labeled cases + kept pseudo-labeled cases, written into a temporary folder
        and moved into place at the end (an interruption leaves nothing half-written)."""
        dataset = self.s.student_dataset(r)
        raw = nnunet_folder("nnUNet_raw")
        target = os.path.join(raw, dataset)
        if os.path.isfile(os.path.join(target, "dataset.json")):
            self.step(r, f"student dataset {target}", done=True)
            return
        self.step(r, f"student dataset {target}: {len(self.labeled_cases())} labeled + {len(kept)} pseudo-labeled "
                     f"cases")
        self.update_state(student_datasets=sorted(set(self.state().get("student_datasets", []) + [dataset])))
        tmp = os.path.join(raw, f".{dataset}.selftrain_tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)   # a folder without dataset.json is a leftover of this run
        for sub in ("imagesTr", "labelsTr"):
            os.makedirs(os.path.join(tmp, sub))
        labeled = self.labeled_cases()
        for case, files in labeled.items():
            for src in files["images"]:
                _link_or_copy(src, os.path.join(tmp, "imagesTr", os.path.basename(src)))
            _link_or_copy(files["label"], os.path.join(tmp, "labelsTr", case + self.file_ending))
        rf = self.s.round_folder(r)
        for case in kept:
            for src in cases[case]:
                _link_or_copy(src, os.path.join(tmp, "imagesTr", os.path.basename(src)))
            shutil.copy2(os.path.join(rf, "student_labels", case + self.file_ending),
                         os.path.join(tmp, "labelsTr", case + self.file_ending))
        ds = {k: v for k, v in self.dataset_json.items() if k not in ("semisup", "numTraining", "name")}
        ds["name"] = dataset.split("_", 1)[1]
        ds["numTraining"] = len(labeled) + len(kept)
        if self.s.ignore_below is not None:
            ds["labels"] = dict(ds["labels"], ignore=self._ignore_label())
        ds["semisup"] = {
            "selftrain": {
                "source_dataset": self.s.source_dataset, "round": r,
                "teacher": dataclasses.asdict(teacher),
                "labeled_cases": sorted(labeled),
                "pseudo_labeled_cases": {c: {k: _finite_or_none(v) for k, v in scores[c].items()} for c in kept},
                "dropped_cases": sorted(set(scores) - set(kept)),
                "score": self.s.score, "keep": self.s.keep, "ignore_below": self.s.ignore_below,
                "scores_csv": os.path.join(rf, "pseudo_labels.csv"),
                "work_folder": self.s.work,
            }}
        write_json_atomic(os.path.join(tmp, "dataset.json"), ds)
        os.replace(tmp, target)

    def prepare_student(self, r: int, teacher: Model) -> None:
        """Fingerprint (with nnU-Net's integrity check), plans (moved from the teacher, or planned anew) and
        preprocessing of the student dataset, all stock nnU-Net."""
        key = f"round_{r}/student_preprocessed"
        student = self.s.student(r)
        if self.is_done(key):
            self.step(r, f"plan and preprocess {student.dataset}", done=True)
            return
        sid = student.dataset_id
        self.run(r, ["nnUNetv2_extract_fingerprint", "-d", sid, "--verify_dataset_integrity", "--clean",
                     "-np", self.s.num_processes], "fingerprint", "student: fingerprint and integrity check")
        if self.s.student_planner is None:
            self.run(r, ["nnUNetv2_move_plans_between_datasets", "-s", teacher.dataset_id, "-t", sid,
                         "-sp", teacher.plans, "-tp", self.s.student_plans], "plans",
                     "student: the teacher's plans (same network and preprocessing)")
            # nnU-Net's planners copy dataset.json next to the plans (preprocessing reads it there); moving plans
            # does not
            shutil.copy(os.path.join(nnunet_folder("nnUNet_raw"), student.dataset, "dataset.json"),
                        os.path.join(nnunet_folder("nnUNet_preprocessed"), student.dataset, "dataset.json"))
        else:
            self.run(r, ["nnUNetv2_plan_experiment", "-d", sid, "-pl", self.s.student_planner,
                         "-overwrite_plans_name", self.s.student_plans], "plans",
                     f"student: plans of {self.s.student_planner}")
        plans = read_json(os.path.join(nnunet_folder("nnUNet_preprocessed"), student.dataset,
                                       self.s.student_plans + ".json"))
        if student.configuration not in plans["configurations"]:
            raise SelfTrainError(f"--student-configuration {student.configuration} is not in the student's plans "
                                 f"({sorted(plans['configurations'])}).")
        self.run(r, ["nnUNetv2_preprocess", "-d", sid, "-plans_name", self.s.student_plans, "-c",
                     student.configuration, "-np", self.s.num_processes], "preprocess", "student: preprocess")
        self.mark_done(key)

    def finetune(self, r: int) -> None:
        student, tuned = self.s.student(r), self.s.finetuned(r)
        weights = student.final_checkpoint(student.folds[0])
        self.train(r, tuned, "fine-tuned student (labeled cases only)", extra=["-pretrained_weights", weights])

    # --- helpers ------------------------------------------------------------------------------------------------
    def labeled_cases(self) -> Dict[str, dict]:
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
        return get_filenames_of_train_images_and_targets(self.source_raw, self.dataset_json)

    def _ignore_label(self) -> int:
        return max(int(v) for v in _labels_without_ignore(self.dataset_json).values()) + 1

    def _reader_writer(self, example_file: str):
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
        return determine_reader_writer_from_dataset_json(self.dataset_json, example_file, verbose=False)()

    @staticmethod
    def _read_seg(rw, path: str) -> np.ndarray:
        return rw.read_seg(path)[0][0]

    def _write_seg(self, rw, seg: np.ndarray, path: str, props: dict) -> None:
        tmp = os.path.join(os.path.dirname(path), ".tmp_" + os.path.basename(path))
        rw.write_seg(seg, tmp, props)
        os.replace(tmp, path)

    # --- all rounds ---------------------------------------------------------------------------------------------
    def run_all(self) -> Optional[Model]:
        from nnunetv2_semisup.data.unlabeled_raw import find_unlabeled_cases
        cases = find_unlabeled_cases(self.source_raw, self.dataset_json)
        os.makedirs(self.s.work, exist_ok=True)
        if not os.path.isfile(os.path.join(self.s.work, STATE_FILE)):
            self.update_state(settings=self.s.record(), student_datasets=[])
        self.say(f"Self-training on {self.s.source_dataset}: {len(self.labeled_cases())} labeled, {len(cases)} "
                 f"unlabeled scans, {self.s.rounds} round(s); work folder {self.s.work}")
        self.ensure_teacher_data()
        for r in range(1, self.s.rounds + 1):
            teacher = self.s.teacher_of(r)
            if r == 1:
                self.train(r, teacher, "teacher")
                self.stop_point(r, "teacher")
            if not self.predict(r, teacher, cases):
                self.say(f"Part {self.s.part_id} of {self.s.num_parts} of round {r}'s pseudo-labels is written. "
                         f"Run the other parts (here or elsewhere; copy their files into "
                         f"{os.path.join(self.s.round_folder(r), 'predictions')}), then run this command without "
                         f"--part-id to continue.")
                return None
            self.stop_point(r, "predict")
            scores = self.score(r, teacher, cases)
            self.stop_point(r, "score")
            kept = self.select(r, scores)
            self.build_student_dataset(r, kept, scores, teacher, cases)
            self.stop_point(r, "student_dataset")
            self.prepare_student(r, teacher)
            self.stop_point(r, "student_preprocess")
            self.train(r, self.s.student(r), "student")
            if self.s.finetune:
                self.finetune(r)
        final = self.s.final_model(self.s.rounds)
        self.update_state(final_model=dataclasses.asdict(final), finished=True)
        self.say(f"Done in {int(time.time() - self.t0) // 60} min. The final model predicts with stock nnU-Net:\n"
                 f"  nnUNetv2_predict -i INPUT -o OUTPUT -d {final.dataset_id} -c {final.configuration} "
                 f"-tr {final.trainer} -p {final.plans} -f {' '.join(final.folds)}")
        return final


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (no extra disk space; the source stays untouched) or, across file systems, a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def source_dataset_name(dataset: str) -> str:
    """``DatasetXXX_Name`` for an id or a name given on the command line."""
    if re.fullmatch(r"\d+", str(dataset)):
        name = find_dataset_name(int(dataset))
        if name is None:
            raise SelfTrainError(f"-d {dataset}: no Dataset{int(dataset):03d}_* in nnUNet_raw "
                                 f"({nnunet_folder('nnUNet_raw')}).")
        return name
    if not os.path.isdir(os.path.join(nnunet_folder("nnUNet_raw"), str(dataset))):
        raise SelfTrainError(f"-d {dataset}: no such dataset in nnUNet_raw ({nnunet_folder('nnUNet_raw')}).")
    return str(dataset)
