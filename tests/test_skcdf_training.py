"""SKCDF network paths, EMA knowledge transfer and trainer logic (docs/spec/skcdf.md §5, properties 7, 8, 9, 16, 17, 19),
plus bad-input handling and the variant table (§4)."""
import types

import numpy as np
import pytest
import torch
from torch import nn

from nnunetv2_semisup.methods.skcdf.network import SKCDFNet
from nnunetv2_semisup.methods.skcdf.trainer import knowledge_transfer, nnUNetTrainerSKCDF
from nnunetv2_semisup.methods.skcdf import variants as V

torch.set_num_threads(1)
PATCH = (8, 8, 8)


def small_net(seed=0, norm=nn.InstanceNorm3d, **kw):
    torch.manual_seed(seed)
    return SKCDFNet(1, 4, 3, [4, 8, 8], nn.Conv3d, 3, [1, 2, 2], 1, 1, PATCH, conv_bias=True, norm_op=norm,
                    norm_op_kwargs={"affine": True, "eps": 1e-5}, nonlin=nn.LeakyReLU,
                    nonlin_kwargs={"inplace": True}, **kw)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def stub_trainer(net, cls=nnUNetTrainerSKCDF, **overrides):
    """A trainer object with just the attributes train_step/compute_losses use (no nnU-Net setup)."""
    tr = cls.__new__(cls)
    tr.device = torch.device("cpu")
    tr.network = net
    tr.optimizer = torch.optim.SGD(net.parameters(), 0.01, momentum=0.99, nesterov=True)
    tr.grad_scaler = None
    tr.skcdf_use_ema, tr.skcdf_ema_omega, tr.skcdf_mask_mode = True, 0.99, "reference"
    tr.skcdf_p = np.array([0.01, 0.2, 0.5, 1.0])
    tr.current_epoch, tr.num_epochs = 0, 10
    tr.skcdf_rampup, tr.skcdf_rampup_fraction, tr.skcdf_lambda_u, tr.grad_clip = True, 1.0, 10.0, 12.0
    tr.skcdf_iterations, tr.skcdf_last_ramp_weight = 0, None
    for k, v in overrides.items():
        setattr(tr, k, v)
    return tr


def _batch(b=2, b_u=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    b_u = b if b_u is None else b_u
    return {"data": torch.randn(b, 1, *PATCH, generator=g),
            "target": torch.randint(0, 4, (b, 1, *PATCH), generator=g).float(),
            "unlabeled": {"data": torch.randn(b_u, 1, *PATCH, generator=g)}, "b_l": b, "b_u": b_u}


# ----------------------------------------------------------------------------------------- property 7
def test_ema_transfer_known_values():
    net = small_net()
    with torch.no_grad():
        for p in net.decoder_l.parameters():
            p.fill_(6.0)
        for p in net.decoder_l.head_main.parameters():
            p.fill_(0.0)
        for p in net.decoder_l.head_aux.parameters():
            p.fill_(2.0)
        for p in net.decoder_u.parameters():
            p.fill_(4.0)
    knowledge_transfer(net, 0.5)
    for p in net.decoder_l.head_main.parameters():
        assert torch.all(p == 1.0)
    for p in net.decoder_l.head_aux.parameters():
        assert torch.all(p == 2.0)
    for p in net.decoder_u.head_aux.parameters():
        assert torch.all(p == 3.0)
    for p in net.decoder_u.head_main.parameters():
        assert torch.all(p == 2.75)
    heads = {id(p) for p in list(net.decoder_u.head_main.parameters()) + list(net.decoder_u.head_aux.parameters())}
    others = [p for p in net.decoder_u.parameters() if id(p) not in heads]
    assert len(others) > 10
    for p in others:
        assert torch.all(p == 5.0)


# ----------------------------------------------------------------------------------------- property 8
def test_ema_transfer_touches_nothing_else():
    net = small_net(norm=nn.BatchNorm3d)
    opt = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9)
    out = net(torch.randn(2, 1, *PATCH), torch.randn(2, 1, *PATCH))  # BN running stats updated
    (out.labeled_main.sum() + out.unlabeled_main.sum() + out.labeled_aux.sum() + out.unlabeled_aux.sum()).backward()
    opt.step()
    enc, skcm = _params(net.encoder), _params(net.skcm)
    dl = {k: v for k, v in _params(net.decoder_l).items() if not k.startswith("head_main")}
    running = {k: v for k, v in _params(net).items() if "running" in k or "num_batches" in k}
    assert any(k.startswith("decoder_u") and "running_mean" in k for k in running)
    opt_state = {k: v["momentum_buffer"].clone() for k, v in opt.state_dict()["state"].items()}
    dl_main = _params(net.decoder_l.head_main)
    du = _params(net.decoder_u)
    knowledge_transfer(net, 0.99)
    assert _same(enc, _params(net.encoder)) and _same(skcm, _params(net.skcm))
    assert _same(dl, {k: v for k, v in _params(net.decoder_l).items() if not k.startswith("head_main")})
    assert _same(running, {k: v for k, v in _params(net).items() if "running" in k or "num_batches" in k})
    for k, v in opt.state_dict()["state"].items():
        assert torch.equal(v["momentum_buffer"], opt_state[k])
    assert not _same(dl_main, _params(net.decoder_l.head_main))
    changed = [k for k, v in _params(net.decoder_u).items() if not torch.equal(v, du[k])]
    assert any(k.startswith("stages") for k in changed) and not any("running" in k for k in changed)


