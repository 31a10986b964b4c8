"""Wiring of each method's losses: the total is the method's formula with hand-computed weights, and every unlabeled
target comes from the model the method prescribes (spied, and recomputed here from the networks' own outputs).

These tests exist to fail on small, plausible bugs that the unit tests of the parts cannot see: SKCDF without its
ramp weight or with D_u labelling itself, Mean Teacher with the wrong weight or slice, CML with the two subnets'
targets swapped, M&N with each model teaching itself."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_semisup.methods.skcdf.losses import dcce_terms, masked_dcce_terms
from nnunetv2_semisup.methods.skcdf.network import SKCDFTrainOutput
from nnunetv2_semisup.methods.skcdf.trainer import nnUNetTrainerSKCDF
from nnunetv2_semisup.methods.mean_teacher.trainer import nnUNetTrainerMeanTeacher


# ----------------------------------------------------------------------------------------------------- SKCDF
def test_skcdf_total_is_sup_plus_aux_plus_ramped_unlabeled_terms_and_du_learns_from_dl():
    """docs/skcdf.md: L = sup_main + sup_aux + w_u (u_main + u_aux), w_u = 10 exp(-5 (1 - e/(E-1))^2); D_u's targets
    are the argmax of D_l's heads on the unlabeled half, never of D_u itself."""
    tr = nnUNetTrainerSKCDF.__new__(nnUNetTrainerSKCDF)
    tr.skcdf_p = np.ones(4)              # every voxel kept by the Bernoulli masks: deterministic
    tr.skcdf_mask_mode = "reference"
    tr.current_epoch, tr.num_epochs = 3, 10
    tr.skcdf_rampup, tr.skcdf_rampup_fraction, tr.skcdf_lambda_u = True, 1.0, 10.0  # the published ramp: the whole run
    g = torch.Generator().manual_seed(0)
    b = 2
    out = SKCDFTrainOutput(*(torch.randn(n, 4, 4, 6, 6, generator=g) for n in (2 * b, 2 * b, b, b)))
    y = torch.randint(0, 4, (b, 4, 6, 6), generator=g)
    # D_u's own argmax differs from D_l's on the unlabeled half: a self-labelling bug would change u_main
    assert not torch.equal(out.unlabeled_main.argmax(1), out.labeled_main[b:].argmax(1))
    terms = tr.terms_from_outputs(out, y, b)

    w = 10 * math.exp(-5 * (1 - 3 / 9) ** 2)                        # 1.0836...
    ones_l, ones_u = torch.ones(b, 4, 6, 6), torch.ones(b, 4, 6, 6)
    sup_main = sum(dcce_terms(out.labeled_main[:b], y))
    sup_aux = sum(masked_dcce_terms(out.labeled_aux[:b], y, ones_l, "reference"))
    u_main = sum(dcce_terms(out.unlabeled_main, out.labeled_main[b:].argmax(1)))
    u_aux = sum(masked_dcce_terms(out.unlabeled_aux, out.labeled_aux[b:].argmax(1), ones_u, "reference"))
    assert terms["w_u"] == pytest.approx(w, rel=1e-12) and w == pytest.approx(1.08368, abs=1e-5)
    for k, v in (("sup_main", sup_main), ("sup_aux", sup_aux), ("u_main", u_main), ("u_aux", u_aux)):
        assert float(terms[k]) == pytest.approx(float(v), rel=1e-6), k
    assert float(terms["loss"]) == pytest.approx(float(sup_main + sup_aux + w * (u_main + u_aux)), rel=1e-6)
    self_labelled = sum(dcce_terms(out.unlabeled_main, out.unlabeled_main.argmax(1)))
    assert abs(float(terms["u_main"]) - float(self_labelled)) > 1e-3


