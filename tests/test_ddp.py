"""Multi-GPU training with two CPU processes and the gloo backend (tests/ddp_worker.py).

For each default trainer: the planned (global) batch of 4 is split by nnU-Net into 2 per rank and the methods
compose their labeled/unlabeled batches from that per-rank size; every module the trainer trains or keeps (the
network, M&N's SegFormer, Mean Teacher's teacher) is DDP-wrapped where it is trained and identical on both ranks
after training, as is the method state (counters, teachers, class statistics, LRG composition); the ranks draw
different patches; only rank 0 writes under nnUNet_results (checkpoints, logs, progress.png, pseudo-labels); and
``--c`` resumes the interrupted DDP run at its checkpoint with both ranks in step.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import copy_planned_dataset
from nnunetv2_semisup.methods.mn.segformer import SEGFORMER_ENV, save_tiny_segformer

HERE = os.path.dirname(os.path.abspath(__file__))
COPY_ID = 985
TRAINERS = ["nnUNetTrainerMeanTeacher_short", "nnUNetTrainerMN_short", "nnUNetTrainerSKCDF_short",
            "nnUNetTrainerCML_short", "nnUNetTrainerWeakStrong_short"]
# modules trained through DDP (Mean Teacher's teacher is an EMA, never trained)
DDP_WRAPPED = {"nnUNetTrainerMN_short": ["mn_segformer_state", "network"]}


@pytest.fixture(scope="module")
def ddp_dataset(planned_dataset, tmp_path_factory):
    _, pp = copy_planned_dataset(planned_dataset, COPY_ID, "DDP")
    plans_file = os.path.join(pp, "nnUNetPlans.json")
    with open(plans_file) as f:
        plans = json.load(f)
    plans["configurations"]["3d_fullres"]["batch_size"] = 4  # global: 2 per rank
    with open(plans_file, "w") as f:
        json.dump(plans, f, indent=2)
    segformer = str(tmp_path_factory.mktemp("tiny_segformer_ddp"))
    save_tiny_segformer(segformer)
    env = {**planned_dataset.env, SEGFORMER_ENV: segformer, "nnUNet_semisup_short_epochs": "2",
           "nnUNet_semisup_short_iterations": "2", "nnUNet_semisup_short_val_iterations": "1",
           "nnUNet_semisup_short_skip_validation": "1", "nnUNet_semisup_seed": "0"}
    return pp, env


def run_worker(name, pp, env, report, *flags):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "ddp_worker.py"), name, pp, str(report), *flags],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(report) as f:
        return json.load(f)


def initialize_only(names, pp, env, report, override):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "ddp_worker.py"), "--initialize-only", ",".join(names),
                           pp, str(report), "--batch-size-override", str(override)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(report) as f:
        return json.load(f)


def assert_ranks_in_step(ranks):
    a, b = ranks
    assert a["parameters"].keys() == b["parameters"].keys()
    for module in a["parameters"]:
        differ = [n for n in a["parameters"][module] if a["parameters"][module][n] != b["parameters"][module][n]
                  and not cpu_only_batchnorm_statistics(module, n)]
        assert not differ, f"{module}: {len(differ)} tensors differ between the ranks, e.g. {differ[:3]}"
    assert a["method_state"] == b["method_state"], (a["method_state_repr"], b["method_state_repr"])
    assert a["compositions"] == b["compositions"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINERS)
def test_two_rank_training_stays_in_step_and_resumes(ddp_dataset, tmp_path, name):
    pp, env = ddp_dataset
    first = run_worker(name, pp, env, tmp_path / "first.json", "--stop-after", "1")
    assert [r["is_ddp"] for r in first] == [True, True]
    assert [(r["planned_batch_size"], r["batch_size"]) for r in first] == [(4, 2), (4, 2)]  # nnU-Net's split
    assert all(r["ddp_wrapped"] == DDP_WRAPPED.get(name, ["network"]) for r in first)
    assert all(r["epoch"] == 1 for r in first)
    assert_ranks_in_step(first)
    # each rank samples its own patches
    keys = [[tuple(s["labeled"]) + tuple(s["unlabeled"]) for s in r["steps"]] for r in first]
    assert keys[0] != keys[1]
    # per-rank compositions come from the per-rank batch size (2), never from the global one (4)
    for r in first:
        assert all(len(s["labeled"]) <= 2 and len(s["unlabeled"]) <= 2 for s in r["steps"])
    # only rank 0 writes (besides the copies of plans.json, dataset.json and dataset_fingerprint.json that stock
    # nnU-Net's on_train_start writes from every rank, with the same content)
    assert not_nnunets_copies(first[1]["writes"]) == []
    written = not_nnunets_copies(first[0]["writes"])
    assert {"checkpoint_latest.pth", "progress.png", "debug.json"} <= {os.path.basename(w) for w in written}
    assert any("training_log" in w for w in written)

    resumed = run_worker(name, pp, env, tmp_path / "resumed.json", "--c")
    assert [(r["resumed_at"], r["epoch"]) for r in resumed] == [(1, 2), (1, 2)]
    assert_ranks_in_step(resumed)
    assert not_nnunets_copies(resumed[1]["writes"]) == []
    assert any(w.endswith("checkpoint_final.pth") for w in resumed[0]["writes"])
    if name == "nnUNetTrainerMN_short":  # the pseudo-label refresh at the end of the warm-up (epoch 1): rank 0's
        assert any("pseudo_labels" in w for w in resumed[0]["writes"])


def cpu_only_batchnorm_statistics(module: str, tensor: str) -> bool:
    """The SegFormer's BatchNorm running statistics: on CUDA the trainer converts them to SyncBatchNorm (nnU-Net's
    recipe), which keeps them identical on every rank; SyncBatchNorm does not run on the CPU, so here DDP only
    re-broadcasts rank 0's values at each forward and the ranks differ by their last forward's update."""
    return module == "mn_segformer_state" and tensor.endswith((".running_mean", ".running_var"))


def not_nnunets_copies(writes):
    return [w for w in writes if os.path.basename(w) not in ("plans.json", "dataset.json",
                                                             "dataset_fingerprint.json")]


@pytest.mark.slow
def test_batch_size_override_is_the_global_batch_split_by_nnunet(ddp_dataset, tmp_path):
    """``batch_size_override`` means what the plans' batch size means: the global batch over all GPUs. nnU-Net splits
    6 into 3 + 3 and moves the foreground oversampling so that the patches a batch of 6 forces on one GPU stay forced
    (rank 0: none, rank 1: all of them); each method composes its batch from the rank's 3. CML, which needs an even
    share per GPU, refuses 6 on two GPUs and names 8, with which it trains 4 + 4 per GPU."""
    pp, env = ddp_dataset
    names = [n for n in TRAINERS if n != "nnUNetTrainerCML_short"]
    ranks = initialize_only(names + ["nnUNetTrainerCML_short"], pp, env, tmp_path / "six.json", override=6)
    last_epoch = {"nnUNetTrainerMeanTeacher_short": [3, 3], "nnUNetTrainerSKCDF_short": [3, 3],
                  "nnUNetTrainerWeakStrong_short": [3, 3]}
    for name in names:
        r0, r1 = (r[name] for r in ranks)
        assert (r0["batch_size"], r1["batch_size"]) == (3, 3), name
        assert (r0["planned_batch_size"], r1["planned_batch_size"]) == (4, 4)  # the plans stay as planned
        p = r0["planned_oversample"]
        # the forced patches of one batch of 6 on one GPU (nnU-Net's DataLoader: the last 6 - round(6·(1 - p)))
        assert r0["oversample"] == 0.0 and r1["oversample"] * 3 == pytest.approx(6 - round(6 * (1 - p))), name
        assert sum(r0["first_epoch"]) <= 2 * 3 and r0["first_epoch"][0] == 3, name
        if name in last_epoch:
            assert r0["last_epoch"] == r1["last_epoch"] == last_epoch[name], name
        else:  # M&N: LRG spreads its share over each iteration's 3 patches; the loaders deliver at most 3 + 3
            assert 3 <= sum(r0["last_epoch"]) <= 6 and max(r0["last_epoch"]) <= 3
    for r in ranks:
        assert "batch_size_override=6 is invalid for CML: it gives 3 patches per GPU on 2 GPU(s)" in \
               r["nnUNetTrainerCML_short"]["error"] and "batch_size_override=8" in r["nnUNetTrainerCML_short"]["error"]
    cml = initialize_only(["nnUNetTrainerCML_short"], pp, env, tmp_path / "eight.json", override=8)
    assert [(r["nnUNetTrainerCML_short"]["batch_size"], r["nnUNetTrainerCML_short"]["first_epoch"],
             r["nnUNetTrainerCML_short"]["last_epoch"]) for r in cml] == [(4, [4, 0], [4, 4])] * 2
