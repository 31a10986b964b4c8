"""Overlap and surface-distance metrics for binary masks, in ``mm`` and ``paper`` mode (docs/evaluation.md §2-§4).

Implemented on :mod:`scipy.ndimage` only (binary erosion, Euclidean distance transform, connected components).
medpy is GPL-3.0 and deliberately not imported here; the tests check that ``paper`` mode reproduces medpy 0.5.2.

Public functions
----------------
- :func:`dice`, :func:`jaccard` — overlap (§2).
- :func:`surface_mask` — surface voxels ∂M (§2).
- :func:`directed_surface_distances` — d(P→G) and d(G→P) with the union-bounding-box crop (§2).
- :func:`largest_connected_component` — LCC post-processing (§3).
- :func:`empty_mask_values` — the empty-mask policy table (§4).
- :func:`binary_metrics` — everything for one binary (prediction, reference) pair.
- :func:`label_map_metrics` — every foreground label of one label-map case.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from nnunetv2_semisup.evaluation.settings import EvalSettings

def _erosion_structure(ndim: int) -> np.ndarray:
    """The 6-neighbourhood (connectivity 1) structuring element of the surface erosion (§2)."""
    return ndimage.generate_binary_structure(ndim, 1)


#: Voxels added on each side of the union bounding box before erosion / distance transforms (§2).
CROP_MARGIN = 2

#: Surface distance assigned by the ``dhc`` policy when exactly one mask is empty (DHC / SKCDF scripts, §4).
DHC_EMPTY_DISTANCE = 128.0

#: Dice / Jaccard assigned by the ``dhc`` policy when both masks are empty: the scripts store 1 on a 0-100 scale (§4).
DHC_BOTH_EMPTY_OVERLAP = 0.01

EMPTY_CASES = ("none", "pred_empty", "ref_empty", "both_empty")


class EmptyMaskError(ValueError):
    """Raised by the ``raise`` (plain medpy) policy when a surface distance is undefined (docs/evaluation.md §4)."""


# ----------------------------------------------------------------------------------------------------- overlap
def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice = 2|P ∩ G| / (|P| + |G|) (docs/evaluation.md §2). NaN when both masks are empty (policies decide, §4)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    denom = np.count_nonzero(pred) + np.count_nonzero(ref)
    return float(2.0 * np.count_nonzero(pred & ref) / denom) if denom else math.nan


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard = |P ∩ G| / |P ∪ G| (docs/evaluation.md §2). NaN when both masks are empty (policies decide, §4)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    union = np.count_nonzero(pred | ref)
    return float(np.count_nonzero(pred & ref) / union) if union else math.nan


# ----------------------------------------------------------------------------------------------------- surfaces
def surface_mask(mask: np.ndarray) -> np.ndarray:
    """∂M = M minus its binary erosion with the 6-neighbourhood, one iteration, outside = background (§2).

    Mask voxels on the array border are therefore surface voxels (as in medpy).
    """
    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask, structure=_erosion_structure(mask.ndim), iterations=1,
                                          border_value=0)


def union_bounding_box(a: np.ndarray, b: np.ndarray, margin: int = CROP_MARGIN) -> Optional[Tuple[slice, ...]]:
    """Bounding box of ``a | b`` expanded by ``margin`` voxels and clipped to the array (§2); None if both empty."""
    union = np.asarray(a, bool) | np.asarray(b, bool)
    slices = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        hit = np.flatnonzero(np.any(union, axis=other) if other else union)
        if hit.size == 0:
            return None
        slices.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, union.shape[axis])))
    return tuple(slices)


def _normalise_spacing(spacing: Optional[Sequence[float]], ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    spacing = np.asarray(spacing, dtype=np.float64).ravel()
    if spacing.size == 1:
        spacing = np.repeat(spacing, ndim)
    if spacing.size != ndim or np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"spacing must be {ndim} positive finite numbers in array axis order, got {spacing.tolist()}")
    return spacing


def directed_surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]] = None,
                               crop: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Return (d(P→G), d(G→P)) for two non-empty masks (docs/evaluation.md §2).

    d(P→G) holds, for every surface voxel of P, the Euclidean distance to the nearest surface voxel of G, from
    ``scipy.ndimage.distance_transform_edt`` of the complement of ∂G sampled with ``spacing`` (array axis order;
    ``None`` = unit spacing, i.e. voxels). With ``crop=True`` both masks are first cropped to the bounding box of
    P ∪ G expanded by :data:`CROP_MARGIN` voxels; the result is identical to the full-array computation because
    both surfaces lie inside the crop and no mask voxel reaches a crop edge that is not an array edge.
    Values are ordered like ``np.nonzero`` of the surface (C order), as in medpy.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if not pred.any() or not ref.any():
        raise EmptyMaskError("surface distances are undefined for an empty mask")
    sampling = _normalise_spacing(spacing, pred.ndim)
    if crop:
        box = union_bounding_box(pred, ref)
        pred, ref = pred[box], ref[box]
    return _distances_between_surfaces(surface_mask(pred), surface_mask(ref), sampling)


def _distances_between_surfaces(pred_surface: np.ndarray, ref_surface: np.ndarray, sampling: np.ndarray
                                ) -> Tuple[np.ndarray, np.ndarray]:
    d_pg = ndimage.distance_transform_edt(~ref_surface, sampling=sampling)[pred_surface]
    d_gp = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)[ref_surface]
    return d_pg, d_gp


def hd95_pooled(d_pg: np.ndarray, d_gp: np.ndarray) -> float:
    """Paper-mode HD95: 95th percentile of the pooled set d(P→G) ∪ d(G→P) (medpy ``hd95``, §2)."""
    return float(np.percentile(np.concatenate([d_pg, d_gp]), 95))


def hd95_max_directed(d_pg: np.ndarray, d_gp: np.ndarray) -> float:
    """mm-mode HD95: max(P95(d(P→G)), P95(d(G→P))) (MONAI/DeepMind-style, no area weighting, §2)."""
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def asd_directed(d_pg: np.ndarray) -> float:
    """Paper-mode ASD: mean of d(P→G) (medpy ``asd(result=P, reference=G)``, §2)."""
    return float(np.mean(d_pg))


def assd_pooled(d_pg: np.ndarray, d_gp: np.ndarray) -> float:
    """mm-mode ASSD: (Σd(P→G) + Σd(G→P)) / (|∂P| + |∂G|) (medpy 0.5.2 ``assd``, §2)."""
    return float((d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size))


# ----------------------------------------------------------------------------------------------------- LCC
def largest_connected_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest fully connected (26-neighbourhood in 3D) component of ``mask`` (docs/evaluation.md §3).

    Ties keep the component with the lowest label index (``scipy.ndimage.label`` raster order, as
    ``np.argmax`` over ``skimage.measure.label`` in the UA-MT/BCP scripts); an empty mask stays empty.
    """
    mask = np.asarray(mask, bool)
    labelled, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


