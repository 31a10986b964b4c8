"""nnU-Net's ``2d`` configuration and residual-encoder presets through the real CLI.

One synthetic dataset planned by stock nnU-Net for ``3d_fullres`` and ``2d`` (default planner) and for ``3d_fullres``
with ``nnUNetPlannerResEncM`` (``nnUNetResEncUNetMPlans``, which reuses nnUNetPlans' preprocessed data), networks
shrunk as everywhere in the suite. Every trainer that supports a configuration trains there (stopped after epoch 1
as if killed), resumes with ``--c`` and predicts with stock ``nnUNetv2_predict``; every trainer that does not
support it refuses at the start with an error naming what works.
"""
import os

import pytest

from conftest import run_cli, shrink_plans
from nnunetv2_semisup.methods.mn.segformer import SEGFORMER_ENV, save_tiny_segformer

DATASET_ID = 986
NAME = f"Dataset{DATASET_ID}_Configurations"
RESENC = "nnUNetResEncUNetMPlans"

SUPPORTED = [  # (trainer, configuration, plans)
    ("nnUNetTrainerMeanTeacher_short", "2d", "nnUNetPlans"),
    ("nnUNetTrainerCML_short", "2d", "nnUNetPlans"),
    ("nnUNetTrainerMeanTeacher_short", "3d_fullres", RESENC),
    ("nnUNetTrainerMN_short", "3d_fullres", RESENC),
    ("nnUNetTrainerCML_short", "3d_fullres", RESENC),
    ("nnUNetTrainerWeakStrong_short", "2d", "nnUNetPlans"),
    ("nnUNetTrainerWeakStrong_short", "3d_fullres", RESENC),
    ("nnUNetTrainerSKCDF_short", "3d_fullres", RESENC),
]
REFUSED = [  # (trainer, configuration, plans, what the error must say)
    ("nnUNetTrainerMN_short", "2d", "nnUNetPlans", "needs a 3D configuration"),
    ("nnUNetTrainerSKCDF_short", "2d", "nnUNetPlans", "needs a 3D configuration"),
]


@pytest.fixture(scope="module")
def configurations_dataset(nnunet_env, tmp_path_factory):
    env = dict(nnunet_env)
    run_cli(["nnUNetv2_semisup_make_synthetic", "-d", DATASET_ID, "--name", "Configurations", "--labeled", 3,
             "--unlabeled", 3, "--test", 1, "--shape", 16, 32, 32, "--seed", 2, "--overwrite"], env)
    plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}  # planning fails with 0 workers
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "2d", "-np", 1], plan_env)
    run_cli(["nnUNetv2_plan_experiment", "-d", DATASET_ID, "-pl", "nnUNetPlannerResEncM"], plan_env)
    pp = os.path.join(env["nnUNet_preprocessed"], NAME)
    for plans in ("nnUNetPlans", RESENC):
        shrink_plans(os.path.join(pp, plans + ".json"))
    run_cli(["nnUNetv2_semisup_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "2d", "-np", 1], env)
    segformer = str(tmp_path_factory.mktemp("tiny_segformer_configurations"))
    save_tiny_segformer(segformer)
    env.update({SEGFORMER_ENV: segformer, "nnUNet_semisup_short_epochs": "2", "nnUNet_semisup_short_iterations": "1",
                "nnUNet_semisup_short_val_iterations": "1"})
    return env


@pytest.mark.slow
@pytest.mark.parametrize("trainer,configuration,plans", SUPPORTED)
def test_trains_resumes_and_predicts(configurations_dataset, tmp_path, trainer, configuration, plans):
    env = configurations_dataset
    train = ["nnUNetv2_train", DATASET_ID, configuration, "all", "-tr", trainer, "-p", plans, "-device", "cpu"]
    # the unlabeled cases preprocessed for nnUNetPlans serve the ResEnc plans (same data identifier)
    run_cli(train, {**env, "nnUNet_semisup_short_stop_after": "1"})
    fold = os.path.join(env["nnUNet_results"], NAME, f"{trainer}__{plans}__{configuration}", "fold_all")
    assert os.path.isfile(os.path.join(fold, "checkpoint_latest.pth"))
    run_cli(train + ["--c"], env)
    assert os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    logs = sorted(f for f in os.listdir(fold) if f.startswith("training_log"))
    with open(os.path.join(fold, logs[-1])) as f:
        resumed = f.read()
    # the resumed run trained the second epoch only (a restart from epoch 0 would log "Epoch 0" again)
    assert "Epoch 1" in resumed and "Epoch 0\n" not in resumed
    import torch
    final = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and len(final["logging"]["train_losses"]) == 2
    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", os.path.join(env["nnUNet_raw"], NAME, "imagesTs"), "-o", out, "-d",
             DATASET_ID, "-c", configuration, "-f", "all", "-tr", trainer, "-p", plans, "-device", "cpu",
             "--disable_tta", "-npp", 1, "-nps", 1], env)
    assert len([f for f in os.listdir(out) if f.endswith(".nii.gz")]) == 1


@pytest.mark.parametrize("trainer,configuration,plans,message", REFUSED)
def test_unsupported_combinations_are_refused_with_what_works(configurations_dataset, trainer, configuration, plans,
                                                               message):
    proc = run_cli(["nnUNetv2_train", DATASET_ID, configuration, "all", "-tr", trainer, "-p", plans, "-device",
                    "cpu"], configurations_dataset, expect_ok=False)
    assert proc.returncode != 0 and message in proc.stderr + proc.stdout
    assert not os.path.isfile(os.path.join(configurations_dataset["nnUNet_results"], NAME,
                                           f"{trainer}__{plans}__{configuration}", "fold_all",
                                           "checkpoint_latest.pth"))
