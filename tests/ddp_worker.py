"""Train one trainer on two CPU processes with the gloo backend, as ``nnUNetv2_train ... -num_gpus 2`` does on two
GPUs, and write a report (used by tests/test_ddp.py).

    python tests/ddp_worker.py TRAINER PREPROCESSED_DATASET_FOLDER REPORT.json [--c] [--stop-after EPOCHS]
    python tests/ddp_worker.py --initialize-only TRAINER[,TRAINER...] PREPROCESSED_DATASET_FOLDER REPORT.json \
        [--batch-size-override N]

nnU-Net puts every DDP rank on ``cuda:<rank>`` and wraps its network with ``device_ids=[rank]``; here the trainer is
subclassed to keep the CPU and nnU-Net's DDP call gets no device ids (what DDP requires for CPU modules). Everything
else is the real trainer: nnU-Net's per-GPU batch split, its DDP loss and logging, our streams, steps and hooks.
The report holds, per rank: every module's parameters (as hashes), the method state, the batch sizes and
compositions, the case keys of the patches each step used, and the files each rank opened for writing under
``nnUNet_results``. With ``--initialize-only`` each trainer is only initialised (optionally with
``batch_size_override``), and the report holds per trainer and rank the batch size, the foreground oversampling and the
batch composition of the first and the last epoch, or the error that initialisation raised.
"""
import builtins
import hashlib
import json
import os
import pickle
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def cpu_ddp_trainer(cls):
    class CPUDDPTrainer(cls):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.device, self.grad_scaler = torch.device("cpu"), None  # nnU-Net set cuda:<rank> (and its scaler)
    CPUDDPTrainer.__name__ = CPUDDPTrainer.__qualname__ = cls.__name__  # same output folder as the real trainer
    return CPUDDPTrainer


class Interrupted(Exception):
    pass


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def run_rank(rank: int, world: int, port: int, name: str, pp: str, report: str, resume: bool, stop_after):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as nnunet_trainer_module
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2_semisup.training.semisup_base import unwrap

    real_ddp = nnunet_trainer_module.DDP
    nnunet_trainer_module.DDP = lambda module, device_ids=None, **kwargs: real_ddp(module, **kwargs)

    writes = []  # files this rank opens for writing under nnUNet_results
    real_open = builtins.open

    def recording_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(m in mode for m in "wax") and \
                os.path.abspath(file).startswith(os.path.abspath(nnUNet_results)):
            writes.append(os.path.relpath(os.path.abspath(file), nnUNet_results))
        return real_open(file, mode, *args, **kwargs)
    builtins.open = recording_open
    real_save = torch.save

    def recording_save(obj, f, *args, **kwargs):  # torch.save opens file names in C++, not through open()
        recording_open(f, "wb").close() if isinstance(f, (str, os.PathLike)) else None
        return real_save(obj, f, *args, **kwargs)
    torch.save = recording_save
    real_replace = os.replace

    def recording_replace(src, dst, *args, **kwargs):  # atomic writes: temporary file, then rename
        recording_open(dst, "ab").close()
        return real_replace(src, dst, *args, **kwargs)
    os.replace = recording_replace

    cls = cpu_ddp_trainer(recursive_find_trainer_class_by_name(name))
    plans = load_json(os.path.join(pp, "nnUNetPlans.json"))
    plans["continue_training"] = resume
    trainer = cls(plans=plans, configuration="3d_fullres", fold="all",
                  dataset_json=load_json(os.path.join(pp, "dataset.json")), device=torch.device("cuda"))
    steps = []
    train_step = trainer.train_step

    def recording_step(batch):
        steps.append({"epoch": trainer.current_epoch, "labeled": list(map(str, batch.get("keys", []))),
                      "unlabeled": list(map(str, batch.get("unlabeled", {}).get("keys", [])))})
        return train_step(batch)
    trainer.train_step = recording_step
    if stop_after is not None:
        end_of_epoch = trainer.on_epoch_end

        def on_epoch_end():
            end_of_epoch()
            if trainer.current_epoch == stop_after:
                raise Interrupted
        trainer.on_epoch_end = on_epoch_end
    if resume:
        trainer.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_latest.pth"))
    resumed_at = trainer.current_epoch
    try:
        trainer.run_training()
    except Interrupted:
        trainer.dataloader_train.finish()
    builtins.open, torch.save, os.replace = real_open, real_save, real_replace

    modules = {"network": trainer.network}
    modules.update({k: v for k, v in trainer.extra_checkpoint_objects.items() if isinstance(v, torch.nn.Module)})
    mine = {
        "rank": rank, "is_ddp": trainer.is_ddp, "resumed_at": resumed_at, "epoch": trainer.current_epoch,
        "batch_size": trainer.batch_size, "planned_batch_size": trainer.configuration_manager.batch_size,
        "ddp_wrapped": sorted(k for k, m in modules.items() if isinstance(m, torch.nn.parallel.DistributedDataParallel)),
        "parameters": {k: {n: digest(p) for n, p in unwrap(m).state_dict().items()} for k, m in modules.items()},
        "method_state": hashlib.sha256(pickle.dumps(trainer.get_method_state())).hexdigest(),
        "method_state_repr": repr(trainer.get_method_state())[:2000],
        "compositions": trainer.logger.local_logger.my_fantastic_logging["batch_unlabeled"],
        "steps": steps, "writes": sorted(set(writes)),
    }
    write_report(rank, world, report, mine)


