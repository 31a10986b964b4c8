"""Writes the checkpoints of tests/test_checkpoint_compat.py: one epoch of each method's short trainer on the test
session's synthetic dataset (conftest: dataset 990, seed 1, tiny plans), saved as nnU-Net saves checkpoint_latest.

Run with the code whose checkpoints must stay loadable (here: the layout before the one-folder-per-method
refactor, commit recorded in README.md next to this file):
    python tests/data/legacy_checkpoints/make_legacy_checkpoints.py WORK_DIR
"""
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TRAINERS = ["nnUNetTrainerMeanTeacher_short", "nnUNetTrainerMN_short", "nnUNetTrainerSKCDF_short",
            "nnUNetTrainerCML_short"]


def main(work: str) -> None:
    sys.path.insert(0, os.path.join(HERE, "..", ".."))
    import conftest
    from nnunetv2_semisup.trainer_dir import TRAINER_DIR
    env = {"nnUNet_raw": os.path.join(work, "raw"), "nnUNet_preprocessed": os.path.join(work, "pp"),
           "nnUNet_results": os.path.join(work, "results"), "nnUNet_extTrainer": TRAINER_DIR,
           "nnUNet_def_n_proc": "1", "nnUNet_compile": "0", "nnUNet_semisup_short_epochs": "3",
           "nnUNet_semisup_short_iterations": "2", "nnUNet_semisup_short_val_iterations": "1",
           "nnUNet_semisup_seed": "0"}
    os.environ.update(env)
    full = {**os.environ}
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[k], exist_ok=True)
    run = conftest.run_cli
    run(["nnUNetv2_semisup_make_synthetic", "-d", conftest.DATASET_ID, "--labeled", 4, "--unlabeled", 6, "--test", 3,
         "--shape", *conftest.SHAPE, "--seed", 1], full)
    run(["nnUNetv2_plan_and_preprocess", "-d", conftest.DATASET_ID, "-c", "3d_fullres", "-np", 1], full)
    conftest.shrink_plans(os.path.join(env["nnUNet_preprocessed"], conftest.DATASET_NAME, "nnUNetPlans.json"))
    run(["nnUNetv2_semisup_preprocess", "-d", conftest.DATASET_ID, "-c", "3d_fullres", "-np", 1], full)
    try:  # the layout the checkpoints were written with, or the current one
        from nnunetv2_semisup.networks.segformer2d import SEGFORMER_ENV, save_tiny_segformer
    except ImportError:
        from nnunetv2_semisup.methods.mn.segformer import SEGFORMER_ENV, save_tiny_segformer
    os.environ[SEGFORMER_ENV] = save_tiny_segformer(os.path.join(work, "tiny_segformer"))
    os.environ["nnUNet_n_proc_DA"] = "0"
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    for name in TRAINERS:
        t = get_trainer_from_args(str(conftest.DATASET_ID), "3d_fullres", "all", name, device=torch.device("cpu"))
        t.on_train_start()  # nnU-Net's run_training, first epoch only
        t.on_epoch_start()
        t.on_train_epoch_start()
        outs = [t.train_step(next(t.dataloader_train)) for _ in range(t.num_iterations_per_epoch)]
        t.on_train_epoch_end(outs)
        with torch.no_grad():
            t.on_validation_epoch_start()
            t.on_validation_epoch_end([t.validation_step(next(t.dataloader_val))
                                       for _ in range(t.num_val_iterations_per_epoch)])
        t.on_epoch_end()  # save_every = 1: writes checkpoint_latest.pth
        shutil.copyfile(os.path.join(t.output_folder, "checkpoint_latest.pth"), os.path.join(HERE, f"{name}.pth"))
        t.dataloader_train.finish()
        print(name, os.path.getsize(os.path.join(HERE, f"{name}.pth")), "bytes")


if __name__ == "__main__":
    main(sys.argv[1])
