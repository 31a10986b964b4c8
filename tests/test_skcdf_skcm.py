"""SKCM unit tests (docs/spec/skcdf.md §5, properties 1–6): a deliberately naive SKCM written from §1.3 with explicit
loops over samples, patches and heads, against the vectorised port."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from nnunetv2_semisup.methods.skcdf import skcm as skcm_module
from nnunetv2_semisup.methods.skcdf.skcm import SKCM, LocalSKCMBlock

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------- naive reference (§1.3)
def _ln(x, mod):
    """LayerNorm over channels of a (positions × C) matrix."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def _psi(a):
    m = a.mean()
    v = ((a - m) ** 2).mean()
    return (a - m) / torch.sqrt(v + 1e-5)


def _softmax_rows(a):
    e = torch.exp(a - a.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def naive_self_attention(e, att, block_kind):
    """e: (T, C) for one sample and patch; per-head channel attention with the reference's head layout (docs/spec/skcdf.md §1.3),
    written out index by index: local block — head h holds the projected channels j with j mod N = h and its
    channel c returns to index c·N + h; global block — head h holds channels h·C … h·C + C − 1 (head-major split)
    but its channel c also returns to index c·N + h (channel-major merge)."""
    t_, c = e.shape
    n = att.num_heads
    q, k, v = e @ att.q.weight.T, e @ att.k.weight.T, e @ att.v.weight.T
    merged = torch.zeros(t_, n * c, dtype=e.dtype)
    for h in range(n):
        if block_kind == "local":
            idx = [ch * n + h for ch in range(c)]
        elif block_kind == "global":
            idx = [h * c + ch for ch in range(c)]
        else:
            raise AssertionError(block_kind)
        a = _softmax_rows(_psi(q[:, idx].T @ k[:, idx]))  # C × C
        o_h = (a @ v[:, idx].T).T  # T × C
        for ch in range(c):
            merged[:, ch * n + h] = o_h[:, ch]
    return merged @ att.out.weight.T


def naive_cross_attention(e_query, e_others, att):
    """Query sample's embedding (T, C) against all samples of the other flow (concatenated along channels)."""
    q = e_query @ att.q.weight.T
    k = torch.cat([o @ att.k.weight.T for o in e_others], dim=1)  # T × (n·C')
    v = torch.cat([o @ att.v.weight.T for o in e_others], dim=1)
    a = _softmax_rows(_psi(q.T @ k))  # C' × nC'
    return (a @ v.T).T @ att.out.weight.T


def _attend_all(tokens, block, mode, block_kind):
    """tokens: list over samples of (T, C) matrices at one patch → list of block outputs before reshaping."""
    emb = [_ln(t, block.ln_attn) for t in tokens]
    outs = []
    b = len(tokens)
    for i in range(b):
        if mode == "self":
            a = naive_self_attention(emb[i], block.attn, block_kind)
        elif i < b // 2:  # labeled query; keys/values from the detached unlabeled embeddings
            a = naive_cross_attention(emb[i], [u.detach() for u in emb[b // 2:]], block.attn)
        else:  # detached unlabeled query; keys/values from the labeled embeddings
            a = naive_cross_attention(emb[i].detach(), emb[: b // 2], block.attn)
        outs.append(_ln(a + tokens[i], block.ln_ffn))
    return outs


def _out_conv(x, conv):
    return F.gelu(torch.einsum("oc,bczyx->bozyx", conv.weight[:, :, 0, 0, 0], x) + conv.bias[None, :, None, None, None])


def naive_local(h, block, mode):
    """Local block on a bottleneck whose sides are multiples of P (no padding here)."""
    b, c, d, hh, w = h.shape
    p = block.patch
    assert d % p == 0 and hh % p == 0 and w % p == 0
    wt = block.token_learner.weight.reshape(p ** 3, p ** 3)  # (k, j): output k from raster voxel j
    bias = block.token_learner.bias
    out = torch.zeros_like(h)
    for iz, iy, ix in itertools.product(range(d // p), range(hh // p), range(w // p)):
        sl = (slice(iz * p, iz * p + p), slice(iy * p, iy * p + p), slice(ix * p, ix * p + p))
        tokens = []
        for s in range(b):
            tok = torch.zeros(p ** 3, c, dtype=h.dtype)
            for ch in range(c):
                voxels = h[s, ch][sl].reshape(-1)  # raster order z, y, x
                tok[:, ch] = wt @ voxels + bias
            tokens.append(tok)
        for s, x in enumerate(_attend_all(tokens, block, mode, "local")):
            for ch in range(c):
                out[s, ch][sl] = x[:, ch].reshape(p, p, p)
    return _out_conv(out, block.out_conv)


def naive_global(h, block, mode):
    b, c = h.shape[:2]
    n = math.prod(h.shape[2:])
    wt = block.token_learner.weight.reshape(n, n)
    tokens = []
    for s in range(b):
        tok = torch.zeros(n, c, dtype=h.dtype)
        for ch in range(c):
            tok[:, ch] = wt @ h[s, ch].reshape(-1) + block.token_learner.bias
        tokens.append(tok)
    out = torch.stack([x.T.reshape(c, *h.shape[2:]) for x in _attend_all(tokens, block, mode, "global")])
    return _out_conv(out, block.out_conv)


def naive_skcm(h, skcm, mode):
    """Naive SKCM; odd sides: zero-pad at the end, naive local block, crop (docs/spec/skcdf.md §3.1)."""
    p = skcm.local_block.patch
    pads = [(-s) % p for s in h.shape[2:]]
    hp = F.pad(h, (0, pads[2], 0, pads[1], 0, pads[0]))
    x = naive_local(hp, skcm.local_block, mode)[:, :, : h.shape[2], : h.shape[3], : h.shape[4]]
    return naive_global(x, skcm.global_block, mode)


def _skcm(c, shape, seed=0, dtype=torch.float64, dropout=0.0):
    torch.manual_seed(seed)
    m = SKCM(c, shape, num_heads=2, patch=2, dropout=dropout).to(dtype)
    # non-trivial LayerNorm affine parameters and biases so that the test sees them
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
            if isinstance(mod, torch.nn.Conv3d):
                mod.bias.uniform_(-0.2, 0.2)
    return m


# ----------------------------------------------------------------------------------------- property 1
@pytest.mark.parametrize("shape", [(4, 8, 8), (3, 5, 7), (1, 4, 4), (2, 6, 5)])
def test_shape_preserved(shape):
    for c, b in itertools.product((8, 32, 320), (1, 2, 3)):
        if c == 320 and b == 2:
            continue  # keep the CPU time small; 320 channels with 1 + 1 and 3 + 3
        m = _skcm(c, shape, dtype=torch.float32)
        h = torch.randn(2 * b, c, *shape)
        with torch.no_grad():
            assert m(h, "cross").shape == h.shape
            assert m(h[:b], "self").shape == h[:b].shape


def test_attention_runs_in_float32_under_autocast():
    """No 1/sqrt(d) scaling and ψ's variance would overflow float16: the channel attention ignores autocast."""
    m = _skcm(8, (4, 6, 6), dtype=torch.float32).eval()
    h = torch.randn(4, 8, 4, 6, 6) * 50
    with torch.no_grad():
        plain = m(h, "cross")
        attn_in = m.local_block.ln_attn(torch.randn(2, 1, 8, 8))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = m(h, "cross")
            attn_out = m.local_block.attn(attn_in.bfloat16(), "self")
    assert attn_out.dtype == torch.float32
    torch.testing.assert_close(attn_out, m.local_block.attn(attn_in.bfloat16().float(), "self"))
    assert torch.isfinite(mixed).all() and mixed.shape == plain.shape


# ----------------------------------------------------------------------------------------- property 2
@pytest.mark.parametrize("shape,b", [((4, 8, 8), 2), ((3, 5, 7), 3)])
@pytest.mark.parametrize("mode", ["self", "cross"])
def test_port_equals_naive(shape, b, mode):
    c = 6
    m = _skcm(c, shape).eval()
    torch.manual_seed(1)
    h = torch.randn(2 * b, c, *shape, dtype=torch.float64)
    with torch.no_grad():
        port = m(h, mode)
        ref = naive_skcm(h, m, mode)
    torch.testing.assert_close(port, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode,b", [("self", 1), ("self", 3), ("cross", 1), ("cross", 2)])
@pytest.mark.parametrize("train", [False, True])
def test_port_equals_naive_forward_and_gradients(mode, b, train):
    """Train and eval mode (dropout 0, so the two must agree with the naive module), batch 1 and > 1: outputs and
    the gradients of a random projection of them w.r.t. the input and every SKCM parameter."""
    c, shape = 6, (2, 4, 4)
    m = _skcm(c, shape, seed=11).train(train)
    torch.manual_seed(12)
    n = b if mode == "self" else 2 * b
    h = torch.randn(n, c, *shape, dtype=torch.float64)
    w = torch.randn(n, c, *shape, dtype=torch.float64)
    params = [p for p in m.parameters()]

    def grads(fn):
        x = h.clone().requires_grad_(True)
        out = fn(x)
        g = torch.autograd.grad((out * w).sum(), [x] + params, allow_unused=True)
        return out.detach(), [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, [x] + params)]

    port, g_port = grads(lambda x: m(x, mode))
    ref, g_ref = grads(lambda x: naive_skcm(x, m, mode))
    torch.testing.assert_close(port, ref, atol=1e-9, rtol=1e-7)
    for (name, _), gp, gr in zip([("input", None)] + list(m.named_parameters()), g_port, g_ref):
        torch.testing.assert_close(gp, gr, atol=1e-9, rtol=1e-7, msg=lambda msg: f"gradient of {name}: {msg}")


def test_global_self_mode_merges_heads_channel_major():
    """The global block's self mode is not the head-major merge that a consistent multi-head layout would give:
    with identical weights the two differ clearly (the reference's module is the channel-major one)."""
    c, shape = 6, (2, 4, 4)
    m = _skcm(c, shape, seed=13).eval()
    h = torch.randn(2, c, *shape, dtype=torch.float64)
    with torch.no_grad():
        reference_layout = m(h, "self")
        m.global_block.attn.head_merge = "outer"
        head_major = m(h, "self")
        cross_unchanged = m(torch.cat((h, h)), "cross")
        m.global_block.attn.head_merge = "inner"
        torch.testing.assert_close(cross_unchanged, m(torch.cat((h, h)), "cross"), atol=0, rtol=0)
    rel = (reference_layout - head_major).norm() / reference_layout.norm()
    assert rel > 0.05, rel
    assert m.global_block.attn.head_split == "outer" and m.global_block.attn.head_merge == "inner"
    assert m.local_block.attn.head_split == "inner" and m.local_block.attn.head_merge == "inner"


# ----------------------------------------------------------------------------------------- property 3
def test_cross_mode_dependencies_and_detach():
    c, shape, b = 8, (3, 4, 5), 2
    m = _skcm(c, shape).eval()
    torch.manual_seed(2)
    h_l = torch.randn(b, c, *shape, dtype=torch.float64)
    h_u = torch.randn(b, c, *shape, dtype=torch.float64)
    h_u2 = h_u + torch.randn_like(h_u)
    h_l2 = h_l + torch.randn_like(h_l)
    with torch.no_grad():
        base = m(torch.cat((h_l, h_u)), "cross")
        new_u = m(torch.cat((h_l, h_u2)), "cross")
        new_l = m(torch.cat((h_l2, h_u)), "cross")
    assert (base[:b] - new_u[:b]).abs().max() > 1e-3  # labeled output depends on the unlabeled inputs
    assert (base[b:] - new_l[b:]).abs().max() > 1e-3  # unlabeled output depends on the labeled inputs
    # ... but no gradient flows from labeled-half outputs into the unlabeled inputs (detach), also in train mode
    for train in (False, True):
        m.train(train)
        hl = h_l.clone().requires_grad_(True)
        hu = h_u.clone().requires_grad_(True)
        out = m(torch.cat((hl, hu)), "cross")
        out[:b].sum().backward()
        assert hu.grad is None or torch.count_nonzero(hu.grad) == 0
        assert torch.count_nonzero(hl.grad) > 0
        # one single labeled output element: still zero
        hu.grad = None
        hl2 = h_l.clone().requires_grad_(True)
        out = m(torch.cat((hl2, hu)), "cross")
        g = torch.autograd.grad(out[0, 3, 1, 2, 3], hu, allow_unused=True)[0]
        assert g is None or torch.count_nonzero(g) == 0


# ----------------------------------------------------------------------------------------- property 4
def test_self_mode_sample_independence():
    c, shape = 8, (3, 5, 7)
    m = _skcm(c, shape).eval()
    torch.manual_seed(3)
    h = torch.randn(3, c, *shape, dtype=torch.float64)
    h2 = h.clone()
    h2[1:] = torch.randn_like(h2[1:])
    with torch.no_grad():
        a, b_ = m(h, "self"), m(h2, "self")
        single = m(h[:1], "self")
    torch.testing.assert_close(a[0], b_[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(single[0], a[0], atol=1e-12, rtol=0)
    assert (a[1] - b_[1]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------- property 5
def test_eval_equals_train_self_mode_without_dropout():
    c, shape = 8, (4, 4, 4)
    torch.manual_seed(4)
    h = torch.randn(2, c, *shape, dtype=torch.float64)
    m_drop = _skcm(c, shape, seed=5, dropout=0.1).eval()
    m_nodrop = _skcm(c, shape, seed=5, dropout=0.0).train()
    with torch.no_grad():
        torch.testing.assert_close(m_drop(h, "self"), m_nodrop(h, "self"), atol=1e-12, rtol=0)
        m_drop.train()
        assert (m_drop(h, "self") - m_nodrop(h, "self")).abs().max() > 0  # dropout active in train mode


def test_odd_sides_equal_naive_on_zero_padded_input():
    c = 5
    torch.manual_seed(6)
    block = LocalSKCMBlock(c, patch=2, num_heads=2, dropout=0.0).double().eval()
    block.apply(skcm_module.init_skcm)
    for shape in [(3, 5, 7), (1, 4, 4), (2, 6, 5)]:
        h = torch.randn(2, c, *shape, dtype=torch.float64)
        padded = F.pad(h, (0, shape[2] % 2, 0, shape[1] % 2, 0, shape[0] % 2))
        for mode in ("self", "cross"):
            with torch.no_grad():
                ref = naive_local(padded, block, mode)[:, :, : shape[0], : shape[1], : shape[2]]
                torch.testing.assert_close(block(h, mode), ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------- property 6
def test_affinity_normalised_and_softmax_rows(monkeypatch):
    c, shape, b = 8, (4, 4, 6), 2
    m = _skcm(c, shape).eval()
    recorded = []
    orig = skcm_module.psi

    def spy(a):
        out = orig(a)
        recorded.append(out.detach())
        return out

    probs = []
    hooks = [blk.attn.attn_drop.register_forward_pre_hook(lambda mod, inp: probs.append(inp[0].detach()))
             for blk in (m.local_block, m.global_block)]
    monkeypatch.setattr(skcm_module, "psi", spy)
    torch.manual_seed(7)
    h = torch.randn(2 * b, c, *shape, dtype=torch.float64)
    with torch.no_grad():
        m(h[:b], "self")
        n_self = len(recorded)
        m(h, "cross")
    for hk in hooks:
        hk.remove()
    assert n_self == 2 and len(recorded) == 6
    for i, a in enumerate(recorded):
        if i < n_self:  # self mode: one matrix per sample, patch and head, C × C
            assert a.shape[-3:] == (2, c, c)
        else:  # cross mode: C' × B·C'
            assert a.shape[-2:] == (2 * c, b * 2 * c)
        mean = a.mean(dim=(-2, -1))
        var = a.var(dim=(-2, -1), unbiased=False)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-10, rtol=0)
        torch.testing.assert_close(var, torch.ones_like(var), atol=1e-3, rtol=0)
    assert len(probs) == 6
    for p in probs:
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)), atol=1e-12, rtol=0)


def test_cross_mode_rejects_unequal_halves():
    m = _skcm(8, (2, 2, 2), dtype=torch.float32)
    with pytest.raises(ValueError, match="B_l = B_u"):
        m(torch.randn(3, 8, 2, 2, 2), "cross")
    with pytest.raises(ValueError, match="planned patch size"):
        m(torch.randn(2, 8, 2, 2, 4), "self")


def test_cross_mode_refuses_an_odd_batch():
    """Cross attention pairs the labeled half with the unlabeled half: an odd batch (here 3 samples of 2 channels)
    has no halves."""
    m = _skcm(2, (2, 4, 4))
    with pytest.raises(ValueError, match="odd batch of 3 samples"):
        m(torch.randn(3, 2, 2, 4, 4, dtype=torch.float64), "cross")
    assert m(torch.randn(3, 2, 2, 4, 4, dtype=torch.float64), "self").shape == (3, 2, 2, 4, 4)
