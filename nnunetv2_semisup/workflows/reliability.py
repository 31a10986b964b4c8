"""How far to trust a pseudo-label: per-case reliability scores and per-voxel confidence from a teacher's softmax
probabilities, and the selection of the most reliable share of cases.

Scores of one case (all computed on the teacher's predicted foreground F = voxels whose argmax is not background,
so that a large easy background does not make every case look reliable):

- ``confidence``: mean over F of the largest class probability (higher = more reliable);
- ``entropy``: mean over F of the Shannon entropy of the class probabilities divided by log(C), in [0, 1] (lower =
  more reliable; nnFilterMatch filters cases by entropy);
- ``disagreement`` (several folds): share of the voxels in the union of the folds' predicted foregrounds where the
  folds' hard labels are not all equal, in [0, 1] (lower = more reliable);
- ``round_variance`` (two or more rounds of pseudo-labels; the FLARE22 winner's filter): the mean over consecutive
  rounds k-1, k of |L_{k-1} != L_k| / |L_k > 0|, the number of voxels whose label changed divided by the foreground
  of the later round (lower = more reliable).

A case whose predicted foreground is empty gets NaN scores and counts as the least reliable (for the segmentation
tasks this package is for, a scan without any structure is far more often a failed prediction than a true empty
scan).
"""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

# score name -> True when larger values mean a more reliable pseudo-label
SCORES = {"confidence": True, "entropy": False, "disagreement": False, "round_variance": False}


def hard_labels(probabilities: np.ndarray) -> np.ndarray:
    """Argmax over the class axis 0 (the label map nnU-Net exports from these probabilities)."""
    return np.asarray(probabilities).argmax(0)


def voxel_confidence(probabilities: np.ndarray) -> np.ndarray:
    """Largest class probability per voxel."""
    return np.asarray(probabilities).max(0)


def case_scores(fold_probabilities: Sequence[np.ndarray]) -> Dict[str, float]:
    """Scores of one case from the softmax probabilities (C, ...) of one or several models (folds).

    The folds' probabilities are averaged as ``nnUNetv2_ensemble`` does; ``confidence`` and ``entropy`` are those of
    the average, ``disagreement`` needs two or more folds (NaN with one). Also returns ``foreground_voxels``.
    """
    probs = [np.asarray(p, dtype=np.float32) for p in fold_probabilities]
    if not probs:
        raise ValueError("case_scores needs the probabilities of at least one model")
    mean = probs[0] if len(probs) == 1 else np.mean(probs, axis=0)
    labels = hard_labels(mean)
    fg = labels > 0
    n_fg = int(np.count_nonzero(fg))
    out = {"foreground_voxels": float(n_fg), "confidence": math.nan, "entropy": math.nan,
           "disagreement": math.nan}
    if n_fg:
        p_fg = mean[:, fg]
        out["confidence"] = float(p_fg.max(0).mean())
        n_classes = mean.shape[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.sum(np.where(p_fg > 0, p_fg * np.log(p_fg), 0.0), axis=0)
        out["entropy"] = float(ent.mean() / math.log(n_classes)) if n_classes > 1 else 0.0
    if len(probs) > 1:
        out["disagreement"] = fold_disagreement([hard_labels(p) for p in probs])
    return out


def fold_disagreement(label_maps: Sequence[np.ndarray]) -> float:
    """Share of the voxels in the union of the maps' foregrounds where the maps are not all equal (NaN if the union
    is empty)."""
    union = np.zeros(np.shape(label_maps[0]), bool)
    differ = np.zeros_like(union)
    for m in label_maps:
        union |= np.asarray(m) > 0
        differ |= np.asarray(m) != np.asarray(label_maps[0])
    n = int(np.count_nonzero(union))
    return float(np.count_nonzero(differ & union) / n) if n else math.nan


def round_variance(label_maps_by_round: Sequence[np.ndarray]) -> float:
    """The FLARE22 winner's cross-round variance: mean over consecutive rounds of (voxels whose label changed) /
    (foreground voxels of the later round). NaN with fewer than two rounds or an empty later foreground."""
    if len(label_maps_by_round) < 2:
        return math.nan
    values = []
    for prev, cur in zip(label_maps_by_round[:-1], label_maps_by_round[1:]):
        n_fg = int(np.count_nonzero(np.asarray(cur) > 0))
        if n_fg == 0:
            return math.nan
        values.append(np.count_nonzero(np.asarray(prev) != np.asarray(cur)) / n_fg)
    return float(np.mean(values))


def reliability_order(scores: Dict[str, Dict[str, float]], score: str) -> List[str]:
    """Cases from most to least reliable by ``score``; NaN (empty foreground, missing score) last; ties by name."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {sorted(SCORES)}")
    higher_better = SCORES[score]

    def key(case):
        v = scores[case].get(score, math.nan)
        if v is None or not np.isfinite(v):
            return (1, 0.0, case)
        return (0, -v if higher_better else v, case)

    return sorted(scores, key=key)


def number_to_keep(n_cases: int, keep: float) -> int:
    """round(keep × n), at least 1 (for n ≥ 1) and at most n."""
    if not 0 < keep <= 1:
        raise ValueError(f"the share of cases to keep must be in (0, 1], got {keep}")
    return min(n_cases, max(1, int(round(keep * n_cases)))) if n_cases else 0


def select_reliable(scores: Dict[str, Dict[str, float]], score: str, keep: float) -> List[str]:
    """The ``keep`` share (rounded, at least one case) of the most reliable cases by ``score``, most reliable first.
    Cases with an empty predicted foreground are never kept unless nothing else is left."""
    order = reliability_order(scores, score)
    return order[:number_to_keep(len(order), keep)]


def mark_unconfident(labels: np.ndarray, confidence: np.ndarray, threshold: Optional[float],
                     ignore_label: int) -> np.ndarray:
    """``labels`` with every voxel whose confidence is below ``threshold`` set to ``ignore_label`` (nnU-Net's ignore
    label carries no loss); ``threshold`` None returns the labels unchanged."""
    out = np.array(labels, copy=True)
    if threshold is not None:
        out[np.asarray(confidence) < threshold] = ignore_label
    return out
