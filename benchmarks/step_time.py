"""Per-iteration time and peak memory of each trainer vs stock ``nnUNetTrainer`` on the same plans.

Every trainer is measured in its own subprocess on one synthetic dataset (made, planned and preprocessed once,
with the labeled and unlabeled streams of the real trainers): a few warm-up iterations, then ``--iterations``
timed calls of ``train_step`` on batches drawn beforehand (data loading is not timed), at the middle of the
planned schedule (``--at-fraction``), repeated ``--repeats`` times interleaved (median). Peak memory is the CUDA
peak allocation on GPU and the process's peak resident set size on CPU. Results are printed as a Markdown
table with ratios to ``nnUNetTrainer``.

    python benchmarks/step_time.py                               # CPU, tiny plans (16x32x32 patch)
    python benchmarks/step_time.py --device cuda --shape 64 160 160 --features 32 64 128 256 320 320
    python benchmarks/step_time.py --trainers nnUNetTrainer nnUNetTrainerMN --out docs/step_time_cpu.md

M&N needs a SegFormer: with ``--segformer tiny`` (default on CPU) a tiny config is saved locally; ``--segformer
b2`` builds the SegFormer-B2 architecture with random weights (no hub needed); or pass a folder / hub id.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

DEFAULT_TRAINERS = ["nnUNetTrainer", "nnUNetTrainerMeanTeacher", "nnUNetTrainerMN", "nnUNetTrainerSKCDF",
                    "nnUNetTrainerCML", "nnUNetTrainerWeakStrong"]


def prepare_dataset(workdir: str, shape, features, patch, batch_size, dataset_id: int = 989) -> dict:
    """Synthetic dataset planned by stock nnU-Net, plans patched to the requested network/patch/batch."""
    env = dict(os.environ)
    env.update({"nnUNet_raw": os.path.join(workdir, "raw"), "nnUNet_preprocessed": os.path.join(workdir, "pp"),
                "nnUNet_results": os.path.join(workdir, "results"), "nnUNet_def_n_proc": "1",
                "nnUNet_compile": env.get("nnUNet_compile", "0")})
    from nnunetv2_semisup.trainer_dir import TRAINER_DIR
    env["nnUNet_extTrainer"] = TRAINER_DIR
    binary = os.path.dirname(sys.executable)
    run = lambda *a: subprocess.run([os.path.join(binary, a[0]), *map(str, a[1:])], env=env, check=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run("nnUNetv2_semisup_make_synthetic", "-d", dataset_id, "--labeled", 2, "--unlabeled", 2, "--test", 0,
        "--shape", *shape)
    run("nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "3d_fullres", "-np", 1)
    name = f"Dataset{dataset_id:03d}_SemiSupSynthetic"
    plans_file = os.path.join(env["nnUNet_preprocessed"], name, "nnUNetPlans.json")
    with open(plans_file) as f:
        plans = json.load(f)
    conf = plans["configurations"]["3d_fullres"]
    arch = conf["architecture"]["arch_kwargs"]
    if features:
        arch["features_per_stage"] = (list(features) + [features[-1]] * arch["n_stages"])[: arch["n_stages"]]
    if patch:
        conf["patch_size"] = list(patch)
    if batch_size:
        conf["batch_size"] = batch_size
    with open(plans_file, "w") as f:
        json.dump(plans, f, indent=2)
    run("nnUNetv2_semisup_preprocess", "-d", dataset_id, "-c", "3d_fullres", "-np", 1)
    env["nnUNet_n_proc_DA"] = "0"
    return {"env": env, "dataset_id": dataset_id, "patch": conf["patch_size"], "batch_size": conf["batch_size"],
            "features": arch["features_per_stage"]}


def measure_one(trainer_name: str, dataset_id: int, device: str, warmup: int, iterations: int,
                at_fraction: float) -> dict:
    """Runs inside the subprocess: build the trainer, move it to epoch ``at_fraction · num_epochs`` (so that
    methods with stages are measured in their semi-supervised phase), draw batches, time train_step."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args(str(dataset_id), "3d_fullres", "all", trainer_name,
                                    device=torch.device(device))
    trainer.on_train_start()
    trainer.current_epoch = int(at_fraction * trainer.num_epochs)
    trainer.on_train_epoch_start()
    batches = [next(trainer.dataloader_train) for _ in range(warmup + iterations)]
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for b in batches[:warmup]:
        trainer.train_step(b)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for b in batches[warmup:]:
        trainer.train_step(b)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iterations
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    composition = trainer.dataloader_train.composition if hasattr(trainer.dataloader_train, "composition") else \
        (trainer.batch_size, 0)
    if hasattr(trainer.dataloader_train, "finish"):
        trainer.dataloader_train.finish()
    return {"trainer": trainer_name, "s_per_iter": seconds, "peak_mb": peak, "rss_after_setup_mb": rss_setup,
            "b_l": composition[0], "b_u": composition[1]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 32, 32], help="synthetic volume shape z y x")
    parser.add_argument("--patch", type=int, nargs=3, default=None, help="override the planned patch size")
    parser.add_argument("--batch-size", type=int, default=None, help="override the planned batch size")
    parser.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 32, 32, 32],
                        help="features per stage of the planned U-Net (default tiny: 8 16 32 ...)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds over all trainers (interleaved); the median per trainer is reported")
    parser.add_argument("--at-fraction", type=float, default=0.5,
                        help="measure at this fraction of the planned epochs (default 0.5: co-/self-training)")
    parser.add_argument("--segformer", default=None,
                        help="'tiny' (default on CPU), 'b2' (random-init B2 architecture) or a folder / hub id")
    parser.add_argument("--out", default=None, help="also write the Markdown table to this file")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._child:  # measurement subprocess
        result = measure_one(args._child[0], int(args._child[1]), args.device, args.warmup, args.iterations,
                             args.at_fraction)
        print("RESULT " + json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory() as workdir:
        info = prepare_dataset(workdir, args.shape, args.features, args.patch, args.batch_size)
        env = info["env"]
        segformer = args.segformer or ("tiny" if args.device == "cpu" else "b2")
        if segformer in ("tiny", "b2"):
            from nnunetv2_semisup.methods.mn.segformer import save_tiny_segformer
            folder = os.path.join(workdir, f"segformer_{segformer}")
            if segformer == "tiny":
                save_tiny_segformer(folder)
            else:
                from transformers import SegformerConfig, SegformerForSemanticSegmentation
                SegformerForSemanticSegmentation(SegformerConfig(
                    hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], num_attention_heads=[1, 2, 5, 8],
                    decoder_hidden_size=768)).save_pretrained(folder)
            segformer = folder
        env["nnUNet_semisup_segformer"] = segformer
        runs = {name: [] for name in args.trainers}
        for _ in range(args.repeats):
            for name in args.trainers:  # interleaved, so load changes on a shared machine hit every trainer
                cmd = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--warmup",
                       str(args.warmup), "--iterations", str(args.iterations), "--at-fraction",
                       str(args.at_fraction), "--_child", name, str(info["dataset_id"])]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                    continue
                runs[name].append(json.loads(lines[-1][7:]))
                print(f"{name}: {runs[name][-1]['s_per_iter']:.3f} s/iter, peak {runs[name][-1]['peak_mb']:.0f} MB",
                      flush=True)
        results = []
        for name, rs in runs.items():
            if rs:
                median = sorted(rs, key=lambda r: r["s_per_iter"])[len(rs) // 2]
                results.append({**median, "peak_mb": max(r["peak_mb"] for r in rs)})

    base = next((r for r in results if r["trainer"] == "nnUNetTrainer"), None)
    mem = "peak CUDA MB" if args.device == "cuda" else "peak RSS MB"
    lines = [f"device {args.device}, patch {info['patch']}, batch size {info['batch_size']}, features "
             f"{info['features']}, epoch {args.at_fraction:g} x num_epochs, median of {args.repeats} runs of "
             f"{args.iterations} timed iterations after {args.warmup} warm-up", "",
             f"| trainer | b_l + b_u | s / iteration | x nnUNetTrainer | {mem} | x nnUNetTrainer |",
             "|---|---|---|---|---|---|"]
    for r in results:
        t_ratio = f"{r['s_per_iter'] / base['s_per_iter']:.2f}" if base else "-"
        m_ratio = f"{r['peak_mb'] / base['peak_mb']:.2f}" if base else "-"
        lines.append(f"| {r['trainer']} | {r['b_l']} + {r['b_u']} | {r['s_per_iter']:.3f} | {t_ratio} | "
                     f"{r['peak_mb']:.0f} | {m_ratio} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0 if all(len(rs) == args.repeats for rs in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