def test_transfer_runs_once_per_iteration_before_forward():
    net = small_net()
    tr = stub_trainer(net)
    events = []
    real = tr.knowledge_transfer
    tr.knowledge_transfer = lambda: (events.append("ema"), real())
    net.register_forward_pre_hook(lambda m, a: events.append("forward"))
    for i in range(2):
        out = tr.train_step(_batch(seed=i))
        assert set(out) == {"loss", "sup_main", "sup_aux", "u_main", "u_aux", "w_u", "mask_l", "mask_u"}
        assert all(np.isfinite(np.asarray(v)).all() for v in out.values())
    assert events == ["ema", "forward", "ema", "forward"]
    assert tr.skcdf_iterations == 2
    assert tr.skcdf_last_ramp_weight == pytest.approx(10 * np.exp(-5))
    tr_no = stub_trainer(small_net(), cls=V.nnUNetTrainerSKCDF_noEMA, skcdf_use_ema=False)
    tr_no.knowledge_transfer = lambda: events.append("ema!")
    tr_no.train_step(_batch())
    assert "ema!" not in events


def test_no_absh_transfer_skips_head_steps():
    net = small_net(use_aux=False)
    assert net.decoder_l.head_aux is None and net.decoder_u.head_aux is None
    with torch.no_grad():
        for p in net.decoder_l.parameters():
            p.fill_(6.0)
        for p in net.decoder_u.parameters():
            p.fill_(4.0)
    knowledge_transfer(net, 0.5, heads=True)  # no aux heads → decoder EMA only
    assert all(torch.all(p == 5.0) for p in net.decoder_u.parameters())
    assert all(torch.all(p == 6.0) for p in net.decoder_l.parameters())


# ----------------------------------------------------------------------------------------- property 9 (fold cases)
def test_class_counts_use_only_training_cases_of_the_fold():
    segs = {"a": np.array([[[0, 1, 1, 2]]]), "b": np.array([[[0, 0, -1, 1]]]), "val": np.array([[[3, 3, 3, 3]]])}

    class FakeDataset:
        def __init__(self, folder, keys):
            self.keys = keys

        def load_case(self, k):
            assert k in self.keys
            return None, segs[k], None, {}

    tr = nnUNetTrainerSKCDF.__new__(nnUNetTrainerSKCDF)
    tr.do_split = lambda: (["a", "b"], ["val"])
    tr.dataset_class = FakeDataset
    tr.preprocessed_dataset_folder = "unused"
    tr.label_manager = types.SimpleNamespace(num_segmentation_heads=4)
    counts = tr.compute_class_counts()
    np.testing.assert_array_equal(counts, [4, 3, 1, 0])  # −1 counts as background
    with pytest.warns(UserWarning, match="never occur"):
        from nnunetv2_semisup.methods.skcdf.losses import balanced_probabilities
        p = balanced_probabilities(counts)
    np.testing.assert_allclose(p, [1 / 4, 1 / 3, 1.0, 1.0])


def test_unlabeled_probabilities_follow_the_epoch():
    tr = stub_trainer(small_net())
    tr.num_epochs = 5
    np.testing.assert_allclose(tr.unlabeled_mask_probabilities(0), 1.0)
    np.testing.assert_allclose(tr.unlabeled_mask_probabilities(4), tr.skcdf_p)
    tr.current_epoch = 2
    np.testing.assert_allclose(tr.unlabeled_mask_probabilities(), 1 - 0.5 * (1 - tr.skcdf_p))
    assert tr.unlabeled_weight() == pytest.approx(10 * np.exp(-5 * 0.25))
    tr.skcdf_rampup_fraction = 0.5  # R = 0.5·(5 − 1) = 2 epochs: full weight from epoch 2 on
    assert tr.unlabeled_weight() == 10.0
    assert tr.unlabeled_weight(1) == pytest.approx(10 * np.exp(-5 * 0.25))
    np.testing.assert_allclose(tr.unlabeled_mask_probabilities(), 1 - 0.5 * (1 - tr.skcdf_p))  # q keeps its schedule
    tr.skcdf_rampup = False
    assert tr.unlabeled_weight() == 10.0


