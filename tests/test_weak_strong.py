"""The weak→strong trainer (methods/weak_strong): views built from nnU-Net's own pipeline share the spatial transform,
voxels below τ carry no gradient, the tissue remapping reorders tissues, CutMix moves image and pseudo-label with one
box, the loss is wired as sup + λ_u · unsup with the teacher seeing the weak and the student the strong view; end to
end through the real CLI (train, stop, --c, stock predict)."""
import glob
import os

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from conftest import copy_planned_dataset, run_cli
from nnunetv2_semisup.data.intensity_remap import TissueContrastRemap, remap_intensities
from nnunetv2_semisup.methods.weak_strong import augment
from nnunetv2_semisup.methods.weak_strong.trainer import confident_pseudo_labels, cutmix_with_partner

TRAINER = "nnUNetTrainerWeakStrong_short"


class Double(ImageOnlyTransform):
    """A deterministic intensity-only 'strong' transform: x -> 2x + 1."""

    def _apply_to_image(self, img, **params):
        return 2 * img + 1


def nnunet_pipeline(patch=(16, 32, 32), mirror=(0, 1, 2)):
    """nnU-Net's own training transforms (rotation and scaling always on here), without deep supervision."""
    t = nnUNetTrainer.get_training_transforms(patch, (-np.pi / 6, np.pi / 6), None, mirror, False)
    for tr in t.transforms:   # make every draw spatially different from the input
        if type(tr).__name__ == "SpatialTransform":
            tr.p_rotation, tr.p_scaling = 1.0, 1.0
    return t


def test_weak_view_is_nnunets_spatial_pipeline_and_strong_view_shares_it():
    pipeline = augment.weak_strong_pipeline(nnunet_pipeline(), Double(), num_channels=2)
    names = [type(t.transform if isinstance(t, RandomTransform) else t).__name__ for t in pipeline.transforms]
    assert "SpatialTransform" in names and "MirrorTransform" in names
    assert not any(isinstance(t.transform if isinstance(t, RandomTransform) else t, augment.INTENSITY_TRANSFORMS)
                   for t in pipeline.transforms)
    assert names.index("SpatialTransform") < names.index("WeakStrongViews") < names.index("MirrorTransform")
    torch.manual_seed(0)
    img = torch.rand(2, 24, 40, 40)
    seg = torch.zeros(1, 24, 40, 40, dtype=torch.int16)
    seen = set()
    for _ in range(6):
        out = pipeline(image=img.clone(), segmentation=seg.clone())["image"]
        assert out.shape == (4, 16, 32, 32)
        weak, strong = out[:2], out[2:]
        # the same spatial transform, drawn once: strong is exactly the intensity map of weak, voxel for voxel
        torch.testing.assert_close(strong, 2 * weak + 1)
        seen.add(round(float(weak.sum()), 3))
    assert len(seen) == 6   # and it is random per draw


def test_weak_view_has_no_intensity_augmentation():
    """A constant image stays constant in the middle of the weak view (which every rotation/scaling draw keeps inside
    the image) however often the pipeline is drawn; nnU-Net's own pipeline changes it on many draws."""
    img = torch.full((1, 40, 60, 60), 3.0)
    seg = torch.zeros(1, 40, 60, 60, dtype=torch.int16)

    def middles(pipeline):
        return [pipeline(image=img.clone(), segmentation=seg.clone())["image"][0, 4:12, 8:24, 8:24]
                for _ in range(20)]
    torch.manual_seed(0)
    weak = augment.weak_strong_pipeline(nnunet_pipeline(), Double(), num_channels=1)
    assert all(torch.allclose(m, torch.full_like(m, 3.0), atol=1e-4) for m in middles(weak))
    changed = [not torch.allclose(m, torch.full_like(m, 3.0), atol=1e-4) for m in middles(nnunet_pipeline())]
    assert sum(changed) >= 3


