"""Model folders written by an earlier version keep working : checkpoints saved by the
layout before the one-folder-per-method refactor (tests/data/legacy_checkpoints/) resume with the stock
``nnUNetv2_train --c`` (every extra module and the method state load; M&N without the hub) and the final model
predicts with the stock ``nnUNetv2_predict``."""
import json
import os
import sys
import shutil

import pytest
import torch

from conftest import copy_planned_dataset, run_cli

HERE = os.path.dirname(os.path.abspath(__file__))
LEGACY = os.path.join(HERE, "data", "legacy_checkpoints")
COPY_ID = 982
COPY_NAME = f"Dataset{COPY_ID}_Compat"
TRAINERS = ["nnUNetTrainerMeanTeacher_short", "nnUNetTrainerMN_short", "nnUNetTrainerSKCDF_short",
            "nnUNetTrainerCML_short"]


@pytest.fixture(scope="module")
def compat_dataset(planned_dataset):
    raw, _ = copy_planned_dataset(planned_dataset, COPY_ID, "Compat")
    return planned_dataset, raw


@pytest.mark.parametrize("trainer", TRAINERS)
def test_legacy_checkpoint_resumes_and_predicts(compat_dataset, trainer, tmp_path):
    ds, raw = compat_dataset
    out = os.path.join(ds.results, COPY_NAME, f"{trainer}__nnUNetPlans__3d_fullres", "fold_all")
    os.makedirs(out)
    shutil.copyfile(os.path.join(LEGACY, f"{trainer}.pth"), os.path.join(out, "checkpoint_latest.pth"))
    env = {**ds.env, "nnUNet_semisup_short_epochs": "3", "nnUNet_semisup_short_iterations": "2",
           "nnUNet_semisup_short_val_iterations": "1",
           "nnUNet_semisup_segformer": str(tmp_path / "no_segformer_here")}  # resuming M&N needs no hub/folder
    proc = run_cli(["nnUNetv2_train", COPY_ID, "3d_fullres", "all", "-tr", trainer, "--c", "-device", "cpu"], env)
    final = torch.load(os.path.join(out, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    legacy = torch.load(os.path.join(LEGACY, f"{trainer}.pth"), map_location="cpu", weights_only=False)
    assert legacy["current_epoch"] == 1 and final["current_epoch"] == 3  # resumed at epoch 1, not restarted
    # the same checkpoint keys, but written in today's single layout: the method state moved into semisup_state
    assert set(final) == set(legacy) - {"skcdf_state", "cml_state"}
    assert final["semisup_state"]["format_version"] == 2 and set(final["semisup_state"]) == {"format_version", "method"}
    assert "Epoch 1" in proc.stdout and "Epoch 0\n" not in proc.stdout
    pred = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", pred, "-d", COPY_ID, "-c", "3d_fullres",
             "-f", "all", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1], env)
    assert len([f for f in os.listdir(pred) if f.endswith(".nii.gz")]) == 3


