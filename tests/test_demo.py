"""nnUNetv2_semisup_demo: its pieces (fast), and one real run of the installed command on a tiny schedule."""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import bin_path
from nnunetv2_semisup import demo
from nnunetv2_semisup.trainer_dir import TRAINER_DIR


def test_arguments_environment_table_and_offline_segformer(tmp_path):
    args = demo.parse_args([])
    assert args.device == "cpu" and args.methods == demo.DEFAULT_METHODS and args.epochs == demo.DEFAULT_EPOCHS
    assert args.features == list(demo.DEFAULT_FEATURES) and args.patch == list(demo.DEFAULT_PATCH)
    assert demo.parse_args(["--features", "0"]).features is None
    assert demo.parse_args(["--patch", "0", "0", "0"]).patch is None
    for bad in (["--epochs", "0"], ["--device", "tpu"], ["--unlabeled", "0"]):
        with pytest.raises(SystemExit):
            demo.parse_args(bad)
    assert demo.parse_args(["--unlabeled", "0", "--methods", demo.BASELINE]).unlabeled == 0

    cfg = demo.config_from_args(demo.parse_args(["--out", str(tmp_path / "d"), "--epochs", "3", "--iterations", "7"]))
    user = {"nnUNet_raw": "/user/raw", "nnUNet_results": "/user/results", "nnUNet_extTrainer": "/elsewhere",
            "nnUNet_n_proc_DA": "12", "nnUNet_semisup_segformer": "/my/segformer", "PATH": "/bin"}
    env = demo.build_env(cfg, base=user)
    assert env["nnUNet_raw"] == str(tmp_path / "d" / "nnUNet_raw")
    assert env["nnUNet_preprocessed"] == str(tmp_path / "d" / "nnUNet_preprocessed")
    assert env["nnUNet_results"] == str(tmp_path / "d" / "nnUNet_results")
    assert env["nnUNet_extTrainer"] == TRAINER_DIR and env["PATH"] == "/bin"
    assert env["nnUNet_semisup_segformer"] == "/my/segformer"
    assert env["nnUNet_semisup_short_epochs"] == "3" and env["nnUNet_semisup_short_iterations"] == "7"
    assert env["nnUNet_n_proc_DA"] == "0" and env["nnUNet_semisup_short_skip_validation"] == "1"
    assert env["nnUNet_semisup_seed"] == "0"  # --seed seeds the training runs too
    assert "nnUNet_n_proc_DA" not in demo.build_env(cfg, base=user, for_training=False)  # planning crashes with 0

    plans = tmp_path / "plans.json"
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    plans.write_text(json.dumps({"configurations": {
        "3d_fullres": {"patch_size": [40, 96, 80], "architecture": {"arch_kwargs": {
            "n_stages": 5, "strides": strides, "features_per_stage": [32, 64, 128, 256, 320]}}},
        "3d_cascade": {"inherits_from": "3d_fullres"}}}))
    shrunk = demo.shrink_plans(str(plans), [16, 32, 64], [20, 50, 200])
    assert shrunk == {"features_per_stage": [16, 32, 64, 64, 64], "patch_size": [16, 48, 80]}  # multiples of 8/16
    assert json.loads(plans.read_text())["configurations"]["3d_fullres"]["patch_size"] == [16, 48, 80]

    results = [demo.MethodResult(demo.BASELINE, 0.61234, 7.456, 75.0, 60.0),
               demo.MethodResult("nnUNetTrainerCML_short", 0.0, math.nan, 130.0, 100.0)]
    table = demo.format_table(results).splitlines()
    assert len(table) == 4 and "Dice" in table[0] and "HD95" in table[0]
    assert "nnU-Net (labeled only)" in table[2] and "0.612" in table[2] and "7.46" in table[2] and "1:15" in table[2]
    assert "CML" in table[3] and "n/a" in table[3] and "2:10" in table[3]

    # a failing step names the command and shows the tail of its output
    with pytest.raises(demo.DemoStepError) as e:
        demo.run_command([sys.executable, "-c", "print('line one'); print('the reason'); raise SystemExit(3)"],
                         dict(os.environ), str(tmp_path / "logs" / "fail.log"))
    assert "exit code 3" in str(e.value) and sys.executable in str(e.value) and "the reason" in str(e.value)

    # never writes into a folder it did not make
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    with pytest.raises(demo.DemoStepError, match="not made by nnUNetv2_semisup_demo"):
        demo.prepare_out_folder(str(foreign))
    demo.prepare_out_folder(cfg.out)
    demo.prepare_out_folder(cfg.out)  # re-running in its own folder is fine

    # offline M&N: a tiny SegFormer is saved, the variable set, and the output says so plainly
    assert demo.segformer_setup(cfg, {"nnUNet_semisup_segformer": "/my/segformer"}) is None
    no_mn = demo.config_from_args(demo.parse_args(["--out", cfg.out, "--methods", demo.BASELINE]))
    assert demo.segformer_setup(no_mn, {}) is None
    env = {}
    note = demo.segformer_setup(cfg, env)
    assert env["nnUNet_semisup_segformer"] == os.path.join(cfg.out, "tiny_segformer")
    assert os.path.isfile(os.path.join(env["nnUNet_semisup_segformer"], "config.json"))
    assert "randomly initialised SegFormer" in note and "NOT representative" in note and "SegFormer-B2" in note