def test_remapping_reorders_tissues_by_hand():
    # three tissues at 0.2, 0.5, 0.8: lo = 0.2, hi = 0.8, points 0.2, 0.35, 0.5, 0.65, 0.8 mapped to
    # 0.2 + t·0.6 for t = 0.9, 0.1, 0.5, 0.3, 0.7 -> 0.74, 0.26, 0.50, 0.38, 0.62: tissue 0.2 -> 0.74, 0.5 -> 0.5,
    # 0.8 -> 0.62 (the darkest tissue became the brightest); 0.275 (half way between the first two) -> 0.50
    x = torch.tensor([0.2] * 40 + [0.5] * 40 + [0.8] * 40 + [0.275])
    y = remap_intensities(x, torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7]))
    assert y[0] == pytest.approx(0.74) and y[40] == pytest.approx(0.5) and y[80] == pytest.approx(0.62)
    assert y[-1] == pytest.approx(0.5)
    torch.manual_seed(1)
    t = TissueContrastRemap()
    img = torch.cat([torch.full((1, 10, 10, 10), v) for v in (0.2, 0.5, 0.8)], 1)
    orders = set()
    for _ in range(30):
        out = t(image=img.clone())["image"][0]
        levels = [float(out[i * 10:(i + 1) * 10].mean()) for i in range(3)]
        assert 0.2 - 1e-6 <= min(levels) and max(levels) <= 0.8 + 1e-6
        orders.add(tuple(np.argsort(levels)))
    assert len(orders) >= 4   # not a monotone map: the tissues' order changes between draws


def test_cutmix_moves_image_and_pseudo_label_with_the_same_box():
    img = torch.stack([torch.full((1, 6, 9, 9), 1.0), torch.full((1, 6, 9, 9), 2.0), torch.full((1, 6, 9, 9), 3.0)])
    pl = torch.stack([torch.full((6, 9, 9), 10), torch.full((6, 9, 9), 20), torch.full((6, 9, 9), 30)])
    g = torch.Generator().manual_seed(0)
    mixed_img, mixed_pl, n = cutmix_with_partner(img, pl, 1.0, 2 / 3, generator=g)
    assert n == 3
    for b in range(3):
        from_partner = mixed_img[b, 0] == (b + 1) % 3 + 1
        assert torch.equal(from_partner, mixed_pl[b] == 10 * ((b + 1) % 3 + 1))
        # the box: floor(2/3 * (6, 9, 9)) = (4, 6, 6) voxels
        assert int(from_partner.sum()) == 4 * 6 * 6
        idx = from_partner.nonzero()
        assert (idx.max(0).values - idx.min(0).values + 1).tolist() == [4, 6, 6]
    assert cutmix_with_partner(img, pl, 0.0, 2 / 3)[2] == 0


def test_unconfident_voxels_get_the_ignore_value_and_no_gradient(planned_dataset):
    t = _trainer(planned_dataset)
    inner = t._ws_loss.loss if hasattr(t._ws_loss, "loss") else t._ws_loss
    torch.manual_seed(0)
    teacher = torch.randn(2, 4, 4, 8, 8) * 4
    pl, confident = confident_pseudo_labels(teacher, 0.95, ignore_value=4)
    prob = torch.softmax(teacher, 1)
    assert torch.equal(confident, prob.max(1).values >= 0.95) and 0 < confident.float().mean() < 1
    assert torch.equal(pl[~confident], torch.full_like(pl[~confident], 4))
    assert torch.equal(pl[confident], prob.argmax(1)[confident])
    student = torch.randn(2, 4, 4, 8, 8, requires_grad=True)
    inner(student, pl[:, None]).backward()
    grad = student.grad.abs().sum(1)
    assert torch.all(grad[~confident] == 0) and torch.all(grad[confident] > 0)
    # no threshold: every voxel counts
    pl_all, conf_all = confident_pseudo_labels(teacher, None, ignore_value=4)
    assert conf_all.all() and torch.equal(pl_all, prob.argmax(1))
    # entropy filter: a sample with a high mean entropy over its predicted foreground is ignored whole
    flat = torch.zeros(1, 4, 2, 2, 2)
    flat[0, 1] = 0.1   # predicted class 1 everywhere with p ~ 0.27: entropy ~ 1 (normalised)
    pl_f, conf_f = confident_pseudo_labels(flat, None, 4, entropy_filter=0.5)
    assert not conf_f.any() and torch.all(pl_f == 4)