# ----------------------------------------------------------------------------------------------------- policies
def reference_diagonal(shape: Sequence[int], spacing: Optional[Sequence[float]] = None) -> float:
    """Diagonal of the image extent √Σ(n_i·s_i)², the ``penalty`` distance (docs/evaluation.md §4)."""
    s = _normalise_spacing(spacing, len(shape))
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=np.float64) * s) ** 2)))


def classify_empty(n_pred: int, n_ref: int) -> str:
    """``none``, ``pred_empty``, ``ref_empty`` or ``both_empty`` (the CSV column ``empty_case``, §6)."""
    if n_pred == 0 and n_ref == 0:
        return "both_empty"
    if n_pred == 0:
        return "pred_empty"
    if n_ref == 0:
        return "ref_empty"
    return "none"


def empty_mask_values(empty_case: str, policy: str, penalty_distance: float = math.nan
                      ) -> Tuple[float, float, float, Optional[str]]:
    """(dice, jaccard, distance, warning) for a case with an empty mask, per docs/evaluation.md §4.

    ``distance`` is used for HD95, ASD/ASSD and HD alike. ``penalty_distance`` is the image diagonal
    (:func:`reference_diagonal`) used by the ``penalty`` policy. The ``raise`` policy raises
    :class:`EmptyMaskError` (medpy's distance functions raise on empty masks; medpy 0.5.2's ``dc``/``jc`` would
    return 1 for two empty masks, but the row is incomplete without distances).
    """
    nan = math.nan
    if empty_case not in EMPTY_CASES[1:]:
        raise ValueError(f"empty_case must be one of {EMPTY_CASES[1:]}, got {empty_case!r}")
    if policy == "penalty":
        return (nan, nan, nan, None) if empty_case == "both_empty" else (0.0, 0.0, penalty_distance, None)
    if policy == "nan":
        return (nan, nan, nan, None) if empty_case == "both_empty" else (0.0, 0.0, nan, None)
    if policy == "zeros":
        # The UA-MT/MC-Net/BCP/CML scripts test sum(prediction) == 0 first and then store zeros for every metric.
        if empty_case in ("both_empty", "pred_empty"):
            return 0.0, 0.0, 0.0, None
        return 0.0, 0.0, nan, ("reference empty but prediction not: distances set to NaN (the reference scripts "
                               "would crash in medpy here)")
    if policy == "dhc":
        if empty_case == "both_empty":
            return DHC_BOTH_EMPTY_OVERLAP, DHC_BOTH_EMPTY_OVERLAP, 0.0, None
        return 0.0, 0.0, DHC_EMPTY_DISTANCE, None
    if policy == "raise":
        what = {"both_empty": "prediction and reference are both empty",
                "pred_empty": "the prediction is empty", "ref_empty": "the reference is empty"}[empty_case]
        raise EmptyMaskError(f"{what}: surface distances are undefined and the 'raise' policy (plain medpy, "
                             f"preset 'medpy') does not substitute values; choose another --empty-policy/--preset")
    raise ValueError(f"unknown empty-mask policy {policy!r}")