@pytest.mark.parametrize("trainer", TRAINERS)
def test_legacy_checkpoint_loads_every_tensor(compat_dataset, trainer, tmp_path):
    """Loading (what ``--c`` does before it trains on) puts every tensor of the file into the trainer: the network,
    each extra module/optimizer/EMA teacher, and the method state, compared entry by entry (not only "it resumed")."""
    ds, _ = compat_dataset
    report = tmp_path / "report.json"
    env = {**ds.env, "nnUNet_semisup_short_epochs": "3", "nnUNet_semisup_short_iterations": "2",
           "nnUNet_semisup_segformer": str(tmp_path / "no_segformer_here")}  # the settings the files were saved with
    run_cli([sys.executable, os.path.join(HERE, "compat_load_worker.py"), COPY_ID, trainer,
             os.path.join(LEGACY, f"{trainer}.pth"), report], env)
    r = json.loads(report.read_text())
    # not state but values computed when a file is written: M&N's own-epoch counters (from the epoch being finished)
    # and the transformers version that wrote the SegFormer config
    computed_at_save = {"method.epoch_3d", "method.epoch_2d", "method.segformer_config.transformers_version"}
    # settings added after the file was written take the value that reproduces how it was trained
    # (M&N: the per-patch input window and the paper's shared labeled/unlabeled batch)
    added = ({"method.input_window": "patch", "method.labeled_batch_intact": "False"}
             if trainer == "nnUNetTrainerMN_short" else {})
    assert r["added_since"] == added
    assert [d for d in r["differ"] if d not in computed_at_save | set(added)] == [], r["differ"][:10]
    assert r["current_epoch"] == 1
    assert r["extra_keys"] or r["n_method_entries"], "each of these trainers keeps extra modules or method state"
    for key in r["extra_keys"]:
        # a GradScaler is CUDA-only: None on this CPU, so nothing to compare
        assert any(c.startswith(key + ".") for c in r["compared"]) or (key in r["unused_here"] and "scaler" in key), key
    assert sum(c.startswith("network_weights.") for c in r["compared"]) > 10


def test_a_checkpoint_of_another_architecture_names_the_variant(compat_dataset, tmp_path):
    """CML's heterogeneous subnets replaced identical ones: a checkpoint with identical subnets (here: written by
    nnUNetTrainerCML_identical_short) loaded into today's default names the variant to resume with, not a raw
    state-dict traceback; and the other way round."""
    ds, _ = compat_dataset
    env = {**ds.env, "nnUNet_semisup_short_epochs": "3", "nnUNet_semisup_short_iterations": "2"}
    out = os.path.join(ds.results, COPY_NAME, "nnUNetTrainerCML_identical_short__nnUNetPlans__3d_fullres", "fold_all")
    run_cli(["nnUNetv2_train", COPY_ID, "3d_fullres", "all", "-tr", "nnUNetTrainerCML_identical_short", "-device",
             "cpu"], {**env, "nnUNet_semisup_short_stop_after": "1"}, expect_ok=False)
    ckpt = os.path.join(out, "checkpoint_latest.pth")
    assert os.path.isfile(ckpt)
    p = run_cli([sys.executable, os.path.join(HERE, "compat_load_worker.py"), COPY_ID, "nnUNetTrainerCML_short", ckpt,
                 tmp_path / "r.json"], env, expect_ok=False)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert "does not fit the one nnUNetTrainerCML_short builds now" in last and "nnUNetTrainerCML_identical" in last
    assert "Missing key" in last or "Unexpected key" in last or "size mismatch" in last
    # stock nnUNetv2_predict on identical-subnet weights saved under today's default name (what a checkpoint of an
    # earlier release is: nnU-Net builds the network of the trainer named in the file): the same hint, no traceback
    model = tmp_path / "results" / COPY_NAME / "nnUNetTrainerCML_short__nnUNetPlans__3d_fullres"
    (model / "fold_all").mkdir(parents=True)
    for f in ("plans.json", "dataset.json"):
        shutil.copyfile(os.path.join(os.path.dirname(out), f), model / f)
    old = torch.load(ckpt, map_location="cpu", weights_only=False)
    old["trainer_name"] = "nnUNetTrainerCML_short"
    torch.save(old, model / "fold_all" / "checkpoint_final.pth")
    p = run_cli(["nnUNetv2_predict", "-i", os.path.join(compat_dataset[1], "imagesTs"), "-o", tmp_path / "pred", "-d",
                 COPY_ID, "-c", "3d_fullres", "-f", "all", "-tr", "nnUNetTrainerCML_short", "-chk",
                 "checkpoint_final.pth", "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1],
                {**env, "nnUNet_results": str(tmp_path / "results")}, expect_ok=False)
    assert p.returncode != 0
    assert "identical subnets, the trainer builds heterogeneous ones" in p.stderr
    assert "-tr nnUNetTrainerCML_identical" in p.stderr
