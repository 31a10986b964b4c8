"""SKCDF end to end through the real CLI on the synthetic 3-foreground-class dataset (docs/spec/skcdf.md §5, property
18): train ``nnUNetTrainerSKCDF_short`` on CPU, resume with ``--c`` (restored state compared in-process), and
predict with stock ``nnUNetv2_predict`` (strict load of ``network_weights`` into ``build_network_architecture``).
"""
import glob
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import run_cli

TRAINER = "nnUNetTrainerSKCDF_short"


def _env(ds, epochs):
    env = dict(ds.env)
    env.update({"nnUNet_semisup_short_epochs": str(epochs), "nnUNet_semisup_short_iterations": "1",
                "nnUNet_semisup_short_val_iterations": "1"})
    return env


def _output_folder(ds, trainer=TRAINER):
    return os.path.join(ds.results, ds.name, f"{trainer}__nnUNetPlans__3d_fullres", "fold_all")


@pytest.fixture(scope="module")
def skcdf_run(planned_dataset):
    """Train 2 epochs; overwrite p in the checkpoint with a marker; resume with --c to 3 epochs."""
    ds = planned_dataset
    run_cli(["nnUNetv2_train", ds.dataset_id, "3d_fullres", "all", "-tr", TRAINER, "-device", "cpu"], _env(ds, 2))
    out = _output_folder(ds)
    ckpt_file = os.path.join(out, "checkpoint_final.pth")
    first = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    # a marker p that a fresh computation could never give: proves --c restores instead of recomputing
    marked = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    marker_p = np.array([0.125, 0.5, 0.75, 1.0])
    marked["semisup_state"]["method"]["p"] = marker_p
    torch.save(marked, ckpt_file)
    run_cli(["nnUNetv2_train", ds.dataset_id, "3d_fullres", "all", "-tr", TRAINER, "-device", "cpu", "--c"],
            _env(ds, 3))
    second = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    return ds, out, first, second, marker_p


def test_first_run_state(skcdf_run):
    ds, out, first, second, _ = skcdf_run
    st = first["semisup_state"]["method"]
    counts = np.asarray(st["class_counts"])
    assert counts.shape == (4,) and (counts > 0).all()
    # counts over all 4 labeled training cases (fold all) of the preprocessed segmentations
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    folder = os.path.join(ds.preprocessed_folder, "nnUNetPlans_3d_fullres")
    cls = infer_dataset_class(folder)
    ids = cls.get_identifiers(folder)
    assert len(ids) == 4
    expected = np.zeros(4, np.int64)
    for k in ids:
        seg = np.asarray(cls(folder, [k]).load_case(k)[1]).astype(np.int64)
        expected += np.bincount(np.clip(seg, 0, None).ravel(), minlength=4)
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_allclose(st["p"], counts.min() / counts)
    assert st["p"][np.argmin(counts)] == 1.0
    assert st["iterations"] == 2 and first["current_epoch"] == 2
    assert st["last_ramp_weight"] == pytest.approx(10.0)  # epoch 1 of E = 2: w(R) = λ_u
    log = "".join(open(f).read() for f in glob.glob(os.path.join(out, "training_log_*.txt")))
    assert "w_u=0.0674" in log  # epoch 0: 10·e^−5
    assert set(first["network_weights"]) == set(second["network_weights"])
    assert any(k.startswith("skcm.") for k in first["network_weights"])
    assert any(k.startswith("decoder_l.head_aux") for k in first["network_weights"])


def test_resume_restores_state(skcdf_run):
    ds, out, first, second, marker_p = skcdf_run
    st = second["semisup_state"]["method"]
    np.testing.assert_array_equal(st["p"], marker_p)  # restored, not recomputed
    np.testing.assert_array_equal(st["class_counts"], first["semisup_state"]["method"]["class_counts"])
    assert st["iterations"] == 3 and second["current_epoch"] == 3
    assert st["last_ramp_weight"] == pytest.approx(10.0)  # epoch 2 of E = 3
    for k, v in first["network_weights"].items():
        if v.dtype.is_floating_point and k.endswith("weight") and "norm" not in k and "skcm" in k:
            assert not torch.equal(v, second["network_weights"][k]), k  # training continued
            break
    log = "".join(open(f).read() for f in glob.glob(os.path.join(out, "training_log_*.txt")))
    assert "loss terms: sup_main=" in log and "mask_u=" in log


def test_checkpoint_loads_into_fresh_trainer(skcdf_run):
    ds, out, first, second, marker_p = skcdf_run
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args(str(ds.dataset_id), "3d_fullres", "all", TRAINER, continue_training=True,
                                    device=torch.device("cpu"))
    trainer.load_checkpoint(os.path.join(out, "checkpoint_final.pth"))
    np.testing.assert_array_equal(trainer.skcdf_p, marker_p)
    np.testing.assert_array_equal(trainer.skcdf_class_counts, second["semisup_state"]["method"]["class_counts"])
    assert trainer.skcdf_iterations == 3 and trainer.current_epoch == 3
    for k, v in trainer.network.state_dict().items():
        assert torch.equal(v.cpu(), second["network_weights"][k]), k
    opt = trainer.optimizer.state_dict()
    ref = second["optimizer_state"]
    for pid, s in ref["state"].items():
        assert torch.equal(opt["state"][pid]["momentum_buffer"].cpu(), s["momentum_buffer"])


