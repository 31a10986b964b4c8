"""torch.compile as nnU-Net applies it on CUDA, forced on here on the CPU.

nnU-Net compiles ``self.network`` in ``initialize`` when ``_do_i_compile()`` says so (on CUDA by default, never on the
CPU). These tests force that decision on and give ``torch.compile`` the cheap ``eager`` backend (the wrapping —
``OptimizedModule``, ``_orig_mod`` — is the same as with inductor; only code generation is skipped). Each trainer
trains two of three epochs compiled and is interrupted, resumes through ``--c``'s code path compiled for the third;
its checkpoints carry no ``_orig_mod.`` prefix and load strictly into the plain, uncompiled modules; the default
trainers' final models predict with the stock ``nnUNetv2_predict``.
"""
import functools
import os

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from torch._dynamo import OptimizedModule

from conftest import copy_planned_dataset, run_cli
from nnunetv2_semisup.methods.mn.segformer import SEGFORMER_ENV, save_tiny_segformer
from nnunetv2_semisup.training.semisup_base import unwrap

COPY_ID = 983
COPY_NAME = f"Dataset{COPY_ID}_Compile"


@pytest.fixture(scope="module")
def compile_dataset(planned_dataset, tmp_path_factory):
    raw, pp = copy_planned_dataset(planned_dataset, COPY_ID, "Compile")
    segformer = str(tmp_path_factory.mktemp("tiny_segformer_compile"))
    save_tiny_segformer(segformer)
    return planned_dataset, raw, pp, segformer


@pytest.fixture
def compiling(monkeypatch):
    """nnU-Net's compile decision forced on (as on CUDA), torch.compile with the eager backend."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    state = {"on": True}
    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", lambda self: state["on"])
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    return state


def trainer_class(name: str):
    """A ``*_short`` trainer by name, or a short version of an architecture variant without one."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2_semisup.training.short_schedule import ShortScheduleMixin
    if name.endswith("_short"):
        return recursive_find_trainer_class_by_name(name)
    return type(name + "_shortCompile", (ShortScheduleMixin, recursive_find_trainer_class_by_name(name)), {})


def make(cls, pp):
    plans = load_json(os.path.join(pp, "nnUNetPlans.json"))
    plans["continue_training"] = False  # what nnU-Net's get_trainer_from_args adds
    dataset_json = load_json(os.path.join(pp, "dataset.json"))
    return cls(plans=plans, configuration="3d_fullres", fold="all", dataset_json=dataset_json,
               device=torch.device("cpu"))


def module_state_dicts(checkpoint: dict, trainer) -> dict:
    """Every module state in the checkpoint: network_weights and the trainer's extra module entries."""
    out = {"network_weights": checkpoint["network_weights"]}
    out.update({k: checkpoint[k] for k, obj in trainer.extra_checkpoint_objects.items()
                if isinstance(obj, torch.nn.Module)})
    return out


CASES = [  # (trainer, predict with stock nnUNetv2_predict)
    ("nnUNetTrainerMeanTeacher_short", True), ("nnUNetTrainerMN_short", True), ("nnUNetTrainerSKCDF_short", True),
    ("nnUNetTrainerCML_short", True), ("nnUNetTrainerWeakStrong_short", True),
    # variants that change the architecture
    ("nnUNetTrainerSKCDF_noSKCM", False), ("nnUNetTrainerSKCDF_DF_short", False),
    ("nnUNetTrainerCML_identical_short", False),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,predict", CASES)
def test_compiled_training_resume_and_plain_checkpoints(compile_dataset, compiling, monkeypatch, tmp_path, name,
                                                        predict):
    ds, raw, pp, segformer = compile_dataset
    for k, v in {"nnUNet_semisup_short_epochs": "3", "nnUNet_semisup_short_iterations": "2",
                 "nnUNet_semisup_short_val_iterations": "1", "nnUNet_semisup_short_skip_validation": "1",
                 SEGFORMER_ENV: segformer}.items():
        monkeypatch.setenv(k, v)
    cls = trainer_class(name)

    trainer = make(cls, pp)
    stop_after_epoch(trainer, 2)  # as if the run had been killed: checkpoint_latest.pth holds epoch 2
    with pytest.raises(Interrupted):
        trainer.run_training()
    trainer.dataloader_train.finish()
    assert isinstance(unwrap_ddp(trainer.network), OptimizedModule)  # nnU-Net did compile it
    latest = os.path.join(trainer.output_folder, "checkpoint_latest.pth")
    checkpoint = torch.load(latest, map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2
    states = module_state_dicts(checkpoint, trainer)
    assert len(states) >= 1
    for key, state in states.items():
        assert not [k for k in state if "_orig_mod" in k], key

    # the plain modules: nnU-Net's predictor builds network_weights' module from the class and loads it strictly
    compiling["on"] = False
    plain = make(cls, pp)
    plain.initialize()
    assert not isinstance(plain.network, OptimizedModule)
    net = cls.build_network_architecture(plain.plans_manager, plain.configuration_manager, plain.num_input_channels,
                                         plain.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    net.load_state_dict(checkpoint["network_weights"], strict=True)
    for key, obj in plain.extra_checkpoint_objects.items():
        if isinstance(obj, torch.nn.Module):
            unwrap(obj).load_state_dict(checkpoint[key], strict=True)

    # --c under compile: nnU-Net's load_checkpoint initialises (compiling) and loads into _orig_mod
    compiling["on"] = True
    resumed = make(cls, pp)
    resumed.load_checkpoint(latest)
    assert isinstance(resumed.network, OptimizedModule) and resumed.current_epoch == 2
    for k, v in unwrap(resumed.network).state_dict().items():
        assert torch.equal(v, checkpoint["network_weights"][k]), k
    resumed.run_training()
    again = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), map_location="cpu",
                       weights_only=False)
    assert again["current_epoch"] == 3
    for key, state in module_state_dicts(again, resumed).items():
        assert not [k for k in state if "_orig_mod" in k], key

    if predict:
        pred = tmp_path / "pred"
        run_cli(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", pred, "-d", COPY_ID, "-c",
                 "3d_fullres", "-f", "all", "-tr", name, "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1],
                {**ds.env, SEGFORMER_ENV: segformer})
        assert len([f for f in os.listdir(pred) if f.endswith(".nii.gz")]) == len(os.listdir(
            os.path.join(raw, "imagesTs")))


class Interrupted(Exception):
    pass


def stop_after_epoch(trainer, epochs: int) -> None:
    end_of_epoch = trainer.on_epoch_end

    def on_epoch_end():
        end_of_epoch()  # writes checkpoint_latest.pth (save_every = 1), then counts the epoch
        if trainer.current_epoch == epochs:
            raise Interrupted
    trainer.on_epoch_end = on_epoch_end


def unwrap_ddp(module):
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module