# ----------------------------------------------------------------------------------------- property 16
def test_gradient_routing():
    net = small_net()
    tr = stub_trainer(net)
    batch = _batch()
    y = batch["target"][:, 0].long()

    def grads(module):
        return [p.grad for p in module.parameters()]

    def nonzero(gs):
        return any(g is not None and torch.count_nonzero(g) > 0 for g in gs)

    for which in ("sup", "u"):
        net.zero_grad(set_to_none=True)
        terms = tr.terms_from_outputs(net(batch["data"], batch["unlabeled"]["data"]), y, 2)
        loss = terms["sup_main"] + terms["sup_aux"] if which == "sup" else terms["u_main"] + terms["u_aux"]
        loss.backward()
        assert nonzero(grads(net.encoder)) and nonzero(grads(net.skcm))
        if which == "sup":
            assert nonzero(grads(net.decoder_l)) and not nonzero(grads(net.decoder_u))
        else:
            assert nonzero(grads(net.decoder_u)) and not nonzero(grads(net.decoder_l))


# ----------------------------------------------------------------------------------------- property 17
def test_forward_is_unlabeled_decoder_main_head():
    net = small_net().eval()
    x = torch.randn(2, 1, *PATCH)
    with torch.no_grad():
        ref = net(x)
        torch.testing.assert_close(ref, net.forward_unlabeled(x)[0], atol=0, rtol=0)
        for p in list(net.decoder_l.parameters()) + list(net.decoder_u.head_aux.parameters()):
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(net(x), ref, atol=0, rtol=0)
        for p in net.decoder_u.head_main.parameters():
            p.add_(1.0)
        assert (net(x) - ref).abs().max() > 1e-3
    # train mode, no dropout anywhere: forward(x) is the same inference path
    net2 = small_net(seed=1, attn_dropout=0.0)
    with torch.no_grad():
        a = net2.train()(x)
        b = net2.eval()(x)
    torch.testing.assert_close(a, b)


def test_labeled_inference_decoder_variant():
    net = small_net(inference_decoder="labeled").eval()
    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        skips = net.encoder(x)
        ref = net.decoder_l(skips, net.skcm(skips[-1], "self"))[0]
        torch.testing.assert_close(net(x), ref)


# ----------------------------------------------------------------------------------------- bad input
def test_unequal_batches_are_rejected():
    net = small_net()
    with pytest.raises(ValueError, match="B_l = B_u"):
        net(torch.randn(2, 1, *PATCH), torch.randn(1, 1, *PATCH))
    tr = stub_trainer(net)
    with pytest.raises(ValueError, match="B_l = B_u"):
        tr.train_step(_batch(b=2, b_u=1))
    with pytest.raises(RuntimeError, match="unlabeled"):
        tr.train_step({"data": torch.zeros(1), "target": torch.zeros(1), "b_l": 1, "b_u": 0})


def test_batch_composition_is_equal():
    tr = stub_trainer(small_net(), batch_size=3)
    assert tr.get_batch_composition() == (3, 3)
    tr.batch_size = 1  # what batch_size_override = 1 gives nnU-Net's batch size on one GPU
    assert tr.get_batch_composition() == (1, 1)


def test_odd_bottleneck_network_runs():
    torch.manual_seed(0)
    net = SKCDFNet(1, 3, 3, [4, 8, 8], nn.Conv3d, 3, [1, 2, 2], 1, 1, (12, 20, 28), conv_bias=True,
                   norm_op=nn.InstanceNorm3d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU)
    assert net.bottleneck_shape == (3, 5, 7)
    out = net(torch.randn(1, 1, 12, 20, 28), torch.randn(1, 1, 12, 20, 28))
    assert out.labeled_main.shape == (2, 3, 12, 20, 28) and out.unlabeled_aux.shape == (1, 3, 12, 20, 28)
    with pytest.raises(ValueError, match="3D configuration"):
        SKCDFNet(1, 3, 3, [4, 8, 8], nn.Conv2d, 3, [1, 2, 2], 1, 1, (16, 16))


