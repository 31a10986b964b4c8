"""One command that checks the trainers where users run them: a GPU with nnU-Net's CUDA defaults.

    python benchmarks/gpu_check.py --out docs/gpu_check.md            # on one CUDA GPU (budget: about 8 minutes)
    python benchmarks/gpu_check.py --device cpu --out /tmp/check.md   # every piece on the CPU at tiny sizes

1. A synthetic dataset planned by stock nnU-Net (on CUDA: 80x192x192 volumes, nnU-Net's planned features, a
   64x160x160 patch; on the CPU: 24x48x48 volumes, 8-32 features, a 16x32x32 patch).
2. For each trainer (``*_short``): ``nnUNetv2_train`` with nnU-Net's defaults for the device (on CUDA: torch.compile
   unless ``nnUNet_compile`` says otherwise, float16 autocast with a GradScaler), stopped after epoch 1 as if killed
   (``nnUNet_semisup_short_stop_after``); ``nnUNetv2_train --c`` to the end; stock ``nnUNetv2_predict`` on two
   cases. Each step's wall time and whether it succeeded go in the table, with whether nnU-Net compiled.
3. ``benchmarks/step_time.py`` at the papers' patch (64x160x160 on CUDA) against stock ``nnUNetTrainer``, with
   peak memory; M&N with a SegFormer-B2-shaped config and random weights.

The Markdown report (``--out``) is what goes into docs/benchmarks.md.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from step_time import prepare_dataset  # noqa: E402

TRAINERS = ["nnUNetTrainerMeanTeacher_short", "nnUNetTrainerMN_short", "nnUNetTrainerSKCDF_short",
            "nnUNetTrainerCML_short"]
SIZES = {  # device -> (volume shape, features per stage (None: planned), patch)
    "cuda": ((80, 192, 192), None, (64, 160, 160)),
    "cpu": ((24, 48, 48), (8, 16, 32, 32), (16, 32, 32)),
}


def run(cmd, env, log):
    t0 = time.time()
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}\n")
    return proc.returncode == 0, time.time() - t0, proc.stdout


def check_trainer(name, info, device, epochs, iterations, workdir, log):
    binary = os.path.dirname(sys.executable)
    env = {**info["env"], "nnUNet_semisup_short_epochs": str(epochs),
           "nnUNet_semisup_short_iterations": str(iterations), "nnUNet_semisup_short_val_iterations": "2",
           "nnUNet_semisup_short_skip_validation": "1"}
    if device == "cuda":
        env.pop("nnUNet_compile", None)  # nnU-Net's default on CUDA: compile
        env["nnUNet_n_proc_DA"] = os.environ.get("nnUNet_n_proc_DA", "4")
    train = [os.path.join(binary, "nnUNetv2_train"), info["dataset_id"], "3d_fullres", "all", "-tr", name,
             "-device", device]
    row = {"trainer": name}
    ok, row["train_s"], out = run(train, {**env, "nnUNet_semisup_short_stop_after": "1"}, log)
    row["compiled"] = "Using torch.compile" in out
    if ok:
        ok, row["resume_s"], _ = run(train + ["--c"], env, log)
    if ok:
        images = os.path.join(workdir, f"predict_in_{name}")
        os.makedirs(images, exist_ok=True)
        raw_images = os.path.join(info["env"]["nnUNet_raw"], f"Dataset{info['dataset_id']:03d}_SemiSupSynthetic",
                                  "imagesTr")
        for f in sorted(os.listdir(raw_images))[:2]:
            shutil.copy(os.path.join(raw_images, f), images)
        out_dir = os.path.join(workdir, f"predict_out_{name}")
        ok, row["predict_s"], _ = run([os.path.join(binary, "nnUNetv2_predict"), "-i", images, "-o", out_dir, "-d",
                                       info["dataset_id"], "-c", "3d_fullres", "-f", "all", "-tr", name, "-device",
                                       device, "-npp", 1, "-nps", 1], env, log)
        ok = ok and len([f for f in os.listdir(out_dir) if f.endswith(".nii.gz")]) == 2
    row["ok"] = ok
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=None, help="per epoch (default: 10 on CUDA, 3 on CPU)")
    parser.add_argument("--skip-step-time", action="store_true")
    parser.add_argument("--out", default=None, help="write the Markdown report here")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("ERROR: --device cuda but torch sees no CUDA GPU; use --device cpu for the tiny CPU check.",
                  file=sys.stderr)
            return 1
    iterations = args.iterations or (10 if args.device == "cuda" else 3)
    shape, features, patch = SIZES[args.device]
    t_start = time.time()
    lines = [f"# GPU check ({args.device})", ""]
    with tempfile.TemporaryDirectory() as workdir:
        log = os.path.join(workdir, "commands.log")
        info = prepare_dataset(workdir, shape, features, patch, None, dataset_id=988)
        from nnunetv2_semisup.methods.mn.segformer import save_tiny_segformer
        segformer = os.path.join(workdir, "segformer")
        save_tiny_segformer(segformer)  # the CLI runs only check the pipeline; step_time uses a B2-shaped config
        info["env"]["nnUNet_semisup_segformer"] = segformer
        rows = []
        for name in args.trainers:
            rows.append(check_trainer(name, info, args.device, args.epochs, iterations, workdir, log))
            r = rows[-1]
            print(f"{name}: {'ok' if r['ok'] else 'FAILED'} (train {r.get('train_s', 0):.0f} s, "
                  f"--c {r.get('resume_s', 0):.0f} s, predict {r.get('predict_s', 0):.0f} s)", flush=True)
        failed = [r["trainer"] for r in rows if not r["ok"]]
        if failed:
            with open(log) as f:
                print(f.read()[-6000:], file=sys.stderr)
        lines += [f"Patch {info['patch']}, batch size {info['batch_size']}, features {info['features']}; "
                  f"{args.epochs} epochs of {iterations} iterations, stopped after epoch 1 and continued with --c.",
                  "", "| trainer | compiled | train (s) | --c (s) | predict (s) | result |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['trainer']} | {'yes' if r['compiled'] else 'no'} | {r.get('train_s', 0):.0f} | "
                         f"{r.get('resume_s', 0):.0f} | {r.get('predict_s', 0):.0f} | "
                         f"{'ok' if r['ok'] else 'FAILED'} |")
    if not args.skip_step_time:
        step_args = [sys.executable, os.path.join(HERE, "step_time.py"), "--device", args.device, "--repeats", "1"]
        if args.device == "cuda":
            step_args += ["--shape", "80", "192", "192", "--patch", "64", "160", "160", "--features", "32", "64",
                          "128", "256", "320", "320", "--segformer", "b2", "--iterations", "10"]
        proc = subprocess.run(step_args, capture_output=True, text=True)
        table = proc.stdout[proc.stdout.find("device "):] if proc.returncode == 0 else f"step_time failed:\n" \
                                                                                         f"{proc.stderr[-3000:]}"
        lines += ["", "## Step time and peak memory (benchmarks/step_time.py)", "", table.strip()]
    lines += ["", f"Total {time.time() - t_start:.0f} s."]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