def _trainer(ds, **attributes):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    plans = load_json(os.path.join(ds.preprocessed_folder, "nnUNetPlans.json"))
    plans["continue_training"] = False
    t = recursive_find_trainer_class_by_name(TRAINER)(plans, "3d_fullres", "all",
                                                      load_json(os.path.join(ds.preprocessed_folder, "dataset.json")),
                                                      torch.device("cpu"))
    for k, v in attributes.items():
        setattr(t, k, v)
    t.initialize()
    return t


def test_loss_wiring_teacher_sees_weak_student_sees_strong(planned_dataset):
    """total = sup + λ_u · unsup; the pseudo-label comes from the network's output on the weak channels, the student
    forward gets the labeled patches then the strong channels (CutMix off here)."""
    t = _trainer(planned_dataset, ws_lambda_u=0.37, ws_cutmix_probability=0.0)
    t.current_epoch = t.warmup_epochs()
    calls = []
    net = t.network
    original = net.forward

    def spy(x):
        calls.append(x.detach().clone())
        return original(x)
    net.forward = spy
    torch.manual_seed(0)
    ps = tuple(t.configuration_manager.patch_size)
    x_l = torch.randn(2, 1, *ps)
    target = [torch.randint(0, 4, (2, 1, *[int(round(p * s)) for p, s in zip(ps, scale)])).to(torch.int16)
              for scale in t._get_deep_supervision_scales()]
    x_u = torch.randn(2, 2, *ps)
    terms = t.compute_losses(x_l, target, x_u)
    assert len(calls) == 2
    assert torch.equal(calls[0], x_u[:, :1])                              # teacher: the weak view
    assert torch.equal(calls[1], torch.cat((x_l, x_u[:, 1:])))            # student: labeled, then the strong view
    assert float(terms["loss"]) == pytest.approx(float(terms["sup"]) + 0.37 * float(terms["unsup"]), rel=1e-6)
    # the unsupervised term is nnU-Net's Dice + CE on the teacher's confident argmax (recomputed here)
    with torch.no_grad():
        out_u = [o[2:] for o in original(torch.cat((x_l, x_u[:, 1:])))]
        teacher = original(x_u[:, :1])[0]
    pl, _ = confident_pseudo_labels(teacher, t.ws_threshold, 4)
    from nnunetv2_semisup.methods.cml.cutmix import ds_targets
    expected = t._ws_loss(out_u, ds_targets(pl[:, None].to(torch.int16), t._get_deep_supervision_scales()))
    assert float(terms["unsup"]) == pytest.approx(float(expected), rel=1e-5)
    # during the warm-up the unlabeled weight is 0 and no unlabeled patch is requested
    t.current_epoch = 0
    if t.warmup_epochs() > 0:
        assert t.get_batch_composition() == (t.batch_size, 0) and t.unlabeled_weight() == 0


def test_train_stop_resume_predict_through_the_cli(planned_dataset, tmp_path):
    ds = planned_dataset
    copy_planned_dataset(ds, 957, "WeakStrong")
    env = dict(ds.env, nnUNet_semisup_short_epochs="3", nnUNet_semisup_short_iterations="3")
    cmd = ["nnUNetv2_train", 957, "3d_fullres", "all", "-tr", TRAINER, "-device", "cpu"]
    run_cli(cmd, dict(env, nnUNet_semisup_short_stop_after="2"))
    fold = os.path.join(ds.results, "Dataset957_WeakStrong", f"{TRAINER}__nnUNetPlans__3d_fullres", "fold_all")
    latest = torch.load(os.path.join(fold, "checkpoint_latest.pth"), map_location="cpu", weights_only=False)
    assert latest["current_epoch"] == 2 and not os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    p = run_cli(cmd + ["--c"], env)
    assert "Epoch 2" in p.stdout and "Epoch 0\n" not in p.stdout and "Epoch 1\n" not in p.stdout
    final = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3
    assert final["semisup_state"]["method"]["ws_global_step"] == 3 * 3
    shares = final["logging"]["monitor_confident_share"]
    assert len(shares) == 3 and all(0 <= s <= 1 for s in shares)
    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", os.path.join(ds.raw_folder, "imagesTs"), "-o", out, "-d", 957, "-c",
             "3d_fullres", "-f", "all", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1], env)
    assert len(glob.glob(str(out / "*.nii.gz"))) == 3