def test_residual_encoder_network_for_the_resenc_presets():
    """``n_blocks_per_stage`` (ResEnc plans) builds nnU-Net's ResidualEncoder as the shared encoder: the bottleneck
    shape computed for the SKCM equals what the encoder really outputs (odd bottleneck sides), both decoders and the
    heads run, each residual branch's last norm starts at zero (ResidualEncoderUNet's init), and the plain
    arguments are refused together with the residual ones."""
    from dynamic_network_architectures.building_blocks.residual import BasicBlockD
    from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
    torch.manual_seed(0)
    kw = dict(conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU)
    net = SKCDFNet(1, 3, 3, [4, 8, 8], nn.Conv3d, 3, [1, 2, 2], None, 1, (12, 20, 28), n_blocks_per_stage=[1, 2, 2],
                   **kw)
    assert isinstance(net.encoder, ResidualEncoder)
    real = net.encoder(torch.randn(1, 1, 12, 20, 28))[-1].shape[2:]
    assert net.bottleneck_shape == tuple(real) == (3, 5, 7)
    out = net(torch.randn(2, 1, 12, 20, 28), torch.randn(2, 1, 12, 20, 28))
    assert out.labeled_main.shape == (4, 3, 12, 20, 28) and out.unlabeled_aux.shape == (2, 3, 12, 20, 28)
    assert net(torch.randn(1, 1, 12, 20, 28)).shape == (1, 3, 12, 20, 28)
    blocks = [m for m in net.encoder.modules() if isinstance(m, BasicBlockD)]
    assert len(blocks) == 5 and all(float(b.conv2.norm.weight.abs().sum()) == 0 for b in blocks)
    with pytest.raises(ValueError, match="exactly one"):
        SKCDFNet(1, 3, 3, [4, 8, 8], nn.Conv3d, 3, [1, 2, 2], 1, 1, (12, 20, 28), n_blocks_per_stage=[1, 1, 1])


# ----------------------------------------------------------------------------------------- property 19
@pytest.mark.parametrize("regions,ignore,match", [(True, False, "region-based"), (False, True, "ignore label")])
def test_regions_and_ignore_label_rejected(regions, ignore, match):
    tr = nnUNetTrainerSKCDF.__new__(nnUNetTrainerSKCDF)
    tr.label_manager = types.SimpleNamespace(has_regions=regions, has_ignore_label=ignore, ignore_label=4)
    tr.plans_manager = types.SimpleNamespace(dataset_name="Dataset999_X")
    tr.skcdf_mask_mode, tr.enable_deep_supervision = "reference", False
    with pytest.raises(ValueError, match=match):
        tr.initialize()


# ----------------------------------------------------------------------------------------- variants (§4)
def test_variant_network_switches():
    assert (nnUNetTrainerSKCDF.skcdf_use_skcm, nnUNetTrainerSKCDF.skcdf_use_aux) == (True, True)
    assert (V.nnUNetTrainerSKCDF_noSKCM.skcdf_use_skcm, V.nnUNetTrainerSKCDF_noSKCM.skcdf_use_aux) == (False, True)
    assert (V.nnUNetTrainerSKCDF_noABSH.skcdf_use_skcm, V.nnUNetTrainerSKCDF_noABSH.skcdf_use_aux) == (True, False)
    assert (V.nnUNetTrainerSKCDF_DF.skcdf_use_skcm, V.nnUNetTrainerSKCDF_DF.skcdf_use_aux) == (False, False)
    assert V.nnUNetTrainerSKCDF_paper.skcdf_dropout_p == 0.5 and nnUNetTrainerSKCDF.skcdf_dropout_p == 0.0
    assert V.nnUNetTrainerSKCDF_DF_inferL.skcdf_inference_decoder == "labeled"
    assert issubclass(V.nnUNetTrainerSKCDF_short, nnUNetTrainerSKCDF)


@pytest.mark.parametrize("cls,net_kw,attrs", [
    (V.nnUNetTrainerSKCDF_DF, {"use_skcm": False, "use_aux": False}, {}),
    (V.nnUNetTrainerSKCDF_noABSH, {"use_aux": False}, {}),
    (V.nnUNetTrainerSKCDF_noSKCM, {"use_skcm": False}, {}),
    (V.nnUNetTrainerSKCDF_truemask, {}, {"skcdf_mask_mode": "true"}),
])
def test_variant_train_steps_run(cls, net_kw, attrs):
    net = small_net(**net_kw)
    assert (net.skcm is None) == (not net_kw.get("use_skcm", True))
    tr = stub_trainer(net, cls=cls, **attrs)
    before = _params(net.decoder_u)
    out = tr.train_step(_batch())
    assert np.isfinite(out["loss"]) and np.isfinite(out["sup_main"]) and np.isfinite(out["u_main"])
    if not net_kw.get("use_aux", True):
        assert float(out["sup_aux"]) == 0.0 and float(out["u_aux"]) == 0.0
    assert not _same(before, _params(net.decoder_u))


def test_architecture_switch_set_in_init_is_refused():
    """Architecture switches are read by the static build_network_architecture when nnUNetv2_predict rebuilds the
    network: an instance value set in __init__ would train one architecture and predict with another."""
    tr = nnUNetTrainerSKCDF.__new__(nnUNetTrainerSKCDF)
    tr.skcdf_use_aux = False
    with pytest.raises(ValueError, match="skcdf_use_aux must be set as class attributes"):
        tr.initialize()
