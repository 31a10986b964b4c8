"""M&N 2D wrapper and slicing (docs/spec/mn.md §5 properties 15–20), with a tiny SegFormer saved by ``save_pretrained``
to a temporary folder and loaded through ``nnUNet_semisup_segformer`` (the real ``from_pretrained`` path)."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from nnunetv2_semisup.methods.mn.losses import MNLoss
from nnunetv2_semisup.methods.mn.segformer import (SEGFORMER_ENV, SegFormerWeightsError, build_segformer_2d,
                                                   save_tiny_segformer, segformer_checkpoint_from_env)
from nnunetv2_semisup.methods.mn.slicing import from_slices, slicewise_forward, to_slices

C = 4
HIDDEN = 16  # decoder_hidden_size of the tiny config


@pytest.fixture(scope="module")
def tiny_segformer(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny_segformer"))
    save_tiny_segformer(folder, decoder_hidden_size=HIDDEN)
    old = os.environ.get(SEGFORMER_ENV)
    os.environ[SEGFORMER_ENV] = folder
    yield folder
    if old is None:
        os.environ.pop(SEGFORMER_ENV, None)
    else:
        os.environ[SEGFORMER_ENV] = old


def build(mode="lora", in_channels=1, **kw):
    torch.manual_seed(0)
    return build_segformer_2d(segformer_checkpoint_from_env(), in_channels, C, mode, log=lambda *_: None, **kw)


def test_checkpoint_comes_from_env(tiny_segformer):
    assert segformer_checkpoint_from_env() == tiny_segformer


def test_output_shapes_and_head(tiny_segformer):  # property 15
    m = build().eval()
    with torch.no_grad():
        assert m(torch.randn(3, 1, 64, 48)).shape == (3, C, 64, 48)
        assert m(torch.randn(2, 1, 30, 22)).shape == (2, C, 30, 22)  # 4·⌈H/4⌉ × 4·⌈W/4⌉ cropped
        m2 = build(in_channels=2).eval()
        assert m2(torch.randn(2, 2, 32, 32)).shape == (2, C, 32, 32)
    assert m.adapter is None and isinstance(m2.adapter, nn.Sequential)
    assert [type(x) for x in m2.adapter] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert m2.adapter[0].out_channels == m2.adapter[2].out_channels == 16 and m2.adapter[4].out_channels == 3
    h = m.head
    assert isinstance(h, nn.ConvTranspose2d)
    assert (h.in_channels, h.out_channels, h.kernel_size, h.stride, h.padding) == (HIDDEN + 3, C, (4, 4), (4, 4),
                                                                                     (0, 0))
    assert isinstance(m.hf_model().decode_head.classifier, nn.Identity)


def _is_layernorm_name(n):
    return ".layer_norm." in n or ".layernorm_before." in n or ".layernorm_after." in n


def test_trainable_parameter_sets(tiny_segformer):  # property 16
    lora = build("lora", in_channels=2)
    names = [n for n, _ in lora.named_parameters()]
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    expected = {n for n in names if ".lora_A." in n or ".lora_B." in n or n.endswith(".bias") or _is_layernorm_name(n)
                or n.startswith("head.") or n.startswith("adapter.")}
    assert trainable == expected
    assert any("decode_head.batch_norm.bias" in n for n in trainable)
    assert not any("decode_head.batch_norm.weight" in n for n in trainable)
    assert not any(n.endswith("base_layer.weight") for n in trainable)
    # every encoder linear layer of the plain model got a LoRA adapter (6 per transformer block)
    whole = build("whole")
    n_linear = sum(isinstance(m, nn.Linear) for m in whole.hf_model().segformer.modules())
    assert n_linear == 6 * 2  # tiny config: 2 blocks
    assert sum(".lora_A." in n for n in trainable) == n_linear
    assert all(p.requires_grad for p in whole.parameters())
    dec = build("decoder")
    dec_trainable = {n for n, p in dec.named_parameters() if p.requires_grad}
    dec_names = {n for n, _ in dec.named_parameters()}
    assert dec_trainable == {n for n in dec_names if not n.startswith("segformer.segformer.")}
    assert any(n.startswith("segformer.decode_head.") for n in dec_trainable)
    assert any(n.startswith("head.") for n in dec_trainable)


    frozen = build("freeze", in_channels=2)
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == \
        {n for n, _ in frozen.named_parameters() if n.startswith("head.") or n.startswith("adapter.")}


def test_scratch_builds_the_config_with_random_weights(tiny_segformer):
    """``pretrained=False``: same architecture as the checkpoint, none of its weights (explicit, never a fallback)."""
    pre = build("whole")
    torch.manual_seed(1)  # the tiny checkpoint itself was drawn with seed 0 (build()'s seed)
    scratch = build_segformer_2d(segformer_checkpoint_from_env(), 1, C, "whole", log=lambda *_: None,
                                 pretrained=False)
    a, b = pre.hf_model().state_dict(), scratch.hf_model().state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    w = "segformer.stages.0.patch_embeddings.proj.weight"
    assert not torch.equal(a[w], b[w])
    with pytest.raises(SegFormerWeightsError, match=SEGFORMER_ENV):
        build_segformer_2d("/nonexistent/segformer", 1, C, "whole", log=lambda *_: None, pretrained=False)


@pytest.mark.parametrize("in_channels", [2, 3, 5])
def test_adapter_passes_every_channel_at_initialisation(tiny_segformer, in_channels):
    """Issue 12 §4: at initialisation the adapter computes RGB = A·x with colour k = mean of the channels i ≡ k
    (mod 3) (colours without a channel: mean of all), written out here per case; every channel changes the image."""
    m = build(in_channels=in_channels)
    x = torch.rand(2, in_channels, 12, 8)  # [0, 1], as after the patch mapping
    rgb = m.adapter(x)
    if in_channels == 2:
        expected = torch.stack((x[:, 0], x[:, 1], x.mean(1)), 1)
    elif in_channels == 3:
        expected = x
    else:  # 5 channels: R = mean(0, 3), G = mean(1, 4), B = 2
        expected = torch.stack(((x[:, 0] + x[:, 3]) / 2, (x[:, 1] + x[:, 4]) / 2, x[:, 2]), 1)
    torch.testing.assert_close(rgb, expected, atol=1e-6, rtol=1e-6)
    for c in range(in_channels):
        y = x.clone()
        y[:, c] = torch.rand_like(y[:, c])
        assert (m.adapter(y) - rgb).abs().amax() > 1e-3, c
    # every hidden unit carries a channel (no dead unit at the start)
    assert ((m.adapter[1](m.adapter[0](x)) > 0).flatten(2).any(-1)).all()


def test_patch_mapping_to_unit_range():
    """Each (sample, channel) of a 3D patch: 0.5th/99.5th percentiles → 0/1, clipped, one mapping per patch (all
    slices share it); a constant channel maps to 0; z-scored signed input is no longer cut by the adapter's ReLU."""
    from nnunetv2_semisup.methods.mn.segformer import patch_to_unit_range
    torch.manual_seed(0)
    x = torch.randn(2, 2, 6, 10, 10)
    x[1, 0] = x[1, 0] * 10 + 100
    x[1, 1] = 3.0
    y = patch_to_unit_range(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    for n in range(2):
        for c in range(2):
            flat = x[n, c].flatten()
            if flat.std() == 0:
                assert (y[n, c] == 0).all()
                continue
            lo, hi = torch.quantile(flat, 0.005), torch.quantile(flat, 0.995)
            torch.testing.assert_close(y[n, c], ((x[n, c] - lo) / (hi - lo)).clamp(0, 1), atol=1e-5, rtol=1e-5)
    # the old path: ReLU(Σ of two z-scored channels) is zero for about half the pixels; after the mapping none is
    z = torch.randn(1, 2, 4, 32, 32)
    assert (torch.relu(z.sum(1)) == 0).float().mean() > 0.4
    assert (patch_to_unit_range(z).sum(1) == 0).float().mean() < 0.01


def test_imagenet_normalisation_of_the_rgb_input(tiny_segformer):
    """``imagenet_normalization``: the [0, 1] RGB image is normalised with SegformerImageProcessor's ImageNet
    mean/std — (x − mean)/std per colour — before the SegFormer; the buffers are not checkpoint keys."""
    m = build(imagenet_normalization=True)
    plain = build()
    x = torch.rand(2, 1, 16, 16)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(m.pixel_values(x), (x.repeat(1, 3, 1, 1) - mean[:, None, None]) / std[:, None, None])
    torch.testing.assert_close(plain.pixel_values(x), x.repeat(1, 3, 1, 1))
    assert m.state_dict().keys() == plain.state_dict().keys()


def test_lora_initially_equals_unwrapped(tiny_segformer):  # property 17
    plain = build("whole").eval()
    lora = build("lora").eval()
    lora.head.load_state_dict(plain.head.state_dict())
    x = torch.randn(2, 1, 32, 40)
    with torch.no_grad():
        assert torch.allclose(plain(x), lora(x), atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_round_trip(axis):  # property 18
    x = torch.randn(2, 3, 4, 5, 6)
    s = to_slices(x, axis)
    S = x.shape[2 + axis]
    assert s.shape[0] == 2 * S
    for n in range(2):
        for k in range(S):
            assert torch.equal(s[n * S + k], x.select(2 + axis, k)[n])
    assert torch.equal(from_slices(s, 2, axis), x)


def test_chunked_and_checkpointed_forward(tiny_segformer):  # property 19
    m = build("lora")
    for p in m.parameters():  # non-zero LoRA B so that LoRA gradients are non-trivial
        if p.requires_grad and p.ndim > 1:
            nn.init.normal_(p, std=0.05)
    m.eval()
    x = torch.randn(2, 1, 6, 32, 32)
    with torch.no_grad():
        full = slicewise_forward(m, x, axis=0, chunk_size=0)
        chunked = slicewise_forward(m, x, axis=0, chunk_size=5)
    assert torch.allclose(full, chunked, atol=1e-5)
    y = torch.softmax(torch.randn(2, C, 6, 32, 32), 1)
    loss = MNLoss()
    grads = []
    for ckpt in (True, False):
        m.zero_grad(set_to_none=True)
        value = loss(slicewise_forward(m, x, axis=0, chunk_size=4, use_checkpointing=ckpt), y)
        value.backward()
        grads.append((value.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (l1, g1), (l2, g2) = grads
    assert abs(l1 - l2) < 1e-5 and g1.keys() == g2.keys() and len(g1) > 0
    for n in g1:
        assert torch.allclose(g1[n], g2[n], atol=1e-5), n


def test_checkpointing_updates_batchnorm_stats_once(tiny_segformer):
    """Train mode: the checkpoint recomputation must not update the decode-head BatchNorm statistics again."""
    stats = []
    for ckpt in (True, False):
        m = build("lora").train()
        torch.manual_seed(1)
        out = slicewise_forward(m, torch.randn(1, 1, 4, 32, 32), axis=0, chunk_size=2, use_checkpointing=ckpt)
        out.sum().backward()
        bn = m.hf_model().decode_head.batch_norm
        stats.append((bn.running_mean.clone(), bn.running_var.clone()))
    assert torch.allclose(stats[0][0], stats[1][0], atol=1e-6) and torch.allclose(stats[0][1], stats[1][1], atol=1e-6)


def test_missing_checkpoint_names_the_variable(tmp_path):  # property 20
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in (str(empty), str(tmp_path / "does" / "not" / "exist")):
        with pytest.raises(SegFormerWeightsError, match=SEGFORMER_ENV):
            build_segformer_2d(bad, 1, C, log=lambda *_: None)
    # a hub id that is not cached, offline: same error (fresh process so the offline flag is honoured)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"),
               **{SEGFORMER_ENV: "nnunetv2-semisup-test/no-such-segformer"})
    code = ("from nnunetv2_semisup.methods.mn.segformer import *\n"
            "try:\n    build_segformer_2d(segformer_checkpoint_from_env(), 1, 3)\n"
            "except SegFormerWeightsError as e:\n    print('ERR', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "ERR" in proc.stdout and SEGFORMER_ENV in proc.stdout, proc.stdout + proc.stderr
    assert "nnunetv2-semisup-test/no-such-segformer" in proc.stdout


def test_input_window_from_the_plans_by_hand():
    """CT (nnU-Net: clip to the foreground's 0.5/99.5 percentiles, z-score with its mean/std): the window is that
    clip range in z units, so HU → [0, 1] is one fixed HU window; ``reference``: [−175, 250] HU; z-scored: [−3, 3]."""
    from nnunetv2_semisup.methods.mn.segformer import apply_window, input_window
    props = {"0": {"mean": 50.0, "std": 100.0, "percentile_00_5": -950.0, "percentile_99_5": 1050.0},
             "1": {"mean": 3.0, "std": 2.0, "percentile_00_5": 1.0, "percentile_99_5": 9.0}}
    lows, highs = input_window(["CTNormalization", "ZScoreNormalization"], props)
    assert lows == pytest.approx([-10.0, -3.0]) and highs == pytest.approx([10.0, 3.0])
    lows, highs = input_window(["CTNormalization", "NoNormalization"], props, "reference")
    assert lows == pytest.approx([-2.25, 1.0]) and highs == pytest.approx([2.0, 9.0])
    # 40 HU → z = −0.1 → (−0.1 + 2.25) / 4.25 = 0.50588, whatever else is in the patch (the reference: 215 / 425)
    z = torch.full((1, 1, 2, 2, 2), -0.1)
    assert float(apply_window(z, torch.tensor([-2.25]), torch.tensor([2.0]))[0, 0, 0, 0, 0]) == pytest.approx(215 / 425)
    with pytest.raises(ValueError, match="FancyNormalization.*mn_2d_input_window = 'patch'"):
        input_window(["FancyNormalization"], {"0": {}})


def test_fixed_window_gives_a_tissue_one_value_in_every_patch():
    """The same tissue (value 0.4) inside patches of different content: the fixed window maps it to one value; the
    old per-patch mapping (``"patch"``) to different ones."""
    from nnunetv2_semisup.methods.mn.slicing import SliceWiseModel

    class Identity2D(torch.nn.Module):
        def forward(self, x):
            return x

    patches = torch.full((3, 1, 2, 8, 8), 0.4)
    patches[0, :, :, :4] = -2.0   # a dark neighbour
    patches[1, :, :, :4] = 2.5    # a bright neighbour
    patches[2, :, :, :2] = 0.0    # a darker and a brighter neighbour
    patches[2, :, :, 2:4] = 1.0
    fixed = SliceWiseModel(Identity2D(), use_checkpointing=False, window=([-3.0], [3.0]))(patches)
    assert torch.allclose(fixed[:, 0, :, 6, 6], torch.full((3, 2), 3.4 / 6))
    per_patch = SliceWiseModel(Identity2D(), use_checkpointing=False, window="patch")(patches)
    assert per_patch[:, 0, 0, 6, 6].tolist() == pytest.approx([1.0, 0.0, 0.4], abs=1e-3)
    assert torch.equal(SliceWiseModel(Identity2D(), use_checkpointing=False, window=None)(patches), patches)
