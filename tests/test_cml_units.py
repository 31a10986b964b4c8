"""CML unit tests: docs/spec/cml.md §5 properties 1-9, 12, 14, 15 (fast, no dataset needed)."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from dynamic_network_architectures.architectures.unet import PlainConvUNet
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

from nnunetv2_semisup.methods.cml.losses import cml_sup_loss, dice_ps_loss, feature_discrepancy
from nnunetv2_semisup.methods.cml.pseudo_labels import cml_pseudo_labels, largest_component_per_class
from nnunetv2_semisup.methods.cml.network import CMLDualNetwork, InterpConvUpsample, make_decoder_heterogeneous
from nnunetv2_semisup.methods.cml.trainer import pretrain_epochs_for, resolve_pair_batch_size
from nnunetv2_semisup.methods.cml.cutmix import (box_sides, cutmix_box_mask, cutmix_pairs, ds_targets,
                                                heterogeneous_targets)

FULL = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


# ---------------------------------------------------------------- 1. CutMix mask
@pytest.mark.parametrize("patch", [(16, 32, 32), (80, 112, 112), (5, 7, 9)])
def test_mask_has_one_box_of_floor_beta_sides(patch):
    torch.manual_seed(0)
    mask, corner = cutmix_box_mask(patch, 2 / 3)
    sides = tuple(math.floor(2 * s / 3) for s in patch)  # exact integer arithmetic
    assert box_sides(patch, 2 / 3) == sides
    zeros = (mask == 0).numpy()
    assert set(np.unique(mask.numpy())) == {0.0, 1.0}
    assert zeros.sum() == np.prod(sides)
    labels, n = ndimage.label(zeros)
    assert n == 1
    bbox = ndimage.find_objects(labels)[0]
    assert tuple(sl.stop - sl.start for sl in bbox) == sides
    assert tuple(sl.start for sl in bbox) == corner


def test_la_box_sides_match_reference():
    # reference LA patch 112 x 112 x 80 -> 74 x 74 x 53
    assert box_sides((112, 112, 80), 2 / 3) == (74, 74, 53)


def test_mask_every_corner_occurs_including_last():
    patch = (4, 5, 6)  # sides 2, 3, 4 -> corners 0..2 on every axis
    g = torch.Generator().manual_seed(1)
    corners = [cutmix_box_mask(patch, 2 / 3, generator=g)[1] for _ in range(400)]
    for axis in range(3):
        assert {c[axis] for c in corners} == {0, 1, 2}


def test_mask_full_and_empty_box():
    mask, corner = cutmix_box_mask((3, 3, 3), 1.0)
    assert corner == (0, 0, 0) and mask.sum() == 0
    mask, corner = cutmix_box_mask((1, 8, 8), 2 / 3)  # floor(2/3) = 0 -> no mixing
    assert corner == () and torch.all(mask == 1)


# ---------------------------------------------------------------- 2. mixing sources, shared mask
def test_mix_takes_a_outside_and_b_inside_for_images_and_labels():
    torch.manual_seed(2)
    b = 4
    x = torch.randn(b, 1, 6, 6, 6)
    y = torch.arange(b).view(b, 1, 1, 1, 1).expand(b, 1, 6, 6, 6).clone()
    mask, _ = cutmix_box_mask((6, 6, 6), 2 / 3)
    xm, ym = cutmix_pairs(x, mask), cutmix_pairs(y, mask)
    assert xm.shape[0] == ym.shape[0] == b // 2
    m = mask.bool()
    for i in range(b // 2):  # the same mask for every pair (a = i, b = i + B/2)
        assert torch.equal(xm[i, 0][m], x[i, 0][m]) and torch.equal(xm[i, 0][~m], x[i + 2, 0][~m])
        assert torch.all(ym[i, 0][m] == i) and torch.all(ym[i, 0][~m] == i + 2)
    assert ym.dtype == y.dtype
    with pytest.raises(ValueError, match="even"):
        cutmix_pairs(x[:3], mask)


# ---------------------------------------------------------------- 3. heterogeneous targets (eq. 9)
def test_heterogeneous_targets_constant_pseudo_labels():
    mask, _ = cutmix_box_mask((6, 6, 6), 2 / 3)
    m = mask.bool()
    pl1, pl2 = torch.ones(2, 6, 6, 6, dtype=torch.long), torch.full((2, 6, 6, 6), 2, dtype=torch.long)
    t1, t2 = heterogeneous_targets(pl1, pl2, mask)
    assert torch.all(t1[:, m] == 2) and torch.all(t1[:, ~m] == 1)  # outside: other subnet, inside: own
    assert torch.all(t2[:, m] == 1) and torch.all(t2[:, ~m] == 2)


def test_heterogeneous_targets_take_the_right_samples():
    mask, _ = cutmix_box_mask((6, 6, 6), 2 / 3)
    m = mask.bool()
    pl1 = torch.arange(10, 14).view(4, 1, 1, 1).expand(4, 6, 6, 6)
    pl2 = torch.arange(20, 24).view(4, 1, 1, 1).expand(4, 6, 6, 6)
    t1, t2 = heterogeneous_targets(pl1, pl2, mask)
    for i in range(2):
        assert torch.all(t1[i][m] == 20 + i) and torch.all(t1[i][~m] == 12 + i)
        assert torch.all(t2[i][m] == 10 + i) and torch.all(t2[i][~m] == 22 + i)


# ---------------------------------------------------------------- 4./5. discrepancy
def test_discrepancy_values():
    torch.manual_seed(3)
    f = torch.randn(2, 8, 3, 3, 3, dtype=torch.float64)
    assert feature_discrepancy(f, f).item() == pytest.approx(2.0, abs=1e-6)
    assert feature_discrepancy(f, -f).item() == pytest.approx(0.0, abs=1e-6)
    e1 = torch.zeros(1, 2, 2, 2, 2, dtype=torch.float64)
    e1[:, 0] = 3.0
    e2 = torch.zeros_like(e1)
    e2[:, 1] = 0.5
    assert feature_discrepancy(e1, e2).item() == pytest.approx(1.0, abs=1e-6)
    for _ in range(5):
        d = feature_discrepancy(torch.randn(2, 4, 2, 3, 3), torch.randn(2, 4, 2, 3, 3)).item()
        assert 0.0 <= d <= 2.0


def test_discrepancy_is_mean_of_per_voxel_cosines():
    # two voxels, two channels: f_a = (1,0),(1,0); f_b = (2,0),(0,1) -> cosines 1, 0 -> dis = 1.5
    f_a = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64).view(1, 2, 2, 1, 1)
    f_b = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64).view(1, 2, 2, 1, 1)
    assert feature_discrepancy(f_a, f_b).item() == pytest.approx(1.5, abs=1e-6)
    flat = torch.nn.functional.cosine_similarity(f_a.flatten(), f_b.flatten(), dim=0).item()
    assert 1 + flat == pytest.approx(1 + 2 / math.sqrt(10))  # the flattened cosine would differ
    assert abs((1 + flat) - 1.5) > 0.1


def test_discrepancy_gradient_only_reaches_first_argument():
    torch.manual_seed(4)
    f_a = torch.randn(2, 4, 2, 2, 2, requires_grad=True)
    f_b = torch.randn(2, 4, 2, 2, 2, requires_grad=True)
    feature_discrepancy(f_a, f_b).backward()
    assert f_b.grad is None or torch.count_nonzero(f_b.grad) == 0
    assert f_a.grad is not None and torch.count_nonzero(f_a.grad) > 0


# ---------------------------------------------------------------- 6./7. supervised loss
def test_sup_near_zero_for_confident_correct_logits():
    torch.manual_seed(5)
    y = torch.randint(0, 3, (2, 1, 4, 4, 4))
    logits = 20.0 * torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).double()
    assert cml_sup_loss(logits, y).item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("v", [1000, 100 ** 3])
def test_sup_zero_logits_all_background(v):
    logits = torch.zeros(1, 2, v, 1, 1)
    y = torch.zeros(1, 1, v, 1, 1, dtype=torch.long)
    expected = 0.5 * (math.log(2) + 1 - 0.5 * (2 * 0.5 * v + 1e-5) / (1.5 * v + 1e-5)
                      - 0.5 * 1e-5 / (0.5 * v + 1e-5))
    assert cml_sup_loss(logits, y).item() == pytest.approx(expected, abs=1e-6)
    if v == 100 ** 3:
        assert cml_sup_loss(logits, y).item() == pytest.approx(0.67991, abs=1e-5)


def test_dice_is_per_sample_and_includes_background():
    torch.manual_seed(6)
    logits = torch.randn(2, 3, 4, 4, 4)
    y = torch.randint(0, 3, (2, 1, 4, 4, 4))
    y[1] = 0  # very different samples: per-batch Dice would differ from the mean of per-sample Dice
    per_sample = [dice_ps_loss(logits[i:i + 1], y[i:i + 1]) for i in range(2)]
    assert dice_ps_loss(logits, y).item() == pytest.approx(float(sum(per_sample) / 2), abs=1e-6)
    sups = [cml_sup_loss(logits[i:i + 1], y[i:i + 1]) for i in range(2)]
    assert cml_sup_loss(logits, y).item() == pytest.approx(float(sum(sups) / 2), abs=1e-6)
    # hand value: C = 2, two foreground voxels, p = 0.5 -> d_bg = 1e-5/(1 + 1e-5), d_fg = (2 + 1e-5)/(3 + 1e-5)
    two = torch.zeros(1, 2, 2, 1, 1)
    y_fg = torch.ones(1, 1, 2, 1, 1, dtype=torch.long)
    expected = 1 - 0.5 * (1e-5 / (1 + 1e-5) + (2 * 1.0 + 1e-5) / (1 + 2 + 1e-5))
    assert dice_ps_loss(two, y_fg).item() == pytest.approx(expected, abs=1e-6)  # 1/3 without background


# ---------------------------------------------------------------- 8./9. pseudo-labels
def _logits_from_labels(seg: np.ndarray, c: int) -> torch.Tensor:
    return 10.0 * torch.nn.functional.one_hot(torch.from_numpy(seg).long(), c).movedim(-1, 1).float()


def test_binary_pseudo_labels_threshold_and_lcc():
    seg = np.zeros((1, 8, 8, 8), dtype=np.int64)
    seg[0, 0:2, 0:2, 0:2] = 1  # two cubes touching only at a corner: one 26-component of 16 voxels
    seg[0, 2:4, 2:4, 2:4] = 1
    seg[0, 6:8, 6:8, 0:1] = 1  # separate, 4 voxels: removed
    logits = _logits_from_labels(seg, 2)
    logits[0, :, 5, 0, 7] = 0.0  # p1 = 0.5 exactly -> foreground (isolated -> removed by LCC)
    raw, _ = cml_pseudo_labels(logits, lcc=False)
    assert raw[0, 5, 0, 7] == 1
    pl, removed = cml_pseudo_labels(logits, lcc=True)
    assert ndimage.label(pl[0].numpy() > 0, FULL)[1] == 1
    assert pl[0].sum() == 16 and pl[0, 0, 0, 0] == 1 and pl[0, 3, 3, 3] == 1 and pl[0, 7, 7, 0] == 0
    assert removed == pytest.approx(5 / 21)
    empty, removed = cml_pseudo_labels(_logits_from_labels(np.zeros((2, 4, 4, 4), np.int64), 2))
    assert empty.sum() == 0 and removed == 0.0


def test_multiclass_lcc_one_component_per_class_and_ties():
    seg = np.zeros((6, 6, 6), dtype=np.int64)
    seg[0, 0, 0:3] = 1  # class 1: 3 voxels (kept)
    seg[5, 5, 5] = 1  # class 1: 1 voxel (removed)
    seg[3, 0, 0:2] = 2  # class 2: tie 2 vs 2 -> lowest component index (raster order) kept
    seg[3, 5, 0:2] = 2
    seg[0, 1, 0:3] = 3  # class 3 touches class 1; one component, untouched
    out = largest_component_per_class(seg)
    assert out[0, 0, 0:3].tolist() == [1, 1, 1] and out[5, 5, 5] == 0
    assert out[3, 0, 0:2].tolist() == [2, 2] and out[3, 5, 0:2].tolist() == [0, 0]
    assert np.array_equal(out[seg == 3], seg[seg == 3])


def test_multiclass_lcc_random_against_scipy():
    rng = np.random.default_rng(7)
    for _ in range(5):
        seg = rng.integers(0, 4, (8, 9, 10)) * (rng.random((8, 9, 10)) < 0.3)
        out = largest_component_per_class(seg)
        assert np.all((out == seg) | (out == 0))  # only removals, to background
        for c in range(1, 4):
            lab, n = ndimage.label(seg == c, FULL)
            sizes = np.bincount(lab.ravel())[1:]
            kept_lab, kept_n = ndimage.label(out == c, FULL)
            assert kept_n == min(n, 1)
            if n:
                assert (out == c).sum() == sizes.max()
                assert np.all(lab[out == c] == 1 + np.argmax(sizes))
        assert np.array_equal(out == 0, (seg == 0) | ((seg != 0) & (out == 0)))
    # through the pseudo-label path: argmax for C > 2
    pl, _ = cml_pseudo_labels(_logits_from_labels(seg[None], 4))
    assert np.array_equal(pl[0].numpy(), largest_component_per_class(seg))


# ---------------------------------------------------------------- 11 (network part)/12. networks
def _tiny_unet(ds: bool) -> PlainConvUNet:
    net = PlainConvUNet(1, 3, (4, 8, 8), torch.nn.Conv3d, 3, ((1, 1, 1), (1, 2, 2), (2, 2, 2)), 1, 3, 1, True,
                        torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU,
                        {"inplace": True}, deep_supervision=ds)
    net.apply(net.initialize)
    return net


@pytest.mark.parametrize("ds", [False, True])
def test_wrapper_forward_is_average_of_logits(ds):
    torch.manual_seed(8)
    dual = CMLDualNetwork(_tiny_unet(ds), _tiny_unet(ds)).eval()
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        out = dual(x)
        a, b = dual.net1(x), dual.net2(x)
        o1, o2, f1, f2 = dual(x, return_all=True)
    if ds:
        assert isinstance(out, list) and len(out) == 2
        for o, i, j in zip(out, a, b):
            assert torch.equal(o, (i + j) / 2)
    else:
        assert torch.equal(out, (a + b) / 2)
    assert f1.shape == f2.shape == (2, 8, 4, 4, 4)  # deepest encoder stage
    with torch.no_grad():
        assert torch.equal(f1, dual.net1.encoder(x)[-1]) and torch.equal(f2, dual.net2.encoder(x)[-1])
    dual.set_deep_supervision(not ds)
    assert dual.net1.decoder.deep_supervision == dual.net2.decoder.deep_supervision == (not ds)


def test_hetero_decoder_has_no_transposed_conv_and_same_shapes():
    torch.manual_seed(9)
    plain, hetero = _tiny_unet(True), make_decoder_heterogeneous(_tiny_unet(True))
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in hetero.modules())
    ups = [m for m in hetero.modules() if isinstance(m, InterpConvUpsample)]
    assert len(ups) == 2 and all(u.conv.kernel_size == (3, 3, 3) and u.conv.bias is not None for u in ups)
    assert ups[0].scale == (2.0, 2.0, 2.0) and ups[1].scale == (1.0, 2.0, 2.0)
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        assert [o.shape for o in plain(x)] == [o.shape for o in hetero(x)]


# ---------------------------------------------------------------- 14. batch sizes, stage length
def test_pair_batch_sizes():
    b, note = resolve_pair_batch_size(3)
    assert b == 2 and "3 -> 2" in note
    assert resolve_pair_batch_size(1)[0] == 2
    assert resolve_pair_batch_size(2) == (2, None)
    # a size the user set (global over the GPUs): the per-GPU share is used as it is, or refused when odd
    assert resolve_pair_batch_size(4, 4) == (4, None)
    assert resolve_pair_batch_size(4, 8, world_size=2) == (4, None)
    for per_gpu, override, world, suggestion in ((3, 3, 1, 4), (1, 1, 1, 2), (3, 6, 2, 8), (5, 10, 2, 8)):
        with pytest.raises(ValueError, match=f"batch_size_override={override} .* {per_gpu} patches per GPU on "
                                             f"{world} GPU.* batch_size_override={suggestion}\\)"):
            resolve_pair_batch_size(per_gpu, override, world)


def test_pretrain_epochs():
    assert pretrain_epochs_for(1000, 0.12) == 120
    assert pretrain_epochs_for(85, 0.12) == 10
    assert pretrain_epochs_for(25, 0.1) == 3  # 2.5 rounds half up
    assert pretrain_epochs_for(80, 0.12) == 10  # the CPU benchmark's 80 epochs: 9.6 -> 10
    # short runs keep one epoch of each stage: 0.12·4 = 0.48 would round to no pretraining, 0.9·4 to no self-training
    assert [pretrain_epochs_for(e, 0.12) for e in (1, 2, 3, 4, 5)] == [0, 1, 1, 1, 1]
    assert pretrain_epochs_for(4, 0.9) == 3 and pretrain_epochs_for(10, 0.0) == 0 and pretrain_epochs_for(4, 1.0) == 4


# ---------------------------------------------------------------- 15. DS targets of mixed labels
def test_ds_targets_of_mixed_labels():
    torch.manual_seed(10)
    y = torch.randint(0, 4, (4, 1, 8, 16, 16)).to(torch.int16)
    mask, _ = cutmix_box_mask((8, 16, 16), 2 / 3)
    ym = cutmix_pairs(y, mask)
    scales = [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5], [0.5, 0.25, 0.25]]
    targets = ds_targets(ym, scales)
    assert torch.equal(targets[0], ym)
    transform = DownsampleSegForDSTransform(ds_scales=scales)
    for i in range(ym.shape[0]):  # nnU-Net's transform, one sample at a time as in its DA pipeline
        per_sample = transform(segmentation=ym[i])["segmentation"]
        for t, ref in zip(targets, per_sample):
            assert torch.equal(t[i], ref)
    assert targets[1].shape == (2, 1, 8, 8, 8) and targets[2].shape == (2, 1, 4, 4, 4)
    assert ds_targets(ym, None) == [ym]
