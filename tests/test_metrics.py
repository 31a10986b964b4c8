"""Unit tests of the evaluation metrics: docs/spec/metrics.md §8 properties 1-9.

medpy (GPL-3.0) is imported here only, as the reference for paper mode (property 1).
"""
import itertools
import json
import math

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from nnunetv2_semisup.evaluation.aggregate import RunAggregationError, aggregate_rows, aggregate_runs
from nnunetv2_semisup.evaluation.metrics import (DHC_EMPTY_DISTANCE, EmptyMaskError, binary_metrics,
                                                 directed_surface_distances, label_map_metrics,
                                                 largest_connected_component, reference_diagonal, surface_mask)
from nnunetv2_semisup.evaluation.settings import EvalSettings, SettingsError, resolve_settings

MM = resolve_settings("mm")
PAPER = resolve_settings("paper", empty_policy="raise")


def _random_pairs(n, seed=0):
    """Mixed shapes; blobby (smoothed noise) and speckled masks; many touch the array border."""
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < n:
        shape = tuple(int(s) for s in rng.integers(4, 22, size=3))
        kind = len(pairs) % 3
        if kind == 0:  # blobs
            p = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5 + 0.02 * rng.standard_normal()
            g = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5 + 0.02 * rng.standard_normal()
        elif kind == 1:  # speckle, dense or sparse
            p = rng.random(shape) < rng.uniform(0.02, 0.7)
            g = rng.random(shape) < rng.uniform(0.02, 0.7)
        else:  # boxes that may touch the border
            p, g = np.zeros(shape, bool), np.zeros(shape, bool)
            for m in (p, g):
                lo = [int(rng.integers(0, s)) for s in shape]
                hi = [int(rng.integers(l + 1, s + 1)) for l, s in zip(lo, shape)]
                m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
        if p.any() and g.any():
            pairs.append((p, g))
    return pairs


PAIRS = _random_pairs(120)


# ----------------------------------------------------------------------------------------------- property 1
def test_random_pairs_include_border_touching_masks():
    touching = sum(1 for p, g in PAIRS if p[0].any() or p[-1].any() or g[:, 0].any() or g[..., -1].any())
    assert touching >= 50
    assert len({p.shape for p, _ in PAIRS}) >= 50


def test_paper_mode_equals_medpy_on_random_pairs():
    for p, g in PAIRS:
        r = binary_metrics(p, g, settings=PAPER)
        assert r["dice"] == pytest.approx(medpy_binary.dc(p, g), abs=1e-9)
        assert r["jaccard"] == pytest.approx(medpy_binary.jc(p, g), abs=1e-9)
        assert r["hd95"] == pytest.approx(medpy_binary.hd95(p, g), abs=1e-9)
        assert r["asd"] == pytest.approx(medpy_binary.asd(p, g), abs=1e-9)


def test_mm_assd_equals_medpy_assd_unit_and_anisotropic_spacing():
    for i, (p, g) in enumerate(PAIRS[:60]):
        spacing = (1.0, 1.0, 1.0) if i % 2 == 0 else (2.5, 0.8, 0.7)
        r = binary_metrics(p, g, spacing, settings=MM)
        assert r["assd"] == pytest.approx(medpy_binary.assd(p, g, voxelspacing=spacing), abs=1e-9)


def test_hd_equals_medpy_hd():
    s = resolve_settings("paper", empty_policy="raise", include_hd=True)
    for p, g in PAIRS[:40]:
        assert binary_metrics(p, g, settings=s)["hd"] == pytest.approx(medpy_binary.hd(p, g), abs=1e-9)


# ----------------------------------------------------------------------------------------------- property 2
def test_two_single_voxels_three_apart_along_x():
    p, g = np.zeros((5, 6, 9), bool), np.zeros((5, 6, 9), bool)
    p[2, 3, 2] = True
    g[2, 3, 5] = True  # x = last array axis
    r = binary_metrics(p, g, settings=PAPER)
    assert (r["hd95"], r["asd"]) == (3.0, 3.0)
    assert (r["dice"], r["jaccard"]) == (0.0, 0.0)
    r = binary_metrics(p, g, spacing=(2.5, 0.8, 0.7), settings=MM)  # array order (z, y, x)
    assert r["hd95"] == pytest.approx(3 * 0.7) and r["assd"] == pytest.approx(3 * 0.7)