# ----------------------------------------------------------------------------------------------- Mean Teacher
class _Net(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_mean_teacher_total_is_sup_plus_ramped_consistency_on_the_unlabeled_slice():
    """L = sup(student(x_l)) + 0.1 exp(-5 (1 - e/(0.4 E))^2) · MSE(softmax student(x_u), softmax teacher(x_u));
    noise off so the teacher's input is x_u itself."""
    tr = nnUNetTrainerMeanTeacher.__new__(nnUNetTrainerMeanTeacher)
    tr.network, tr.teacher = _Net(0), _Net(1)
    tr.device = torch.device("cpu")
    tr.mt_consistency_weight, tr.mt_rampup_fraction, tr.mt_noise_std, tr.mt_noise_clip = 0.1, 0.4, 0.0, 0.2
    tr.current_epoch, tr.num_epochs = 5, 40
    seen = {}

    def sup_loss(output, target):
        seen["sup"] = (output.detach().clone(), target)
        return output.float().mean() * 0 + 0.25
    tr.loss = sup_loss
    g = torch.Generator().manual_seed(2)
    x_l, x_u = torch.randn(2, 1, 4, 5, 5, generator=g), torch.randn(3, 1, 4, 5, 5, generator=g)
    target = torch.randint(0, 3, (2, 1, 4, 5, 5), generator=g)
    terms = tr.compute_losses(x_l, target, x_u)
    with torch.no_grad():
        student_l, student_u, teacher_u = tr.network(x_l), tr.network(x_u), tr.teacher(x_u)
    assert torch.allclose(seen["sup"][0], student_l, atol=1e-6) and seen["sup"][1] is target
    cons = F.mse_loss(torch.softmax(student_u, 1), torch.softmax(teacher_u, 1))
    w = 0.1 * math.exp(-5 * (1 - 5 / 16) ** 2)    # E_r = 0.4 * 40 = 16
    assert float(terms["cons"]) == pytest.approx(float(cons), rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(0.25 + w * float(cons), rel=1e-5)
    tr.current_epoch = 20                              # past the ramp: the full weight 0.1
    assert float(tr.compute_losses(x_l, target, x_u)["loss"]) == pytest.approx(0.25 + 0.1 * float(cons), rel=1e-5)


# ----------------------------------------------------------------------------------------------------------- CML
@pytest.fixture(scope="module")
def cml_trainer(planned_dataset):
    from nnunetv2.run.run_training import get_trainer_from_args
    t = get_trainer_from_args(str(planned_dataset.dataset_id), "3d_fullres", "all", "nnUNetTrainerCML_short",
                              device=torch.device("cpu"))
    t.initialize()
    return t


def test_cml_each_subnet_learns_from_the_other_outside_the_box_and_from_itself_inside(cml_trainer):
    """Paper eq. 9 (as the code): T1 = pl2[a] outside the CutMix box, pl1[b] inside; T2 the other way round; and
    L = l_w (sup_l1 + sup_l2) + λ1 (sup_u1 + sup_u2) + λ2 (dis_l + dis_u)."""
    from nnunetv2_semisup.methods.cml.pseudo_labels import cml_pseudo_labels
    from nnunetv2_semisup.methods.cml.trainer import SELFTRAIN
    t = cml_trainer
    t.cml_stage = SELFTRAIN
    t.cml_lambda1, t.cml_lambda2, t.cml_labeled_weight = 0.7, 0.3, 1.3
    masks, calls = [], []
    draw, sup = t._draw_mask, t._cml_sup

    def spy_mask(patch, dev):
        m = draw(patch, dev)
        masks.append(m)
        return m

    def spy_sup(outputs, targets):
        calls.append((outputs, targets))
        return sup(outputs, targets)
    t._draw_mask, t._cml_sup = spy_mask, spy_sup
    try:
        torch.manual_seed(3)
        ps = tuple(t.configuration_manager.patch_size)
        x_l, x_u = torch.randn(2, 1, *ps), torch.randn(2, 1, *ps)
        y = [torch.randint(0, 4, (2, 1, *[int(round(p * s)) for p, s in zip(ps, sc)])).to(torch.int16)
             for sc in t._get_deep_supervision_scales()]
        terms = t.compute_losses(x_l, y, x_u)
    finally:
        del t._draw_mask, t._cml_sup
    assert len(calls) == 4 and len(masks) == 2
    with torch.no_grad():
        p1, p2, _, _ = t.network(x_u, return_all=True)
    pl1, _ = cml_pseudo_labels(p1[0], t.cml_lcc, t.cml_binary_threshold)
    pl2, _ = cml_pseudo_labels(p2[0], t.cml_lcc, t.cml_binary_threshold)
    assert not torch.equal(pl1, pl2)    # the subnets disagree: a swap would be visible
    outside = masks[1].bool()           # 1 outside the box
    t1 = torch.where(outside, pl2[:1], pl1[1:])
    t2 = torch.where(outside, pl1[:1], pl2[1:])
    assert torch.equal(calls[2][1][0][:, 0].long(), t1.long())    # subnet 1's unlabeled target
    assert torch.equal(calls[3][1][0][:, 0].long(), t2.long())    # subnet 2's
    total = (1.3 * (terms["sup_l1"] + terms["sup_l2"]) + 0.7 * (terms["sup_u1"] + terms["sup_u2"])
             + 0.3 * (terms["dis_l"] + terms["dis_u"]))
    assert float(terms["loss"]) == pytest.approx(float(total), rel=1e-6)


# ----------------------------------------------------------------------------------------------------------- M&N
@pytest.fixture(scope="module")
def mn_trainer(planned_dataset, tmp_path_factory):
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2_semisup.methods.mn.segformer import SEGFORMER_ENV, save_tiny_segformer
    folder = str(tmp_path_factory.mktemp("tiny_segformer_wiring"))
    save_tiny_segformer(folder)
    old = os.environ.get(SEGFORMER_ENV)
    os.environ[SEGFORMER_ENV] = folder
    try:
        t = get_trainer_from_args(str(planned_dataset.dataset_id), "3d_fullres", "all", "nnUNetTrainerMN",
                                  device=torch.device("cpu"))
        t.initialize()
        yield t
    finally:
        if old is None:
            os.environ.pop(SEGFORMER_ENV, None)
        else:
            os.environ[SEGFORMER_ENV] = old


def test_mn_each_model_learns_from_the_others_soft_mask(mn_trainer):
    """The 3D model's unlabeled targets are the 2D model's softmax (eval mode) and the 2D model's are the 3D model's
    full-resolution softmax — never a model's own."""
    from nnunetv2_semisup.methods.mn.schedule import TRAIN_2D, TRAIN_3D
    from nnunetv2_semisup.training.semisup_base import unwrap
    t = mn_trainer
    torch.manual_seed(4)
    ps = tuple(t.configuration_manager.patch_size)
    x_u = torch.randn(2, 1, *ps)
    seen = {}
    saved = (t.mn_phase, t.batch_size)
    t.batch_size = 2

    def spy(name):
        def step(x_u_, soft_u, x_l, targets):
            seen[name] = (x_u_.clone(), soft_u.clone())
            return {}
        return step
    t.step_3d, t.step_2d = spy("3d"), spy("2d")
    try:
        for phase in (TRAIN_3D, TRAIN_2D):
            t.mn_phase = phase
            t.train_step({"unlabeled": {"data": x_u}, "b_l": 0, "b_u": 2})
    finally:
        del t.step_3d, t.step_2d
        t.mn_phase, t.batch_size = saved

    def softmax_eval(model, x):
        m = unwrap(model)
        mode = m.training
        m.eval()
        with torch.no_grad():
            out = m(x)
        m.train(mode)
        return torch.softmax((out[0] if isinstance(out, (list, tuple)) else out).float(), 1)
    soft_2d, soft_3d = softmax_eval(t.network_2d, x_u), softmax_eval(t.network, x_u)
    assert not torch.allclose(soft_2d, soft_3d, atol=1e-3)
    assert torch.allclose(seen["3d"][1], soft_2d, atol=1e-5)     # 3D student <- 2D teacher
    assert torch.allclose(seen["2d"][1], soft_3d, atol=1e-5)     # 2D student <- 3D teacher