def test_strict_load_into_build_network_architecture(skcdf_run):
    ds, out, first, second, _ = skcdf_run
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_semisup.methods.skcdf.variants import nnUNetTrainerSKCDF_short
    pm = PlansManager(os.path.join(out, "..", "plans.json"))
    net = nnUNetTrainerSKCDF_short.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 4,
                                                               enable_deep_supervision=False)
    net.load_state_dict(second["network_weights"], strict=True)
    with pytest.raises(ValueError, match="deep supervision"):
        nnUNetTrainerSKCDF_short.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 4, True)


def test_stock_predict(skcdf_run, tmp_path):
    ds, out, first, second, _ = skcdf_run
    pred = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", os.path.join(ds.raw_folder, "imagesTs"), "-o", pred, "-d", ds.dataset_id,
             "-c", "3d_fullres", "-f", "all", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", 1,
             "-nps", 1, "-chk", "checkpoint_final.pth"], ds.env)
    with open(os.path.join(ds.raw_folder, "dataset.json")) as f:
        ending = json.load(f)["file_ending"]
    images = sorted(glob.glob(os.path.join(ds.raw_folder, "imagesTs", f"*_0000{ending}")))
    assert len(images) == 3
    for img_file in images:
        case = os.path.basename(img_file)[: -len(f"_0000{ending}")]
        seg = sitk.ReadImage(str(pred / f"{case}{ending}"))
        img = sitk.ReadImage(img_file)
        assert seg.GetSize() == img.GetSize()
        np.testing.assert_allclose(seg.GetSpacing(), img.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(seg.GetOrigin(), img.GetOrigin(), atol=1e-4)
        arr = sitk.GetArrayFromImage(seg)
        assert arr.min() >= 0 and arr.max() <= 3


def test_variants_found_by_nnunet_and_configured(planned_dataset):
    """Every variant is found through nnU-Net's own trainer lookup (nnUNet_extTrainer) and has the spec's
    attributes; _paper derives its iterations per epoch from the unlabeled set (6 cases → 3)."""
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2_semisup.methods.skcdf.variants import __all__ as names
    ds = planned_dataset
    expected = {"nnUNetTrainerSKCDF": (True, True, True, "reference"),
                "nnUNetTrainerSKCDF_truemask": (True, True, True, "true"),
                "nnUNetTrainerSKCDF_noSKCM": (False, True, True, "reference"),
                "nnUNetTrainerSKCDF_noABSH": (True, False, True, "reference"),
                "nnUNetTrainerSKCDF_noEMA": (True, True, False, "reference"),
                "nnUNetTrainerSKCDF_DF": (False, False, True, "reference"),
                "nnUNetTrainerSKCDF_DF_noEMA": (False, False, False, "reference")}
    for name in names:
        tr = get_trainer_from_args(str(ds.dataset_id), "3d_fullres", "all", name, device=torch.device("cpu"))
        assert type(tr).__name__ == name
        assert tr.enable_deep_supervision is False and tr.skcdf_lambda_u == 10.0 and tr.skcdf_ema_omega == 0.99
        if name in expected:
            assert (tr.skcdf_use_skcm, tr.skcdf_use_aux, tr.skcdf_use_ema, tr.skcdf_mask_mode) == expected[name]
        assert tr.skcdf_rampup_fraction == (0.4 if "earlyRamp" in name else 1.0)
    early = get_trainer_from_args(str(ds.dataset_id), "3d_fullres", "all", "nnUNetTrainerSKCDF_earlyRamp_short",
                                  device=torch.device("cpu"))
    early.num_epochs = 11  # R = 0.4 · 10 = 4 epochs (published: R = 10)
    assert early.unlabeled_weight(0) == pytest.approx(10 * math.exp(-5))
    assert early.unlabeled_weight(2) == pytest.approx(10 * math.exp(-5 * 0.25))
    assert early.unlabeled_weight(4) == early.unlabeled_weight(10) == 10.0
    published = get_trainer_from_args(str(ds.dataset_id), "3d_fullres", "all", "nnUNetTrainerSKCDF_short",
                                      device=torch.device("cpu"))
    published.num_epochs = 11
    assert published.unlabeled_weight(4) == pytest.approx(10 * math.exp(-5 * 0.36))
    tr = get_trainer_from_args(str(ds.dataset_id), "3d_fullres", "all", "nnUNetTrainerSKCDF_paper",
                               device=torch.device("cpu"))
    tr.initialize()
    assert tr.num_iterations_per_epoch == 3 and tr.num_epochs == 1500
    assert tr.get_batch_composition() == (2, 2) and tr.grad_clip is None
    group = tr.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.3, 0.9, True, 3e-5)
    drops = [m for m in tr.network.modules() if isinstance(m, torch.nn.Dropout3d)]
    assert len(drops) == 3 and all(m.p == 0.5 for m in drops)  # bottleneck + last features of both decoders
    tr.lr_scheduler.step(750)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.3 * 0.5 ** 0.9)
    # the benchmark's paper row: the same recipe, the short schedule's epochs and iterations (not ⌊|U|/2⌋ = 3)
    short = get_trainer_from_args(str(ds.dataset_id), "3d_fullres", "all", "nnUNetTrainerSKCDF_paper_short",
                                  device=torch.device("cpu"))
    short.initialize()
    assert (short.num_epochs, short.num_iterations_per_epoch) == (4, 5)
    assert short.get_batch_composition() == (2, 2) and short.grad_clip is None
    group = short.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.3, 0.9, True, 3e-5)
    assert all(m.p == 0.5 for m in short.network.modules() if isinstance(m, torch.nn.Dropout3d))