def test_cube_shifted_by_one_voxel():
    p, g = np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool)
    p[2:5, 2:5, 2:5] = True
    g[2:5, 2:5, 3:6] = True
    for s in (MM, PAPER):
        r = binary_metrics(p, g, settings=s)
        assert r["dice"] == pytest.approx(2 / 3, abs=1e-12)
        assert r["jaccard"] == pytest.approx(0.5, abs=1e-12)
        assert r["n_pred"] == r["n_ref"] == 27
        assert r["n_pred_surface"] == r["n_ref_surface"] == 26  # all but the centre voxel


def _concentric_cubes():
    """Inner 3³ cube (P) centred in an outer 11³ cube (G), inside a 13³ array."""
    p, g = np.zeros((13, 13, 13), bool), np.zeros((13, 13, 13), bool)
    g[1:12, 1:12, 1:12] = True
    p[5:8, 5:8, 5:8] = True
    # Hand derivation in the outer cube's own coordinates c ∈ 0..10 (inner cube = [4, 6]³):
    # every inner surface voxel has a coordinate 4 or 6, i.e. lies exactly 4 voxels from the nearest outer face;
    # an outer surface voxel (some coordinate 0 or 10) is at distance √Σ dist(c_i, [4, 6])² from the inner cube,
    # with dist(c, [4, 6]) = max(4 - c, 0, c - 6).
    d_gp = [math.sqrt(sum(max(4 - c, 0, c - 6) ** 2 for c in q)) for q in itertools.product(range(11), repeat=3)
            if 0 in q or 10 in q]
    return p, g, np.full(26, 4.0), np.array(d_gp)


def test_concentric_cubes_hand_computed_distances():
    p, g, d_pg, d_gp = _concentric_cubes()
    assert len(d_gp) == 11 ** 3 - 9 ** 3
    got_pg, got_gp = directed_surface_distances(p, g)
    np.testing.assert_allclose(np.sort(got_pg), d_pg)
    np.testing.assert_allclose(np.sort(got_gp), np.sort(d_gp))


# ----------------------------------------------------------------------------------------------- spheres
# Concentric digital balls B_r = {voxel v : |v − c|² ≤ r²} (distances in mm, v in voxel index × spacing).
#
# Overlap, exactly: G = B_6 ⊂ P = B_8, so |P ∩ G| = |G| and |P ∪ G| = |P|: Dice = 2|G|/(|G|+|P|), Jaccard = |G|/|P|.
# The counts are lattice-point counts, computed below slice by slice from the 2D disk counts (independently of the
# 3D masks); for unit spacing they are the known values N(6) = 925 and N(8) = 2109 (OEIS A000605). Both are within
# 5 % of the continuous volumes 4/3·π·r³ (904.8 and 2144.7).
#
# Distances, with tolerance: the continuous spheres of radii 6 and 8 are exactly 2 (mm) apart everywhere, so HD95,
# ASD and ASSD are all 2 in the continuum. A surface voxel v of B_r (v ∈ B_r with a 6-neighbour at distance h (the
# spacing along that axis) outside B_r) has r − h < |v − c| ≤ r: the voxelised surfaces are shells one voxel thick,
# so each single surface-to-surface distance may deviate from 2 by up to about one voxel. Hence:
# - HD95 (a high percentile, dominated by the worst-placed voxels): |HD95 − 2| ≤ 1 (one in-plane voxel, 1 mm;
#   observed √5 ≈ 2.24 in both tests);
# - ASD / ASSD (means over hundreds of surface voxels, where the radial offsets of the two shells largely
#   cancel): |mean − 2| ≤ 0.25 (observed 1.81–1.92);
# - isotropic spacing, rigorously: every distance from ∂P to ∂G exceeds (8 − 1) − 6 = 1.
SPHERE_TOL_MEAN, SPHERE_TOL_HD95 = 0.25, 1.0