def test_contrast_remap_baseline_adds_the_remapping_to_nnunets_pipeline(planned_dataset):
    """The mixed-domain track's augmentation-only baseline: nnU-Net's own pipeline, remapping right after the spatial
    transform, nothing else changed."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2_semisup.data.intensity_remap import TissueContrastRemap
    cls = recursive_find_trainer_class_by_name("nnUNetTrainer_contrastRemap_short")
    plans = load_json(os.path.join(planned_dataset.preprocessed_folder, "nnUNetPlans.json"))
    plans["continue_training"] = False
    t = cls(plans, "3d_fullres", "all", load_json(os.path.join(planned_dataset.preprocessed_folder, "dataset.json")),
            torch.device("cpu"))
    args = ((16, 32, 32), (-0.5, 0.5), None, (0, 1, 2), False)
    stock = [repr(x) for x in nnUNetTrainer.get_training_transforms(*args).transforms]
    ours = t.get_training_transforms(*args).transforms
    assert isinstance(ours[1], RandomTransform) and isinstance(ours[1].transform, TissueContrastRemap)
    assert ours[1].apply_probability == 0.5 and [repr(x) for x in ours[:1] + ours[2:]] == stock


def test_strong_view_is_the_documented_recipe():
    """docs/weak_strong.md: the tissue-contrast remapping first (its own probability; 0 = off), then nnU-Net's six
    intensity transforms, each with probability 0.5, noise variance ≤ 0.2, blur σ 0.5-1.5, brightness and contrast
    0.5-1.5, low resolution down to 0.35 (not along ignored axes), gamma 0.5-2 (inverted with probability 0.2)."""
    t = augment.strong_intensity_transforms(ignore_axes=(0,), remap_probability=0.3).transforms
    assert [(type(r.transform).__name__, r.apply_probability) for r in t] == [
        ("TissueContrastRemap", 0.3), ("GaussianNoiseTransform", 0.5), ("GaussianBlurTransform", 0.5),
        ("MultiplicativeBrightnessTransform", 0.5), ("ContrastTransform", 0.5),
        ("SimulateLowResolutionTransform", 0.5), ("GammaTransform", 0.5)]
    noise, blur, brightness, contrast, lowres, gamma = (r.transform for r in t[1:])
    assert tuple(noise.noise_variance) == (0, 0.2) and tuple(blur.blur_sigma) == (0.5, 1.5)
    assert tuple(brightness.multiplier_range.contrast_range) == (0.5, 1.5)
    assert tuple(contrast.contrast_range.contrast_range) == (0.5, 1.5) and contrast.preserve_range
    assert tuple(lowres.scale) == (0.35, 1) and tuple(lowres.ignore_axes) == (0,)
    assert tuple(gamma.gamma.contrast_range) == (0.5, 2.0) and gamma.p_invert_image == 0.2
    assert gamma.p_retain_stats == 1
    no_remap = augment.strong_intensity_transforms(remap_probability=0).transforms
    assert [type(r.transform).__name__ for r in no_remap] == [type(r.transform).__name__ for r in t[1:]]


def test_strong_view_changes_nothing_of_nnunets_transforms_but_the_documented_ranges():
    """Every other setting of each strong transform (per-channel probabilities, channel/axis synchronisation, range
    preservation, kept statistics, ...) is nnU-Net's own, read from nnU-Net's training pipeline."""
    changed = {"noise_variance", "blur_sigma", "multiplier_range", "contrast_range", "scale", "gamma", "p_invert_image",
               "ignore_axes"}
    nnunet = [r.transform for r in nnunet_pipeline().transforms
              if isinstance(r, RandomTransform) and isinstance(r.transform, augment.INTENSITY_TRANSFORMS)]
    strong = [r.transform for r in augment.strong_intensity_transforms(remap_probability=0).transforms]
    for s in strong:
        same_class = [n for n in nnunet if type(n) is type(s)]
        assert same_class, type(s).__name__
        kept = {k: v for k, v in vars(s).items() if k not in changed}
        assert any(kept == {k: v for k, v in vars(n).items() if k not in changed} for n in same_class), \
            (type(s).__name__, kept, [vars(n) for n in same_class])
