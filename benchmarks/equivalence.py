"""Does a refactor change what a trainer computes? Fixed-seed runs of the same trainers with the code of two git
revisions, compared tensor by tensor.

    python benchmarks/equivalence.py --before REV --after REV [--trainers ...] [--epochs 8 --iterations 5]

For each revision the code is checked out into a temporary git worktree and put first on PYTHONPATH (the installed
package is not used), one tiny synthetic dataset is planned once, and each ``*_short`` trainer trains on the CPU
with ``nnUNet_semisup_seed`` fixed and single-threaded augmentation, so two runs of the same code give the same
weights bit for bit. The report lists, per trainer, every checkpoint tensor entry (network, extra modules) that
differs, with the largest absolute difference, and the per-epoch training losses of both runs. Not part of CI
(minutes per trainer).
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_TRAINERS = ["nnUNetTrainerMeanTeacher_short", "nnUNetTrainerMN_short", "nnUNetTrainerSKCDF_short",
                    "nnUNetTrainerCML_short", "nnUNetTrainerWeakStrong_short"]
DATASET_ID = 995
TINY_FEATURES = [4, 8, 16, 16, 16, 16]


def run(cmd: List[str], env: dict, log: str) -> None:
    """Run in the log's folder: ``python -c``/``-m`` put the working directory first on sys.path, and the
    repository's own folder there would shadow the worktree on PYTHONPATH."""
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=os.path.dirname(log))
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}; see {log}")


def base_env(work: str) -> dict:
    env = dict(os.environ)
    env.update({"nnUNet_raw": os.path.join(work, "raw"), "nnUNet_preprocessed": os.path.join(work, "preprocessed"),
                "nnUNet_def_n_proc": "1", "nnUNet_compile": "0", "OMP_NUM_THREADS": "1"})
    for k in ("nnUNet_raw", "nnUNet_preprocessed"):
        os.makedirs(env[k], exist_ok=True)
    return env


def prepare_dataset(work: str, log: str) -> None:
    """The planned synthetic dataset (4 labeled, 6 unlabeled cases, 16 x 32 x 32), networks shrunk."""
    from nnunetv2_semisup.trainer_dir import TRAINER_DIR
    env = {**base_env(work), "nnUNet_results": os.path.join(work, "results_setup"), "nnUNet_extTrainer": TRAINER_DIR}
    bin_dir = os.path.dirname(sys.executable)
    run([os.path.join(bin_dir, "nnUNetv2_semisup_make_synthetic"), "-d", str(DATASET_ID), "--labeled", "4",
         "--unlabeled", "6", "--test", "2", "--shape", "16", "32", "32", "--seed", "1", "--overwrite"], env, log)
    run([os.path.join(bin_dir, "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np",
         "1"], env, log)
    from nnunetv2_semisup.demo import shrink_plans
    plans_file = glob.glob(os.path.join(env["nnUNet_preprocessed"], f"Dataset{DATASET_ID}_*", "nnUNetPlans.json"))[0]
    shrink_plans(plans_file, TINY_FEATURES)  # the planned features (>= 32) capped: 4, 8, 16, 16, ...
    run([os.path.join(bin_dir, "nnUNetv2_semisup_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np",
         "1"], {**env, "nnUNet_n_proc_DA": "0"}, log)


def train(revision: str, trainer: str, work: str, epochs: int, iterations: int, segformer: str, log: str) -> str:
    """Checkpoint file of a fixed-seed run of ``trainer`` with the code of ``revision``."""
    src = os.path.join(work, "src")
    subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", src], capture_output=True)
    run(["git", "-C", REPO, "worktree", "add", "-f", "--detach", src, revision], dict(os.environ), log)
    try:
        results = os.path.join(work, f"results_{revision}_{trainer}")
        shutil.rmtree(results, ignore_errors=True)
        env = {**base_env(work), "nnUNet_results": results, "PYTHONPATH": src, "nnUNet_n_proc_DA": "0",
               "nnUNet_semisup_seed": "0", "nnUNet_semisup_short_skip_validation": "1",
               "nnUNet_semisup_short_epochs": str(epochs), "nnUNet_semisup_short_iterations": str(iterations),
               "nnUNet_semisup_segformer": segformer,
               "nnUNet_extTrainer": os.path.join(src, "nnunetv2_semisup", "nnunet_ext")}
        check = "import nnunetv2_semisup, sys; sys.exit(not nnunetv2_semisup.__file__.startswith(sys.argv[1]))"
        run([sys.executable, "-c", check, src], env, log)  # the revision's code, not the installed package
        run([sys.executable, "-m", "nnunetv2.run.run_training", str(DATASET_ID), "3d_fullres", "all", "-tr",
             trainer, "-device", "cpu"], env, log)
        final = glob.glob(os.path.join(results, "*", "*", "fold_all", "checkpoint_final.pth"))[0]
        kept = os.path.join(work, f"{revision}_{trainer}.pth")
        shutil.copyfile(final, kept)
        return kept
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", src], capture_output=True)


def compare(before: str, after: str) -> dict:
    """Every tensor entry of the two checkpoints' state dicts (network and extra modules) compared."""
    a = torch.load(before, map_location="cpu", weights_only=False)
    b = torch.load(after, map_location="cpu", weights_only=False)
    differ, compared = [], 0
    for key in sorted(set(a) & set(b)):
        if not (isinstance(a[key], dict) and a[key] and all(torch.is_tensor(v) for v in a[key].values())):
            continue
        for name in sorted(set(a[key]) | set(b[key])):
            compared += 1
            x, y = a[key].get(name), b[key].get(name)
            if x is None or y is None or x.shape != y.shape:
                differ.append((f"{key}.{name}", "missing or reshaped"))
            elif not torch.equal(x, y):
                differ.append((f"{key}.{name}", float((x.double() - y.double()).abs().max())))
    return {"compared": compared, "differ": differ,
            "losses_before": [float(x) for x in a["logging"]["train_losses"]],
            "losses_after": [float(x) for x in b["logging"]["train_losses"]]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git revision before the change")
    p.add_argument("--after", default="HEAD", help="git revision after the change (default HEAD)")
    p.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS)
    p.add_argument("--epochs", type=int, default=8, help="epochs of each run (M&N: 8 reaches its LRG co-training)")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed afterwards)")
    p.add_argument("--report", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    revs = [subprocess.run(["git", "-C", REPO, "rev-parse", "--short", r], capture_output=True, text=True,
                           check=True).stdout.strip() for r in (args.before, args.after)]
    work = args.work or tempfile.mkdtemp(prefix="semisup_equivalence_")
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "equivalence.log")
    from nnunetv2_semisup.methods.mn.segformer import save_tiny_segformer
    segformer = os.path.join(work, "segformer")
    save_tiny_segformer(segformer)
    prepare_dataset(work, log)
    report = {"before": revs[0], "after": revs[1], "epochs": args.epochs, "iterations": args.iterations,
              "trainers": {}}
    for trainer in args.trainers:
        files = [train(r, trainer, work, args.epochs, args.iterations, segformer, log) for r in revs]
        r = report["trainers"][trainer] = compare(*files)
        verdict = "bitwise identical" if not r["differ"] else f"{len(r['differ'])} entries differ"
        print(f"{trainer}: {r['compared']} tensors compared, {verdict}", flush=True)
        for name, d in r["differ"][:10]:
            print(f"  {name}: {d}")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=1)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(not r["differ"] for r in report["trainers"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