def _ball(shape, radius, spacing=(1.0, 1.0, 1.0)):
    zz, yy, xx = np.ogrid[tuple(slice(0, s) for s in shape)]
    c = [s // 2 for s in shape]
    return (((zz - c[0]) * spacing[0]) ** 2 + ((yy - c[1]) * spacing[1]) ** 2
            + ((xx - c[2]) * spacing[2]) ** 2) <= radius ** 2


def _lattice_count(radius, z_step=1):
    """Number of integer (z, y, x) with (z_step·z)² + y² + x² ≤ radius², summed over z from 2D disk counts."""
    def disk(r2):  # integer (y, x) with y² + x² ≤ r2
        return sum(2 * math.isqrt(r2 - y * y) + 1 for y in range(-math.isqrt(r2), math.isqrt(r2) + 1))
    zmax = radius // z_step
    return sum(disk(radius ** 2 - (z_step * z) ** 2) for z in range(-zmax, zmax + 1))


def test_concentric_spheres_isotropic_hand_computed():
    g, p = _ball((21, 21, 21), 6), _ball((21, 21, 21), 8)
    assert (_lattice_count(6), _lattice_count(8)) == (925, 2109)
    assert (g.sum(), p.sum()) == (925, 2109) and not (g & ~p).any()  # G ⊂ P
    for n, r in ((925, 6), (2109, 8)):
        assert n == pytest.approx(4 / 3 * math.pi * r ** 3, rel=0.05)
    d_pg, d_gp = directed_surface_distances(p, g)
    assert d_pg.min() > 1 and d_gp.min() > 1  # shells (7, 8] and (5, 6]
    for s in (MM, PAPER):
        r = binary_metrics(p, g, settings=s)
        assert r["dice"] == pytest.approx(2 * 925 / (925 + 2109), abs=1e-12)
        assert r["jaccard"] == pytest.approx(925 / 2109, abs=1e-12)
        assert abs(r["hd95"] - 2) <= SPHERE_TOL_HD95
        assert abs(r[s.dist_key] - 2) <= SPHERE_TOL_MEAN
    # paper mode's directed ASD in both directions (P→G and G→P) is ≈ 2 as well
    assert abs(binary_metrics(g, p, settings=PAPER)["asd"] - 2) <= SPHERE_TOL_MEAN


def test_concentric_spheres_anisotropic_spacing_hand_computed():
    # spacing 2 mm along z (array axis 0), 1 mm in-plane: the balls of radius 6 and 8 mm are ellipsoids with
    # semi-axes (3, 6, 6) and (4, 8, 8) voxels; in mm they are the same spheres as above, 2 mm apart.
    spacing = (2.0, 1.0, 1.0)
    g, p = _ball((11, 21, 21), 6, spacing), _ball((11, 21, 21), 8, spacing)
    n_g, n_p = _lattice_count(6, z_step=2), _lattice_count(8, z_step=2)
    assert (g.sum(), p.sum()) == (n_g, n_p) and not (g & ~p).any()
    for n, r in ((n_g, 6), (n_p, 8)):  # voxel volume 2 mm³
        assert 2 * n == pytest.approx(4 / 3 * math.pi * r ** 3, rel=0.05)
    assert (g[:, 10, 10].sum(), g[5, 10, :].sum()) == (7, 13)  # 2·3 + 1 voxels along z, 2·6 + 1 in-plane
    r = binary_metrics(p, g, spacing, settings=MM)
    assert r["dice"] == pytest.approx(2 * n_g / (n_g + n_p), abs=1e-12)
    assert r["jaccard"] == pytest.approx(n_g / n_p, abs=1e-12)
    assert abs(r["hd95"] - 2) <= SPHERE_TOL_HD95  # mm
    assert abs(r["assd"] - 2) <= SPHERE_TOL_MEAN  # mm
    # the same masks in voxel units (paper mode) are not 2 apart: the z-direction gap is only 1 voxel
    paper = binary_metrics(p, g, spacing, settings=PAPER)
    assert paper["asd"] < 2 - SPHERE_TOL_MEAN
    assert paper["dice"] == r["dice"]


# ----------------------------------------------------------------------------------------------- property 3, 4
def test_pooled_and_max_directed_hd95_differ_and_match_definitions():
    p, g, d_pg, d_gp = _concentric_cubes()
    pooled = np.percentile(np.concatenate([d_pg, d_gp]), 95)
    max_directed = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    assert pooled != pytest.approx(max_directed)
    assert binary_metrics(p, g, settings=PAPER)["hd95"] == pytest.approx(pooled, abs=1e-12)
    assert binary_metrics(p, g, settings=MM)["hd95"] == pytest.approx(max_directed, abs=1e-12)


def test_directed_asd_is_asymmetric_and_assd_is_pooled_mean():
    p, g, d_pg, d_gp = _concentric_cubes()
    asd_pg = binary_metrics(p, g, settings=PAPER)["asd"]
    asd_gp = binary_metrics(g, p, settings=PAPER)["asd"]
    assert asd_pg == pytest.approx(4.0, abs=1e-12)
    assert asd_gp == pytest.approx(d_gp.mean(), abs=1e-12)
    assert asd_pg != pytest.approx(asd_gp)
    expected = (d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size)
    assert binary_metrics(p, g, settings=MM)["assd"] == pytest.approx(expected, abs=1e-12)
    assert binary_metrics(g, p, settings=MM)["assd"] == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------------------------- property 5
def test_anisotropic_spacing_scales_distances():
    spacing = (2.5, 0.8, 0.8)  # array order (z, y, x) of SimpleITK spacing (0.8, 0.8, 2.5)
    p, g = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    p[2, 2, 2] = True
    g[3, 2, 2] = True  # one voxel along z
    r = binary_metrics(p, g, spacing, settings=MM)
    assert r["hd95"] == pytest.approx(2.5) and r["assd"] == pytest.approx(2.5)
    g[3, 2, 2], g[2, 3, 3] = False, True  # one voxel along y and x
    assert binary_metrics(p, g, spacing, settings=MM)["hd95"] == pytest.approx(math.hypot(0.8, 0.8))
    g[2, 3, 3], g[3, 3, 2] = False, True  # one along z and y
    assert binary_metrics(p, g, spacing, settings=MM)["hd95"] == pytest.approx(math.hypot(2.5, 0.8))
    # paper mode ignores spacing
    assert binary_metrics(p, g, spacing, settings=PAPER)["hd95"] == pytest.approx(math.sqrt(2))


def test_anisotropic_spacing_matches_brute_force_point_sets():
    rng = np.random.default_rng(3)
    spacing = np.array([2.5, 0.8, 0.8])
    for _ in range(10):
        p = ndimage.gaussian_filter(rng.random((10, 12, 11)), 1.2) > 0.5
        g = ndimage.gaussian_filter(rng.random((10, 12, 11)), 1.2) > 0.5
        if not (p.any() and g.any()):
            continue
        # surfaces by explicit 6-neighbour test with background outside the array
        def surf(m):
            pad = np.pad(m, 1)
            inner = np.ones_like(m)
            for ax in range(3):
                for sh in (-1, 1):
                    inner &= np.roll(pad, sh, axis=ax)[1:-1, 1:-1, 1:-1]
            return m & ~inner
        np.testing.assert_array_equal(surface_mask(p), surf(p))
        sp, sg = np.argwhere(surf(p)) * spacing, np.argwhere(surf(g)) * spacing
        dist = np.sqrt(((sp[:, None, :] - sg[None, :, :]) ** 2).sum(-1))
        d_pg, d_gp = dist.min(1), dist.min(0)
        r = binary_metrics(p, g, spacing, settings=MM)
        assert r["hd95"] == pytest.approx(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)), abs=1e-9)
        assert r["assd"] == pytest.approx(np.concatenate([d_pg, d_gp]).mean(), abs=1e-9)


