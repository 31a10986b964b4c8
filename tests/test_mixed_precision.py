"""Mixed precision as on CUDA, with CPU stand-ins: ``torch.autocast("cpu", bfloat16)`` for nnU-Net's
float16 autocast and ``torch.amp.GradScaler("cpu")`` for its CUDA GradScaler.

For every default trainer, on real batches of the planned dataset: a step whose gradients hold an inf is skipped by
*each* optimiser it hits (its state stays empty) and lowers that optimiser's scale, while an optimiser with finite
gradients still steps (M&N's two models have two scalers); a finite step updates every optimiser with the scale
kept; gradient-norm clipping sees the unscaled gradients (the scale is 2^24, so a scaled norm could not pass); and
every logged term is float32 or wider (the losses are fp32 islands, and a bfloat16 term could not be logged).
"""
import os

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from conftest import copy_planned_dataset
from nnunetv2_semisup.methods.mn.segformer import SEGFORMER_ENV, save_tiny_segformer
from nnunetv2_semisup.training.semisup_base import unwrap

COPY_ID = 984
SCALE = 2.0 ** 24


@pytest.fixture(scope="module")
def amp_dataset(planned_dataset, tmp_path_factory):
    _, pp = copy_planned_dataset(planned_dataset, COPY_ID, "MixedPrecision")
    segformer = str(tmp_path_factory.mktemp("tiny_segformer_amp"))
    save_tiny_segformer(segformer)
    return pp, segformer


def started_trainer(name, pp):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    cls = recursive_find_trainer_class_by_name(name)
    plans = load_json(os.path.join(pp, "nnUNetPlans.json"))
    plans["continue_training"] = False  # what nnU-Net's get_trainer_from_args adds
    t = cls(plans=plans, configuration="3d_fullres", fold="all", dataset_json=load_json(os.path.join(pp, "dataset.json")),
            device=torch.device("cpu"))
    t.on_train_start()  # nnU-Net's: initialize, data loaders; the methods' own start (SKCDF's class counts)
    if hasattr(t, "cml_pretrain_epochs"):
        t.current_epoch = t.cml_pretrain_epochs  # self-training: every loss term, both streams
    t.on_train_epoch_start()
    return t


def optimisers(t):
    """name -> (optimizer, its scaler attribute, the module it trains)."""
    out = {"network": (t.optimizer, "grad_scaler", t.network)}
    if getattr(t, "optimizer_2d", None) is not None:
        out["network_2d"] = (t.optimizer_2d, "grad_scaler_2d", t.network_2d)
    return out


def first_trainable(module):
    return next(p for p in unwrap(module).parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["nnUNetTrainerMeanTeacher_short", "nnUNetTrainerMN_short",
                                  "nnUNetTrainerSKCDF_short", "nnUNetTrainerCML_short",
                                  "nnUNetTrainerWeakStrong_short"])
def test_grad_scaler_skips_inf_steps_per_optimiser_and_clips_unscaled(amp_dataset, monkeypatch, name):
    pp, segformer = amp_dataset
    monkeypatch.setenv(SEGFORMER_ENV, segformer)
    t = started_trainer(name, pp)
    try:
        opts = optimisers(t)
        for _, scaler_attr, _ in opts.values():
            setattr(t, scaler_attr, torch.amp.GradScaler("cpu", init_scale=SCALE))
        if hasattr(t, "mn_2d_grad_clip"):
            t.mn_2d_grad_clip = 1.0  # clip the 2D model too (the reference does not)
        monkeypatch.setattr(t, "autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        norms = []
        real_clip = torch.nn.utils.clip_grad_norm_

        def recording_clip(parameters, max_norm, *args, **kwargs):
            norm = real_clip(parameters, max_norm, *args, **kwargs)
            norms.append(float(norm))
            return norm
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)

        def step():
            out = t.train_step(next(t.dataloader_train))
            for k, v in out.items():
                assert np.asarray(v).dtype in (np.float32, np.float64), (k, np.asarray(v).dtype)
            return out

        for bad in opts:  # an inf gradient in one model: only its optimiser skips, only its scale drops
            for optimizer, _, _ in opts.values():
                optimizer.state.clear()
            scales = {n: getattr(t, a).get_scale() for n, (_, a, _) in opts.items()}
            handle = first_trainable(opts[bad][2]).register_hook(lambda g: torch.full_like(g, float("inf")))
            try:
                step()
            finally:
                handle.remove()
            for n, (optimizer, attr, _) in opts.items():
                if n == bad:
                    assert len(optimizer.state) == 0, f"{n}: the step with an inf gradient was not skipped"
                    assert getattr(t, attr).get_scale() == scales[n] / 2
                else:
                    assert len(optimizer.state) > 0 and getattr(t, attr).get_scale() == scales[n]

        for optimizer, _, _ in opts.values():
            optimizer.state.clear()
        scales = {n: getattr(t, a).get_scale() for n, (_, a, _) in opts.items()}
        norms.clear()
        step()
        for n, (optimizer, attr, _) in opts.items():
            assert len(optimizer.state) > 0, f"{n} did not step on finite gradients"
            assert getattr(t, attr).get_scale() == scales[n]
        assert len(norms) == len(opts)  # one clip per optimiser step
        # gradient norms of these networks are O(1e-3 .. 1e2); scaled by 2^23 they would be > 1e4
        assert all(np.isfinite(n) and n < 1e4 for n in norms), norms
    finally:
        t.dataloader_train.finish()