def test_demo_command_runs_end_to_end(tmp_path):
    """The installed command on a tiny dataset and schedule: one table row per method, numbers in range."""
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env["nnUNet_raw"] = str(tmp_path / "user_raw_must_stay_untouched")
    methods = ["nnUNetTrainer_semisupShort", "nnUNetTrainerMeanTeacher_short"]
    proc = subprocess.run(
        [bin_path("nnUNetv2_semisup_demo"), "--out", str(out), "--methods", *methods, "--epochs", "1",
         "--iterations", "2", "--labeled", "2", "--unlabeled", "2", "--test", "2", "--shape", "16", "32", "32",
         "--features", "8", "16", "32"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    total_steps = 3 + 3 * len(methods)
    assert any(line.startswith(f"[{total_steps}/{total_steps}] done in") for line in lines), proc.stdout
    assert "SegFormer" not in proc.stdout  # no M&N, no SegFormer note
    rows = [line for line in lines if line.startswith("| ") and any(m in line for m in methods)]
    assert len(rows) == len(methods), proc.stdout
    labels_ts = out / "nnUNet_raw" / demo.DATASET_NAME / "labelsTs"
    for method, row in zip(methods, rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == method
        assert 0.0 <= float(cells[2]) <= 1.0 and float(cells[3]) >= 0.0
        # the printed Dice, recomputed here from the prediction files with plain numpy (the demo's convention:
        # per label over the cases, a case where both are empty left out; then the mean over the labels)
        assert float(cells[2]) == pytest.approx(_mean_foreground_dice(labels_ts, out / "predictions" / method),
                                                abs=0.0005 + 1e-9), (method, cells[2])
    assert not os.path.exists(env["nnUNet_raw"])
    for m in methods:
        assert os.path.isfile(out / "nnUNet_results" / demo.DATASET_NAME / f"{m}__nnUNetPlans__3d_fullres" /
                              "fold_all" / "checkpoint_final.pth")
        assert len(os.listdir(out / "predictions" / m)) >= 2


def _mean_foreground_dice(ref_folder, pred_folder, labels=(1, 2, 3)):
    import numpy as np
    import SimpleITK as sitk
    per_label = {k: [] for k in labels}
    cases = sorted(f for f in os.listdir(ref_folder) if f.endswith(".nii.gz"))
    assert cases and all(os.path.isfile(os.path.join(pred_folder, f)) for f in cases)
    for f in cases:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(ref_folder, f)))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(pred_folder, f)))
        for k in labels:
            r, p = ref == k, pred == k
            if r.any() or p.any():
                per_label[k].append(2.0 * np.logical_and(r, p).sum() / (r.sum() + p.sum()))
    means = [float(np.mean(v)) for v in per_label.values() if v]
    return float(np.mean(means))