# ----------------------------------------------------------------------------------------------------- one pair
def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]] = None,
                   settings: EvalSettings = EvalSettings(), crop: bool = True) -> Dict[str, object]:
    """All metrics of one binary pair under ``settings`` (docs/evaluation.md §2-§4).

    ``spacing`` is in array axis order and used only in mm mode (paper mode always uses unit spacing).
    LCC, if enabled in ``settings``, is applied to ``pred`` here. Returns a dict with the metric keys of
    ``settings.metric_keys`` (Dice/Jaccard as fractions) plus ``n_ref``, ``n_pred``, ``n_ref_surface``,
    ``n_pred_surface``, ``empty_case``, ``lcc_applied`` and ``warning`` (None or a message).
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    sampling = _normalise_spacing(spacing, ref.ndim) if settings.mode == "mm" else np.ones(ref.ndim)
    if settings.lcc:
        pred = largest_connected_component(pred)
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    empty_case = classify_empty(n_pred, n_ref)
    out: Dict[str, object] = {"n_ref": n_ref, "n_pred": n_pred, "empty_case": empty_case,
                              "lcc_applied": settings.lcc, "warning": None}
    box = union_bounding_box(pred, ref) if crop else tuple(slice(None) for _ in ref.shape)
    if box is None:  # both empty
        out["n_ref_surface"] = out["n_pred_surface"] = 0
    else:
        pred_c, ref_c = pred[box], ref[box]
        pred_surface, ref_surface = surface_mask(pred_c), surface_mask(ref_c)
        out["n_pred_surface"] = int(np.count_nonzero(pred_surface))
        out["n_ref_surface"] = int(np.count_nonzero(ref_surface))
    if empty_case != "none":
        d, j, dist, warning = empty_mask_values(empty_case, settings.empty_policy,
                                                reference_diagonal(ref.shape, sampling))
        out.update(dice=d, jaccard=j, hd95=dist, warning=warning)
        out[settings.dist_key] = dist
        if settings.include_hd:
            out["hd"] = dist
        return out
    d_pg, d_gp = _distances_between_surfaces(pred_surface, ref_surface, sampling)
    out["dice"], out["jaccard"] = dice(pred_c, ref_c), jaccard(pred_c, ref_c)
    if settings.mode == "mm":
        out["hd95"], out["assd"] = hd95_max_directed(d_pg, d_gp), assd_pooled(d_pg, d_gp)
    else:
        out["hd95"], out["asd"] = hd95_pooled(d_pg, d_gp), asd_directed(d_pg)
    if settings.include_hd:
        out["hd"] = float(max(d_pg.max(), d_gp.max()))
    return out


# ----------------------------------------------------------------------------------------------------- one case
def label_map_metrics(pred: np.ndarray, ref: np.ndarray, labels: Iterable[int],
                      spacing: Optional[Sequence[float]] = None, settings: EvalSettings = EvalSettings(),
                      crop: bool = True) -> List[Dict[str, object]]:
    """Evaluate each foreground label k of a label-map pair as the binary masks (pred == k, ref == k) (§1).

    Returns one dict per label (see :func:`binary_metrics`) with an added ``label`` key. An
    :class:`EmptyMaskError` from the ``raise`` policy is re-raised with the label in the message.
    """
    rows = []
    for k in labels:
        try:
            row = binary_metrics(pred == k, ref == k, spacing, settings, crop)
        except EmptyMaskError as e:
            raise EmptyMaskError(f"label {k}: {e}") from None
        row["label"] = int(k)
        rows.append(row)
    return rows