# ----------------------------------------------------------------------------------------------- property 6
def test_bounding_box_crop_is_exact():
    for p, g in PAIRS[:60]:
        for s, spacing in ((PAPER, None), (MM, (0.7, 1.3, 2.1))):
            a = binary_metrics(p, g, spacing, settings=s, crop=True)
            b = binary_metrics(p, g, spacing, settings=s, crop=False)
            assert a == b
        a, b = directed_surface_distances(p, g, crop=True), directed_surface_distances(p, g, crop=False)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_crop_is_exact_for_small_masks_in_a_large_array():
    p, g = np.zeros((40, 50, 60), bool), np.zeros((40, 50, 60), bool)
    p[20:24, 10:13, 30:38] = True
    g[21:26, 11:13, 28:35] = True
    g[0, 0, 0] = True  # far corner on the array border
    for s in (PAPER, MM):
        assert binary_metrics(p, g, (1.0, 2.0, 3.0), s, crop=True) == binary_metrics(p, g, (1.0, 2.0, 3.0), s,
                                                                                      crop=False)


# ----------------------------------------------------------------------------------------------- property 7
SHAPE, SPACING = (4, 5, 6), (2.0, 1.0, 0.5)  # extent 8 x 5 x 3 mm -> diagonal √98
NAN = float("nan")