def write_report(rank: int, world: int, report: str, mine: dict) -> None:
    """Rank 0 writes every rank's report; then the process group ends and the rank exits at once. Left to Python's
    interpreter shutdown, a rank aborted about once in 50 runs after a clean ``destroy_process_group`` ("terminate
    called without an active exception": C++ threads torn down during finalization), which failed a CI run; the
    report is complete by then, so nothing is lost by skipping finalization."""
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        with open(report, "w") as f:
            json.dump(everyone, f)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def initialize_only(rank: int, world: int, port: int, names: str, pp: str, report: str, override):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as nnunet_trainer_module
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    real_ddp = nnunet_trainer_module.DDP
    nnunet_trainer_module.DDP = lambda module, device_ids=None, **kwargs: real_ddp(module, **kwargs)
    mine = {}
    for name in names.split(","):
        cls = cpu_ddp_trainer(recursive_find_trainer_class_by_name(name))
        plans = {**load_json(os.path.join(pp, "nnUNetPlans.json")), "continue_training": False}
        trainer = cls(plans=plans, configuration="3d_fullres", fold="all",
                      dataset_json=load_json(os.path.join(pp, "dataset.json")), device=torch.device("cuda"))
        trainer.batch_size_override = override
        planned_oversample = trainer.oversample_foreground_percent  # the share of the global batch
        try:
            trainer.initialize()
            first = trainer.get_batch_composition()
            trainer.current_epoch = trainer.num_epochs - 1
            last = trainer.get_batch_composition()
        except ValueError as e:
            mine[name] = {"error": str(e)}
            continue
        mine[name] = {"batch_size": trainer.batch_size, "oversample": trainer.oversample_foreground_percent,
                      "planned_oversample": planned_oversample,
                      "planned_batch_size": trainer.configuration_manager.batch_size,
                      "first_epoch": list(first), "last_epoch": list(last)}
    write_report(rank, world, report, mine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--initialize-only":
        override = int(args[args.index("--batch-size-override") + 1]) if "--batch-size-override" in args else None
        mp.spawn(initialize_only, args=(2, free_port(), *args[1:4], override), nprocs=2, join=True)
        sys.exit(0)
    resume = "--c" in args
    stop = int(args[args.index("--stop-after") + 1]) if "--stop-after" in args else None
    name, pp, report = args[:3]
    mp.spawn(run_rank, args=(2, free_port(), name, pp, report, resume, stop), nprocs=2, join=True)
