"""Shared fixtures: nnU-Net environment in temporary folders, and one small synthetic dataset that is planned
and preprocessed (labeled + unlabeled) through the real CLI once per test session, with tiny network plans.

Method tests reuse ``planned_dataset``; each trainer writes to its own results folder, so tests do not
interfere. Subprocesses get the environment from ``nnunet_env``.
"""
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_SemiSupSynthetic"
SHAPE = (16, 32, 32)
TINY_FEATURES = [8, 16, 32, 32, 32, 32]


def bin_path(name: str) -> str:
    """Console script installed next to the running interpreter."""
    return os.path.join(os.path.dirname(sys.executable), name)


def run_cli(args, env, timeout=900, expect_ok=True):
    """Run an installed console command; on failure show its output."""
    cmd = [bin_path(args[0])] + [str(a) for a in args[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout[-6000:]}\n"
                             f"STDERR:\n{proc.stderr[-6000:]}")
    return proc


@dataclass
class PlannedDataset:
    dataset_id: int
    name: str
    raw: str
    preprocessed: str
    results: str
    env: dict

    @property
    def raw_folder(self):
        return os.path.join(self.raw, self.name)

    @property
    def preprocessed_folder(self):
        return os.path.join(self.preprocessed, self.name)


@pytest.fixture(scope="session")
def nnunet_env(tmp_path_factory):
    """nnU-Net variables pointing at fresh temporary folders (also exported to this process)."""
    base = tmp_path_factory.mktemp("nnunet")
    from nnunetv2_semisup.trainer_dir import TRAINER_DIR
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(base / "raw"), "nnUNet_preprocessed": str(base / "preprocessed"),
        "nnUNet_results": str(base / "results"), "nnUNet_extTrainer": TRAINER_DIR,
        "nnUNet_n_proc_DA": "0",  # single-threaded augmentation (training only; planning breaks with 0)
        "nnUNet_def_n_proc": "1", "nnUNet_compile": "0", "OMP_NUM_THREADS": "2",
        # *_short trainers skip nnU-Net's final validation in subprocesses (test_core_e2e runs it once)
        "nnUNet_semisup_short_skip_validation": "1",
    })
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[k], exist_ok=True)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA",
              "nnUNet_def_n_proc", "nnUNet_compile"):
        os.environ[k] = env[k]
    return env


def shrink_plans(plans_file: str, features=TINY_FEATURES) -> None:
    """Make the planned U-Nets tiny (features per stage) so CPU training takes seconds; data are unchanged."""
    with open(plans_file) as f:
        plans = json.load(f)
    for conf in plans["configurations"].values():
        arch = conf.get("architecture", {}).get("arch_kwargs")
        if arch is not None:
            arch["features_per_stage"] = features[: arch["n_stages"]]
    with open(plans_file, "w") as f:
        json.dump(plans, f, indent=2)


def copy_planned_dataset(ds: PlannedDataset, dataset_id: int, name: str):
    """Raw and preprocessed copy of ``ds`` as Dataset<dataset_id>_<name> (for tests that break or resume data);
    returns (raw folder, preprocessed folder)."""
    import shutil
    full = f"Dataset{dataset_id}_{name}"
    raw, pp = os.path.join(ds.raw, full), os.path.join(ds.preprocessed, full)
    for d in (raw, pp, os.path.join(ds.results, full)):
        shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(ds.raw_folder, raw)
    shutil.copytree(ds.preprocessed_folder, pp)
    plans_file = os.path.join(pp, "nnUNetPlans.json")
    with open(plans_file) as f:
        plans = json.load(f)
    plans["dataset_name"] = full
    with open(plans_file, "w") as f:
        json.dump(plans, f, indent=2)
    return raw, pp


@pytest.fixture(scope="session")
def planned_dataset(nnunet_env) -> PlannedDataset:
    """Synthetic dataset 990 (4 labeled, 6 unlabeled, 3 test; 16x32x32): planned and preprocessed by stock
    nnU-Net, unlabeled scans by nnUNetv2_semisup_preprocess, network plans shrunk."""
    env = nnunet_env
    run_cli(["nnUNetv2_semisup_make_synthetic", "-d", DATASET_ID, "--labeled", 4, "--unlabeled", 6, "--test", 3,
             "--shape", *SHAPE, "--seed", 1], env)
    plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", 1], plan_env)
    ds = PlannedDataset(DATASET_ID, DATASET_NAME, env["nnUNet_raw"], env["nnUNet_preprocessed"],
                        env["nnUNet_results"], env)
    shrink_plans(os.path.join(ds.preprocessed_folder, "nnUNetPlans.json"))
    run_cli(["nnUNetv2_semisup_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", 1], env)
    return ds