def _empty_pair(case):
    p, g = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    if case in ("ref_empty", "none"):
        p[1:3, 1:3, 1:3] = True
    if case in ("pred_empty", "none"):
        g[1:3, 1:3, 2:4] = True
    return p, g


# policy -> empty case -> (dice, jaccard, dist); "diag" = penalty distance
EXPECTED = {
    "penalty": {"both_empty": (NAN, NAN, NAN), "pred_empty": (0, 0, "diag"), "ref_empty": (0, 0, "diag")},
    "nan": {"both_empty": (NAN, NAN, NAN), "pred_empty": (0, 0, NAN), "ref_empty": (0, 0, NAN)},
    "zeros": {"both_empty": (0, 0, 0), "pred_empty": (0, 0, 0), "ref_empty": (0, 0, NAN)},
    "dhc": {"both_empty": (0.01, 0.01, 0), "pred_empty": (0, 0, 128), "ref_empty": (0, 0, 128)},
}


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


@pytest.mark.parametrize("mode", ["mm", "paper"])
@pytest.mark.parametrize("policy", list(EXPECTED))
@pytest.mark.parametrize("case", ["both_empty", "pred_empty", "ref_empty"])
def test_empty_policy_table(mode, policy, case):
    if mode == "mm" and policy in ("zeros", "dhc"):
        with pytest.raises(SettingsError, match="only available in paper mode"):
            resolve_settings(mode, empty_policy=policy)
        return
    s = resolve_settings(mode, empty_policy=policy, include_hd=True)
    r = binary_metrics(*_empty_pair(case), SPACING, settings=s)
    diag = math.sqrt(98) if mode == "mm" else math.sqrt(4 ** 2 + 5 ** 2 + 6 ** 2)
    d, j, dist = EXPECTED[policy][case]
    dist = diag if dist == "diag" else dist
    assert r["empty_case"] == case
    assert _same(r["dice"], d) and _same(r["jaccard"], j)
    for key in ("hd95", s.dist_key, "hd"):
        assert _same(r[key], dist), (key, r[key], dist)
    assert (r["warning"] is not None) == (policy == "zeros" and case == "ref_empty")


def test_penalty_diagonal_and_dhc_constant():
    assert reference_diagonal(SHAPE, SPACING) == pytest.approx(math.sqrt(98))
    assert DHC_EMPTY_DISTANCE == 128.0


@pytest.mark.parametrize("case", ["both_empty", "pred_empty", "ref_empty"])
def test_raise_policy_raises(case):
    s = resolve_settings(preset="medpy")
    with pytest.raises(EmptyMaskError, match="empty"):
        binary_metrics(*_empty_pair(case), settings=s)
    with pytest.raises(EmptyMaskError, match="label 3"):
        p, g = _empty_pair(case)
        label_map_metrics(p.astype(int) * 3, g.astype(int) * 3, [3], settings=s)


def test_non_empty_pair_is_unaffected_by_policy():
    p, g = _empty_pair("none")
    values = {pol: binary_metrics(p, g, settings=resolve_settings("paper", empty_policy=pol))
              for pol in ("penalty", "nan", "zeros", "dhc", "raise")}
    ref = values["raise"]
    assert ref["empty_case"] == "none"
    assert all(v == ref for v in values.values())


# ----------------------------------------------------------------------------------------------- property 8
def test_lcc_keeps_largest_26_connected_component():
    m = np.zeros((8, 8, 8), bool)
    m[0, 0, 0] = m[1, 1, 1] = m[2, 2, 2] = True  # one component of 3 under 26-connectivity (corners touch)
    m[6, 6, 5:7] = True  # 2 voxels
    out = largest_connected_component(m)
    expected = np.zeros_like(m)
    expected[0, 0, 0] = expected[1, 1, 1] = expected[2, 2, 2] = True
    np.testing.assert_array_equal(out, expected)


