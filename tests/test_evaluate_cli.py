"""nnUNetv2_semisup_evaluate on small temporary folders (spec/metrics.md §1, §6, §8 property 10)."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_semisup.evaluation.evaluate import EvaluationError, evaluate_folders
from nnunetv2_semisup.evaluation.evaluate_cli import main

SPACING = (0.8, 0.8, 2.5)  # SimpleITK (x, y, z)


def _write(path, array, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(np.asarray(array))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def _ref_case():
    ref = np.zeros((10, 12, 14), np.uint8)  # (z, y, x)
    ref[2:5, 3:6, 3:6] = 1  # 3x3x3 cube
    ref[7, 8, 4] = 2  # single voxel
    return ref


@pytest.fixture
def folders(tmp_path):
    """Three cases: exact; label-1 cube shifted by one voxel along x and label-2 voxel 3 apart along x; label 2
    missing from the prediction."""
    ref_dir, pred_dir = tmp_path / "labelsTs", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "atrium": 1, "dot": 2}, "file_ending": ".nii.gz", "numTraining": 3}))
    for i in range(3):
        ref = _ref_case()
        pred = ref.copy()
        if i == 1:
            pred[ref == 1] = 0
            pred[2:5, 3:6, 4:7] = 1
            pred[7, 8, 4], pred[7, 8, 7] = 0, 2
        if i == 2:
            pred[pred == 2] = 0
        _write(ref_dir / f"case_{i}.nii.gz", ref)
        _write(pred_dir / f"case_{i}.nii.gz", pred)
    (pred_dir / "case_0.npz").write_bytes(b"not an image")  # probabilities etc. are ignored
    return ref_dir, pred_dir


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_console_script_mm_mode(folders, tmp_path):
    ref_dir, pred_dir = folders
    exe = shutil.which("nnUNetv2_semisup_evaluate") or os.path.join(os.path.dirname(sys.executable),
                                                                   "nnUNetv2_semisup_evaluate")
    out = tmp_path / "out"
    res = subprocess.run([exe, "-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out), "-np", "1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "foreground mean" in res.stdout and "1 atrium" in res.stdout and "penalty" in res.stdout
    rows = _read_csv(out / "metrics_per_case.csv")
    assert list(rows[0]) == ["case", "label", "label_name", "mode", "preset", "empty_policy", "dice", "jaccard",
                             "hd95", "assd", "n_ref", "n_pred", "n_ref_surface", "n_pred_surface", "empty_case",
                             "prediction_missing", "lcc_applied", "spacing"]
    assert len(rows) == 6
    by = {(r["case"], r["label"]): r for r in rows}
    shifted = by[("case_1", "1")]
    assert float(shifted["dice"]) == pytest.approx(2 / 3) and float(shifted["jaccard"]) == pytest.approx(0.5)
    assert shifted["spacing"] == "0.8;0.8;2.5" and shifted["mode"] == "mm"
    assert float(by[("case_1", "2")]["hd95"]) == pytest.approx(3 * 0.8, rel=1e-6)  # 3 voxels along x
    assert float(by[("case_1", "2")]["assd"]) == pytest.approx(3 * 0.8, rel=1e-6)
    missing = by[("case_2", "2")]
    assert missing["empty_case"] == "pred_empty" and float(missing["dice"]) == 0.0
    diag = math.sqrt((14 * 0.8) ** 2 + (12 * 0.8) ** 2 + (10 * 2.5) ** 2)
    assert float(missing["hd95"]) == pytest.approx(diag, rel=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "mm" and summary["units"] == "mm" and summary["empty_policy"] == "penalty"
    assert summary["hd95_definition"] == "max_directed_p95" and summary["asd_definition"] == "assd_pooled"
    assert summary["labels"] == {"1": "atrium", "2": "dot"} and summary["n_cases"] == 3
    assert summary["mean"]["1"]["dice"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert summary["mean"]["2"]["dice"] == pytest.approx(1 / 3)
    assert summary["foreground_mean"]["dice"] == pytest.approx(((1 + 2 / 3 + 1) / 3 + 1 / 3) / 2)
    assert summary["empty_cases"]["pred_empty"] == 1 and summary["per_case_csv"] == "metrics_per_case.csv"


def test_paper_preset_and_compare_paper(folders, tmp_path, capsys):
    ref_dir, pred_dir = folders
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "--preset", "uamt", "-np", "1",
                 "--compare-paper", "la/8"]) == 0
    printed = capsys.readouterr().out
    assert "M&N Table 1" in printed and "CML Table 1 (LA, 8 labeled" in printed and "91.56" in printed
    assert "different convention" in printed  # uamt vs the M&N table's medpy preset
    out = pred_dir / "semisup_eval_paper_uamt"  # default output folder
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "uamt" and summary["units"] == "voxel" and summary["empty_policy"] == "zeros"
    rows = {(r["case"], r["label"]): r for r in _read_csv(out / "metrics_per_case.csv")}
    assert "asd" in rows[("case_0", "1")] and "assd" not in rows[("case_0", "1")]
    assert float(rows[("case_1", "2")]["hd95"]) == 3.0 and rows[("case_1", "2")]["spacing"] == "1;1;1"
    assert float(rows[("case_2", "2")]["hd95"]) == 0.0  # zeros policy: empty prediction -> 0
    line = next(l for l in printed.splitlines() if l.startswith("your run"))
    assert f"{100 * summary['foreground_mean']['dice']:.2f}" in line


def test_missing_prediction_listed_and_counted(folders, capsys):
    ref_dir, pred_dir = folders
    os.remove(pred_dir / "case_0.nii.gz")
    with pytest.warns(UserWarning, match="case_0"):
        summary = evaluate_folders(str(ref_dir), str(pred_dir), mode="paper", empty_policy="dhc")
    assert summary["missing_predictions"] == ["case_0"]
    rows = [r for r in summary["rows"] if r["case"] == "case_0"]
    assert [r["empty_case"] for r in rows] == ["pred_empty", "pred_empty"]
    assert all(r["prediction_missing"] and r["hd95"] == 128.0 and r["dice"] == 0.0 for r in rows)
    assert summary["mean"]["1"]["n"] == 3  # counted, not skipped
    # the medpy preset refuses empty predictions and names the case
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "--preset", "medpy", "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert "case_0" in err and "have no prediction" in err and "error: case 'case_0'" in err


def test_geometry_mismatch_errors_name_the_case(folders, capsys):
    ref_dir, pred_dir = folders
    _write(pred_dir / "case_1.nii.gz", _ref_case(), spacing=(0.8, 0.8, 2.0))
    with pytest.raises(EvaluationError, match=r"case 'case_1'.*spacing"):
        evaluate_folders(str(ref_dir), str(pred_dir))
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-np", "1"]) == 1
    assert "case 'case_1'" in capsys.readouterr().err
    # paper mode evaluates the voxel grid and only warns
    summary = evaluate_folders(str(ref_dir), str(pred_dir), preset="uamt")
    assert any(r["warning"] and "geometry differs" in r["warning"] for r in summary["rows"])
    _write(pred_dir / "case_2.nii.gz", np.zeros((10, 12, 13), np.uint8))
    with pytest.raises(EvaluationError, match=r"case 'case_2'.*size \(13, 12, 10\).*\(14, 12, 10\)"):
        evaluate_folders(str(ref_dir), str(pred_dir), preset="uamt")


def test_origin_mismatch_refused_in_mm_mode(folders):
    ref_dir, pred_dir = folders
    _write(pred_dir / "case_0.nii.gz", _ref_case(), origin=(0.0, 5.0, 0.0))
    with pytest.raises(EvaluationError, match=r"case 'case_0'.*origin"):
        evaluate_folders(str(ref_dir), str(pred_dir))


def test_label_values_outside_label_set(folders):
    ref_dir, pred_dir = folders
    bad = _ref_case()
    bad[0, 0, 0] = 5
    _write(pred_dir / "case_2.nii.gz", bad)
    with pytest.raises(EvaluationError, match=r"case 'case_2': prediction contains label values \[5\]"):
        evaluate_folders(str(ref_dir), str(pred_dir))


def test_labels_without_dataset_json_and_other_formats(tmp_path):
    ref_dir, pred_dir = tmp_path / "r", tmp_path / "p"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = _ref_case()
    pred = ref.copy()
    pred[ref == 1] = 0
    pred[2:5, 3:6, 4:7] = 1
    _write(ref_dir / "a.mha", ref)
    _write(pred_dir / "a.mha", pred)
    with pytest.raises(EvaluationError, match="-l"):
        evaluate_folders(str(ref_dir), str(pred_dir))
    summary = evaluate_folders(str(ref_dir), str(pred_dir), labels=[1, 2], mode="paper", empty_policy="raise")
    assert summary["labels"] == {"1": "label_1", "2": "label_2"}
    assert summary["mean"]["1"]["dice"] == pytest.approx(2 / 3)
    assert summary["mean"]["2"]["dice"] == 1.0


def test_lcc_flag_and_parallel_equals_serial(folders, tmp_path):
    ref_dir, pred_dir = folders
    pred = _ref_case()
    pred[9, 0, 0] = 1  # stray component
    _write(pred_dir / "case_0.nii.gz", pred)
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "--mode", "paper", "--lcc", "-np", "2",
                 "-o", str(tmp_path / "lcc")]) == 0
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "--mode", "paper", "-np", "1",
                 "-o", str(tmp_path / "nolcc")]) == 0
    lcc = {(r["case"], r["label"]): r for r in _read_csv(tmp_path / "lcc" / "metrics_per_case.csv")}
    nolcc = {(r["case"], r["label"]): r for r in _read_csv(tmp_path / "nolcc" / "metrics_per_case.csv")}
    assert lcc[("case_0", "1")]["n_pred"] == "27" and nolcc[("case_0", "1")]["n_pred"] == "28"
    assert float(lcc[("case_0", "1")]["dice"]) == 1.0 and float(nolcc[("case_0", "1")]["dice"]) < 1.0
    assert lcc[("case_0", "1")]["lcc_applied"] == "True"
    for key in lcc:  # other cases: LCC changes nothing, and 2 processes give the serial numbers
        if key != ("case_0", "1"):
            assert {k: v for k, v in lcc[key].items() if k != "lcc_applied"} == \
                   {k: v for k, v in nolcc[key].items() if k != "lcc_applied"}


def test_conflicting_options_exit_with_usage_error(folders, capsys):
    ref_dir, pred_dir = folders
    for argv in (["--preset", "uamt", "--lcc"], ["--mode", "mm", "--preset", "dhc"], ["--empty-policy", "zeros"],
                 ["--compare-paper", "LA/99"]):
        with pytest.raises(SystemExit) as e:
            main(["-ref", str(ref_dir), "-pred", str(pred_dir)] + argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "uamt_lcc" in err and "paper mode" in err and "LA/8" in err


def test_aggregate_runs_cli(folders, tmp_path, capsys):
    ref_dir, pred_dir = folders
    outs = []
    for i, case in enumerate(("case_1", "case_2")):
        out = tmp_path / f"run{i}"
        r = tmp_path / f"ref{i}"
        r.mkdir()
        shutil.copy(ref_dir / f"{case}.nii.gz", r)
        shutil.copy(ref_dir.parent / "dataset.json", r)
        assert main(["-ref", str(r), "-pred", str(pred_dir), "--preset", "dhc", "-np", "1", "-o", str(out)]) == 0
        outs.append(str(out / "summary.json"))
    fg = [json.loads(open(p).read())["foreground_mean"]["dice"] for p in outs]
    assert main(["--aggregate-runs", *outs, "-o", str(tmp_path / "agg"), "--compare-paper", "Synapse/20"]) == 0
    agg = json.loads((tmp_path / "agg" / "summary_runs.json").read_text())
    assert agg["n_runs"] == 2 and agg["foreground_mean"]["dice"] == pytest.approx(np.mean(fg))
    assert agg["foreground_std_over_runs"]["dice"] == pytest.approx(abs(fg[0] - fg[1]) / 2)  # ddof 0
    printed = capsys.readouterr().out
    assert "SKCDF Table 1" in printed and "64.27 ± 1.36" in printed and "mean ± std" in printed


def test_every_published_table_is_well_formed_and_renders():
    from nnunetv2_semisup.evaluation.published import COMPARISONS
    from nnunetv2_semisup.evaluation.settings import PRESETS
    from nnunetv2_semisup.evaluation.tables import format_comparison

    summary = {"mode": "paper", "preset": "dhc", "units": "voxel", "empty_policy": "dhc", "lcc": False,
               "hd95_definition": "pooled_p95", "asd_definition": "directed_pred_to_ref",
               "labels": {str(k): f"c{k}" for k in range(1, 14)},
               "mean": {str(k): {"dice": k / 100} for k in range(1, 14)},
               "foreground_mean": {"dice": 0.5, "jaccard": 0.4, "hd95": 3.0, "asd": 1.0}}
    for key, tables in COMPARISONS.items():
        for t in tables:
            assert t.preset in PRESETS
            assert all(len(values) == len(t.columns) for _, values, _ in t.rows), t.source
            assert sum(note == "own" for _, _, note in t.rows) >= 1
        text = format_comparison(summary, key)
        assert all(t.source in text for t in tables)
        assert sum(line.startswith("your run ") for line in text.splitlines()) == len(tables)
    synapse = format_comparison(summary, "Synapse/20")
    assert " 1.0 " in synapse and "13.0" in synapse  # the 13 per-class Dice of the user's row
