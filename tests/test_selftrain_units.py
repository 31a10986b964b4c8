"""Reliability scores and selection of self-training (nnunetv2_semisup.workflows.reliability), checked against values
computed by hand from the definitions in the module docstring (and FLARE22's select.ipynb formula), and the property
the ignore label is used for: voxels marked ignore carry no loss in the stock nnU-Net trainer the student runs."""
import json
import math
import os

import numpy as np
import pytest
import torch

from nnunetv2_semisup.workflows import reliability

# two folds, three classes (background, 1, 2), four voxels; columns are voxels
FOLD_A = np.array([[0.8, 0.2, 0.1, 0.4],
                   [0.1, 0.7, 0.3, 0.5],
                   [0.1, 0.1, 0.6, 0.1]])
FOLD_B = np.array([[0.6, 0.1, 0.1, 0.6],
                   [0.3, 0.8, 0.5, 0.3],
                   [0.1, 0.1, 0.4, 0.1]])
# by hand: mean = (0.7,0.2,0.1), (0.15,0.75,0.1), (0.1,0.4,0.5), (0.5,0.4,0.1) -> labels 0, 1, 2, 0;
# foreground = voxels 1 and 2; confidence = (0.75 + 0.5) / 2; entropy = (H(.15,.75,.1) + H(.1,.4,.5)) / 2 / ln 3
# = (0.730588 + 0.943348) / 2 / 1.098612; fold labels A = 0,1,2,1 and B = 0,1,1,0: union of foregrounds = voxels
# 1, 2, 3, of which 2 and 3 differ -> 2/3
CONFIDENCE = 0.625
ENTROPY = 0.7618413
DISAGREEMENT = 2 / 3


def test_case_scores_two_folds_match_hand_computed_values():
    s = reliability.case_scores([FOLD_A, FOLD_B])
    assert s["foreground_voxels"] == 2
    assert s["confidence"] == pytest.approx(CONFIDENCE, abs=1e-6)
    assert s["entropy"] == pytest.approx(ENTROPY, abs=1e-6)
    assert s["disagreement"] == pytest.approx(DISAGREEMENT, abs=1e-9)


def test_case_scores_one_fold_binary():
    # H(0.9, 0.1) / ln 2 = 0.468996 on the one foreground voxel; the background voxel does not count
    probs = np.array([[0.9, 0.1], [0.1, 0.9]])
    s = reliability.case_scores([probs])
    assert s["foreground_voxels"] == 1
    assert s["confidence"] == pytest.approx(0.9)
    assert s["entropy"] == pytest.approx(0.4689956, abs=1e-6)
    assert math.isnan(s["disagreement"])


def test_empty_foreground_gives_nan_and_ranks_last():
    empty = np.array([[0.9, 0.8], [0.1, 0.2]])
    s = reliability.case_scores([empty])
    assert math.isnan(s["confidence"]) and math.isnan(s["entropy"]) and s["foreground_voxels"] == 0
    scores = {"a": {"confidence": 0.7}, "b": s, "c": {"confidence": 0.9}}
    assert reliability.reliability_order(scores, "confidence") == ["c", "a", "b"]
    # an empty prediction is dropped before any case with a foreground
    assert reliability.select_reliable(scores, "confidence", 0.67) == ["c", "a"]


def test_round_variance_is_flare22s_formula():
    # FLARE22 select.ipynb: u_k = sum(L_{k-1} != L_k) / sum(L_k > 0), averaged over the consecutive pairs
    l1 = np.array([0, 1, 1, 2, 0])
    l2 = np.array([0, 1, 2, 2, 0])   # 1 voxel changed, 3 foreground -> 1/3
    l3 = np.array([0, 1, 2, 2, 2])   # 1 voxel changed, 4 foreground -> 1/4
    assert reliability.round_variance([l1, l2]) == pytest.approx(1 / 3)
    assert reliability.round_variance([l1, l2, l3]) == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert math.isnan(reliability.round_variance([l1]))


def test_fold_disagreement_of_identical_maps_is_zero():
    m = np.array([[0, 1], [2, 2]])
    assert reliability.fold_disagreement([m, m.copy(), m.copy()]) == 0.0
    assert math.isnan(reliability.fold_disagreement([np.zeros(3), np.zeros(3)]))


@pytest.mark.parametrize("score,order", [("confidence", ["b", "c", "a"]), ("entropy", ["c", "b", "a"]),
                                         ("disagreement", ["a", "c", "b"])])
def test_order_direction_per_score(score, order):
    scores = {"a": {"confidence": 0.5, "entropy": 0.9, "disagreement": 0.1},
              "b": {"confidence": 0.9, "entropy": 0.3, "disagreement": 0.5},
              "c": {"confidence": 0.8, "entropy": 0.2, "disagreement": 0.3}}
    assert reliability.reliability_order(scores, score) == order


@pytest.mark.parametrize("n,keep,expected", [(10, 0.8, 8), (10, 0.05, 1), (10, 1.0, 10), (7, 0.5, 4), (3, 0.1, 1),
                                             (0, 0.5, 0)])
def test_number_to_keep(n, keep, expected):
    assert reliability.number_to_keep(n, keep) == expected


def test_keep_out_of_range_refused():
    with pytest.raises(ValueError, match="share of cases to keep"):
        reliability.number_to_keep(4, 0)


def test_mark_unconfident():
    labels = np.array([0, 1, 2, 1])
    conf = np.array([0.99, 0.6, 0.95, 0.4])
    assert reliability.mark_unconfident(labels, conf, 0.9, 3).tolist() == [0, 3, 2, 3]
    assert reliability.mark_unconfident(labels, conf, None, 3).tolist() == labels.tolist()


def test_ignore_label_voxels_carry_no_loss(planned_dataset):
    """The student's dataset.json gets "ignore": max label + 1; stock nnUNetTrainer then builds a loss whose gradient
    at those voxels is exactly zero (and not elsewhere)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    ds = planned_dataset
    with open(os.path.join(ds.preprocessed_folder, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(ds.raw_folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    dataset_json["labels"]["ignore"] = max(dataset_json["labels"].values()) + 1   # what the workflow writes
    plans["continue_training"] = False  # what nnU-Net's get_trainer_from_args adds
    trainer = nnUNetTrainer(plans, "3d_fullres", "all", dataset_json, torch.device("cpu"))
    trainer.enable_deep_supervision = False
    loss_fn = trainer._build_loss()
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 4, 6, 6, requires_grad=True)
    target = torch.randint(0, 4, (2, 1, 4, 6, 6))
    ignore = torch.rand(2, 1, 4, 6, 6) < 0.3
    target[ignore] = 4
    loss_fn(logits, target).backward()
    grad = logits.grad.abs().sum(1, keepdim=True)
    assert ignore.any() and (~ignore).any()
    assert torch.all(grad[ignore] == 0)
    assert torch.all(grad[~ignore] > 0)