def test_lcc_ties_keep_lowest_label_and_empty_stays_empty():
    m = np.zeros((6, 6, 6), bool)
    m[4, 4, 4:6] = True  # later in raster order
    m[0, 0, 0:2] = True  # first in raster order
    out = largest_connected_component(m)
    assert out[0, 0, 0] and out[0, 0, 1] and out.sum() == 2
    assert not largest_connected_component(np.zeros((3, 3, 3), bool)).any()


def test_lcc_matches_uamt_getlargestcc_on_random_masks():
    from skimage.measure import label

    rng = np.random.default_rng(7)
    for _ in range(20):
        m = rng.random((12, 13, 14)) < 0.2
        labels = label(m)  # the BCP / UA-MT getLargestCC
        expected = labels == np.argmax(np.bincount(labels.flat)[1:]) + 1
        np.testing.assert_array_equal(largest_connected_component(m), expected)


def test_lcc_in_metrics_applies_per_label_to_prediction_only():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[1:4, 1:4, 1:4] = 1
    ref[6:9, 6:9, 6:9] = 2
    pred = ref.copy()
    pred[8, 0, 0] = 1  # stray voxel of label 1
    pred[0, 9, 9] = 2  # stray voxel of label 2
    ref_extra = ref.copy()
    ref_extra[0, 0, 9] = 1  # a second reference component must NOT be removed
    on = label_map_metrics(pred, ref_extra, [1, 2], settings=resolve_settings(preset="uamt_lcc"))
    off = label_map_metrics(pred, ref_extra, [1, 2], settings=resolve_settings(preset="uamt"))
    assert [r["n_pred"] for r in on] == [27, 27] and [r["n_pred"] for r in off] == [28, 28]
    assert [r["n_ref"] for r in on] == [28, 27]
    assert on[1]["dice"] == 1.0 and on[1]["hd95"] == 0.0 and off[1]["dice"] < 1.0
    assert all(r["lcc_applied"] for r in on) and not any(r["lcc_applied"] for r in off)


# ----------------------------------------------------------------------------------------------- property 9
def _row(case, label, dice, hd95):
    return {"case": case, "label": label, "dice": dice, "jaccard": dice / 2, "hd95": hd95, "assd": hd95 / 2}


def test_aggregation_excludes_and_counts_nan_and_foreground_mean_is_mean_of_label_means():
    rows = [_row("a", 1, 0.5, 2.0), _row("b", 1, 1.0, NAN), _row("c", 1, NAN, NAN),
            _row("a", 2, 0.2, 4.0), _row("b", 2, 0.4, 8.0), _row("c", 2, 0.9, 9.0)]
    agg = aggregate_rows(rows, [1, 2], ("dice", "jaccard", "hd95", "assd"))
    assert agg["mean"]["1"]["dice"] == pytest.approx(0.75)
    assert agg["std"]["1"]["dice"] == pytest.approx(0.25)  # ddof 0
    assert agg["median"]["2"]["hd95"] == pytest.approx(8.0)
    assert agg["mean"]["1"]["hd95"] == pytest.approx(2.0)
    assert agg["mean"]["1"]["n"] == 3
    # n_nan (docs/spec/metrics.md §6, an integer) = cases with any NaN metric: b (hd95, assd) and c (all); per metric separately
    assert agg["mean"]["1"]["n_nan"] == 2 and type(agg["mean"]["1"]["n_nan"]) is int
    assert agg["std"]["1"]["n_nan"] == agg["median"]["1"]["n_nan"] == 2 and agg["mean"]["2"]["n_nan"] == 0
    assert agg["mean"]["1"]["n_nan_per_metric"] == {"dice": 1, "jaccard": 1, "hd95": 2, "assd": 2}
    assert agg["foreground_mean"]["dice"] == pytest.approx((0.75 + 0.5) / 2)
    assert agg["foreground_mean"]["hd95"] == pytest.approx((2.0 + 7.0) / 2)
    # the mean over labels of per-label means differs from the pooled mean over all rows here
    assert agg["foreground_mean"]["dice"] != pytest.approx(np.nanmean([0.5, 1.0, 0.2, 0.4, 0.9]))


def _summary(tmp_path, name, fg_dice, label_dice, preset="dhc", **changed):
    s = {"generator": "nnunetv2_semisup", "mode": "paper", "preset": preset, "empty_policy": "dhc", "lcc": False,
         "units": "voxel", "hd95_definition": "pooled_p95", "asd_definition": "directed_pred_to_ref",
         "labels": {"1": "a"}, "mean": {"1": {"dice": label_dice, "asd": 1.0}},
         "foreground_mean": {"dice": fg_dice, "asd": 1.0}}
    s.update(changed)
    path = tmp_path / name
    path.write_text(json.dumps(s))
    return str(path)


def test_aggregate_runs_mean_and_ddof0_std(tmp_path):
    files = [_summary(tmp_path, f"s{i}.json", d, d) for i, d in enumerate((0.60, 0.64, 0.68))]
    agg = aggregate_runs(files)
    assert agg["n_runs"] == 3
    assert agg["foreground_mean"]["dice"] == pytest.approx(0.64)
    assert agg["foreground_std_over_runs"]["dice"] == pytest.approx(np.std([0.6, 0.64, 0.68], ddof=0))
    assert agg["foreground_std_over_runs"]["dice"] != pytest.approx(np.std([0.6, 0.64, 0.68], ddof=1))
    assert agg["foreground_std_over_runs"]["asd"] == 0.0
    bad = _summary(tmp_path, "other.json", 0.5, 0.5, preset="uamt")
    with pytest.raises(RunAggregationError, match="preset"):
        aggregate_runs(files + [bad])



@pytest.mark.parametrize("key,other", [("mode", "mm"), ("preset", "uamt"), ("empty_policy", "raise"), ("lcc", True),
                                       ("units", "mm"), ("hd95_definition", "medpy"),
                                       ("asd_definition", "symmetric"), ("labels", {"1": "b"})])
def test_aggregate_runs_refuses_each_differing_key(tmp_path, key, other):
    """Each setting that changes the numbers refuses on its own, naming itself (not only the preset)."""
    files = [_summary(tmp_path, f"s{i}.json", 0.6, 0.6) for i in range(2)]
    reference = json.loads(open(files[0]).read())
    assert reference[key] != other, "the test must change the key"
    bad = _summary(tmp_path, "bad.json", 0.6, 0.6, **{key: other})
    assert json.loads(open(bad).read())[key] == other
    with pytest.raises(RunAggregationError, match=f"{key} = "):
        aggregate_runs(files + [bad])



def test_aggregate_runs_records_inputs_and_checks_every_run(tmp_path):
    """One run aggregates to itself; the record names its inputs, settings and per-run means; a run that differs
    is refused wherever it stands (second of two included); a missing metric (None, written for NaN) gives NaN."""
    one = _summary(tmp_path, "one.json", 0.7, 0.6)
    agg = aggregate_runs([one])
    assert agg["n_runs"] == 1 and agg["foreground_std_over_runs"]["dice"] == 0.0
    assert agg["aggregate_of"] == [one] and agg["std_ddof"] == 0 and agg["preset"] == "dhc"
    assert agg["labels"] == {"1": "a"} and agg["per_label_mean"]["1"]["dice"] == pytest.approx(0.6)
    two = _summary(tmp_path, "two.json", 0.5, 0.4)
    agg = aggregate_runs([one, two])
    assert agg["run_foreground_means"] == [{"dice": 0.7, "asd": 1.0}, {"dice": 0.5, "asd": 1.0}]
    for order in ([one, _summary(tmp_path, "bad.json", 0.5, 0.5, lcc=True)],
                  [_summary(tmp_path, "bad2.json", 0.5, 0.5, lcc=True), one, two]):
        with pytest.raises(RunAggregationError, match="lcc = "):
            aggregate_runs(order)
    missing = _summary(tmp_path, "missing.json", 0.5, 0.5)
    s = json.loads(open(missing).read())
    s["foreground_mean"]["asd"] = None
    open(missing, "w").write(json.dumps(s))
    agg = aggregate_runs([one, missing])
    assert math.isnan(agg["foreground_mean"]["asd"]) and agg["foreground_mean"]["dice"] == pytest.approx(0.6)
    for bad_content, msg in (("{not json", "cannot read summary"), (json.dumps({"generator": "other"}),
                                                                      "is not a summary.json")):
        path = tmp_path / "broken.json"
        path.write_text(bad_content)
        with pytest.raises(RunAggregationError, match=msg):
            aggregate_runs([one, str(path)])
    with pytest.raises(RunAggregationError, match="at least one"):
        aggregate_runs([])
    no_fg = tmp_path / "nofg.json"
    no_fg.write_text(json.dumps({"generator": "nnunetv2_semisup"}))
    with pytest.raises(RunAggregationError, match="is not a summary.json"):
        aggregate_runs([one, str(no_fg)])


# ----------------------------------------------------------------------------------------------- settings
def test_settings_resolution():
    assert resolve_settings() == EvalSettings("mm", None, "penalty", False)
    assert resolve_settings(preset="uamt_lcc") == EvalSettings("paper", "uamt_lcc", "zeros", True)
    assert resolve_settings(preset="dhc").empty_policy == "dhc"
    assert resolve_settings(preset="medpy").empty_policy == "raise"
    assert resolve_settings("paper") == EvalSettings("paper", None, "zeros", False)
    assert resolve_settings("paper", lcc=True).lcc
    for kwargs, msg in (({"mode": "mm", "preset": "uamt"}, "paper-mode preset"),
                        ({"preset": "uamt", "lcc": True}, "uamt_lcc"),
                        ({"preset": "dhc", "empty_policy": "zeros"}, "contradicts"),
                        ({"mode": "mm", "lcc": True}, "paper-mode post-processing"),
                        ({"mode": "voxel"}, "unknown mode")):
        with pytest.raises(SettingsError, match=msg):
            resolve_settings(**kwargs)


# ------------------------------------------------------------------------------------- small facts, by hand
def test_overlap_reads_any_nonzero_label_as_foreground_and_empty_pairs_are_nan():
    from nnunetv2_semisup.evaluation.metrics import dice, jaccard
    pred, ref = np.array([0, 2, 2, 0]), np.array([0, 1, 0, 0])   # 2 and 1 are both "foreground" (2 & 1 == 0 as ints)
    assert dice(pred, ref) == pytest.approx(2 * 1 / (2 + 1)) and jaccard(pred, ref) == pytest.approx(1 / 2)
    empty = np.zeros(4, int)
    assert math.isnan(dice(empty, empty)) and math.isnan(jaccard(empty, empty))
    assert dice(empty, ref) == 0.0 and jaccard(pred, empty) == 0.0


def test_union_bounding_box_margin_and_clipping_by_hand():
    from nnunetv2_semisup.evaluation.metrics import union_bounding_box
    a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    a[4, 5], b[6, 2] = True, True
    assert union_bounding_box(a, b, margin=1) == (slice(3, 8), slice(1, 7))
    assert union_bounding_box(a, b, margin=0) == (slice(4, 7), slice(2, 6))
    c = np.zeros((10, 10), bool)
    c[0, 9] = True
    assert union_bounding_box(c, np.zeros_like(c), margin=2) == (slice(0, 3), slice(7, 10))  # clipped both ends
    assert union_bounding_box(np.zeros_like(c), np.zeros_like(c)) is None


def test_spacing_scalar_broadcast_and_invalid_spacing_refused():
    from nnunetv2_semisup.evaluation.metrics import directed_surface_distances
    p, g = np.zeros((1, 1, 8), bool), np.zeros((1, 1, 8), bool)
    p[0, 0, 1], g[0, 0, 5] = True, True                      # 4 voxels apart along the last axis
    d_pg, d_gp = directed_surface_distances(p, g, spacing=2.5, crop=False)
    assert d_pg.tolist() == [10.0] and d_gp.tolist() == [10.0]
    assert directed_surface_distances(p, g, spacing=(1.0, 1.0, 0.5))[0].tolist() == [2.0]
    for bad in ((1.0, 1.0), (1.0, -1.0, 1.0), (1.0, 0.0, 1.0), (1.0, float("nan"), 1.0), (1.0, float("inf"), 1.0)):
        with pytest.raises(ValueError, match="spacing must be 3 positive finite numbers"):
            directed_surface_distances(p, g, spacing=bad)
