"""nnUNetv2_semisup_evaluate on small temporary folders (docs/spec/metrics.md §1, §6, §8 property 10)."""
import csv
import json
import math
import os
import re
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


def test_direction_mismatch_refused_in_mm_mode(folders):
    ref_dir, pred_dir = folders
    img = sitk.GetImageFromArray(_ref_case())
    img.SetSpacing(SPACING)
    img.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))   # same shape, spacing and origin, flipped x axis
    sitk.WriteImage(img, str(pred_dir / "case_0.nii.gz"))
    with pytest.raises(EvaluationError, match=r"case 'case_0'.*direction"):
        evaluate_folders(str(ref_dir), str(pred_dir))


def test_predictions_of_another_file_ending_are_refused_with_their_names(folders, capsys):
    """.nii predictions beside a .nii.gz dataset: every case would count as empty (Dice 0); refused instead."""
    ref_dir, pred_dir = folders
    for i in range(3):
        img = sitk.ReadImage(str(pred_dir / f"case_{i}.nii.gz"))
        sitk.WriteImage(img, str(pred_dir / f"case_{i}.nii"))
        os.remove(pred_dir / f"case_{i}.nii.gz")
    with pytest.raises(EvaluationError, match=r"file ending '\.nii\.gz'.*case_0\.nii"):
        evaluate_folders(str(ref_dir), str(pred_dir), dataset_json=str(ref_dir.parent / "dataset.json"))
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-np", "1"]) == 1
    assert "another ending" in capsys.readouterr().err


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
            assert not t.variants or len(t.variants) == len(t.rows), t.source
        text = format_comparison(summary, key)
        assert all(t.source in text for t in tables)
        assert sum(line.startswith("your run ") for line in text.splitlines()) == len(tables)
    synapse = format_comparison(summary, "Synapse/20")
    assert " 1.0 " in synapse and "13.0" in synapse  # the 13 per-class Dice of the user's row


# ----------------------------------------------------------------------------------------------- docs/spec/metrics.md §6 keys
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Hard-coded from docs/spec/metrics.md §6 (not taken from the implementation).
SPEC_SUMMARY_KEYS = ("generator", "version", "mode", "preset", "units", "empty_policy", "lcc", "hd95_definition",
                     "asd_definition", "reference_folder", "prediction_folder", "n_cases", "labels", "mean", "std",
                     "median", "foreground_mean", "per_case_csv")
SPEC_LABEL_KEYS = ("dice", "jaccard", "hd95", "DIST", "n", "n_nan")
SPEC_CSV_COLUMNS = ("case", "label", "label_name", "mode", "preset", "empty_policy", "dice", "jaccard", "hd95", "DIST",
                    "n_ref", "n_pred", "n_ref_surface", "n_pred_surface", "empty_case", "lcc_applied", "spacing")


def _documented_extensions():
    """Backticked names in the two 'extensions beyond the spec' paragraphs of docs/evaluation.md."""
    with open(os.path.join(REPO, "docs", "evaluation.md"), encoding="utf-8") as f:
        text = f.read()
    summary_part = text.split("**Extensions beyond docs/spec/metrics.md §6**", 1)[1].split("\n\n", 1)[0]
    csv_part = text.split("**extensions beyond the spec** are", 1)[1].split("\n\n", 1)[0]
    names = lambda part: set(re.findall(r"`([a-z_0-9]+)`", part))  # noqa: E731
    return names(summary_part), names(csv_part)


@pytest.mark.parametrize("argv, dist", [([], "assd"), (["--preset", "uamt_lcc", "--hd"], "asd")])
def test_outputs_have_every_spec_key_and_column(folders, tmp_path, argv, dist):
    ref_dir, pred_dir = folders
    out = tmp_path / "out"
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out), "-np", "1"] + argv) == 0
    doc_summary, doc_csv = _documented_extensions()
    summary = json.loads((out / "summary.json").read_text())
    assert set(SPEC_SUMMARY_KEYS) <= set(summary)
    assert set(summary) - set(SPEC_SUMMARY_KEYS) <= doc_summary, "undocumented summary.json keys"
    paper = dist == "asd"
    assert summary["generator"] == "nnunetv2_semisup" and isinstance(summary["version"], str) and summary["version"]
    assert (summary["mode"], summary["preset"], summary["units"], summary["empty_policy"], summary["lcc"]) == \
        (("paper", "uamt_lcc", "voxel", "zeros", True) if paper else ("mm", None, "mm", "penalty", False))
    assert summary["hd95_definition"] == ("pooled_p95" if paper else "max_directed_p95")
    assert summary["asd_definition"] == ("directed_pred_to_ref" if paper else "assd_pooled")
    assert summary["reference_folder"] == os.path.abspath(ref_dir)
    assert summary["prediction_folder"] == os.path.abspath(pred_dir)
    assert summary["n_cases"] == 3 and summary["labels"] == {"1": "atrium", "2": "dot"}
    assert summary["per_case_csv"] == "metrics_per_case.csv" and (out / summary["per_case_csv"]).is_file()
    label_keys = {k.replace("DIST", dist) for k in SPEC_LABEL_KEYS}
    for stat in ("mean", "std", "median"):
        assert set(summary[stat]) == {"1", "2"}
        for entry in summary[stat].values():
            assert label_keys <= set(entry) and set(entry) - label_keys <= doc_summary
            assert type(entry["n"]) is int and type(entry["n_nan"]) is int  # integers, as in the spec's example
            assert (entry["n"], entry["n_nan"]) == (3, 0)
    fg_keys = {"dice", "jaccard", "hd95", dist}
    assert fg_keys <= set(summary["foreground_mean"]) and set(summary["foreground_mean"]) - fg_keys <= doc_summary
    with open(out / "metrics_per_case.csv", newline="") as f:
        header = next(csv.reader(f))
    spec_cols = [c.replace("DIST", dist) for c in SPEC_CSV_COLUMNS]
    assert [c for c in header if c in spec_cols] == spec_cols  # every spec column, in the spec's order
    assert set(header) - set(spec_cols) <= doc_csv, "undocumented CSV columns"
    assert ("hd" in header) == ("--hd" in argv)


# ----------------------------------------------------------------------------------------------- CLI options
def test_cli_label_selection_hd_and_nan_policy(folders, tmp_path):
    ref_dir, pred_dir = folders
    out = tmp_path / "l2"
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-l", "2", "--hd", "--empty-policy", "nan",
                 "-o", str(out), "-np", "1"]) == 0
    rows = _read_csv(out / "metrics_per_case.csv")
    header = list(rows[0])
    assert header.index("hd") == header.index("assd") + 1
    assert [(r["case"], r["label"], r["label_name"]) for r in rows] == [(f"case_{i}", "2", "dot") for i in range(3)]
    by = {r["case"]: r for r in rows}
    assert all(r["empty_policy"] == "nan" for r in rows)
    assert float(by["case_0"]["hd"]) == 0.0 and float(by["case_0"]["dice"]) == 1.0
    for key in ("hd95", "assd", "hd"):  # single voxels 3 apart along x, spacing 0.8
        assert float(by["case_1"][key]) == pytest.approx(3 * 0.8, rel=1e-6)
    assert by["case_2"]["empty_case"] == "pred_empty"
    assert (float(by["case_2"]["dice"]), float(by["case_2"]["jaccard"])) == (0.0, 0.0)
    assert all(math.isnan(float(by["case_2"][k])) for k in ("hd95", "assd", "hd"))  # nan policy
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"] == {"2": "dot"} and summary["empty_policy"] == "nan"
    assert summary["metrics"] == ["dice", "jaccard", "hd95", "assd", "hd"]
    mean = summary["mean"]["2"]
    assert (mean["n"], mean["n_nan"]) == (3, 1)
    assert mean["n_nan_per_metric"] == {"dice": 0, "jaccard": 0, "hd95": 1, "assd": 1, "hd": 1}
    assert mean["hd"] == pytest.approx(1.2) and mean["dice"] == pytest.approx(1 / 3)  # NaN excluded
    assert summary["foreground_mean"] == {k: mean[k] for k in summary["metrics"]}


def test_cli_paper_mode_with_explicit_empty_policy(folders, tmp_path, capsys):
    ref_dir, pred_dir = folders
    out = tmp_path / "dhc"
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "--mode", "paper", "--empty-policy", "dhc",
                 "-l", "2", "-o", str(out), "-np", "1"]) == 0
    assert "empty-mask policy dhc" in capsys.readouterr().out
    by = {r["case"]: r for r in _read_csv(out / "metrics_per_case.csv")}
    assert (float(by["case_2"]["hd95"]), float(by["case_2"]["asd"]), float(by["case_2"]["dice"])) == (128, 128, 0)
    assert float(by["case_1"]["hd95"]) == 3.0 and by["case_1"]["empty_policy"] == "dhc"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["mode"], summary["preset"], summary["empty_policy"]) == ("paper", None, "dhc")


def test_console_script_label_and_hd(folders, tmp_path):
    ref_dir, pred_dir = folders
    exe = shutil.which("nnUNetv2_semisup_evaluate") or os.path.join(os.path.dirname(sys.executable),
                                                                   "nnUNetv2_semisup_evaluate")
    out = tmp_path / "out"
    res = subprocess.run([exe, "-ref", str(ref_dir), "-pred", str(pred_dir), "-l", "1", "--hd",
                          "--empty-policy", "penalty", "-o", str(out), "-np", "1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "1 atrium" in res.stdout and "2 dot" not in res.stdout and "HD (mm)" in res.stdout
    rows = _read_csv(out / "metrics_per_case.csv")
    assert {r["label"] for r in rows} == {"1"} and len(rows) == 3
    by = {r["case"]: r for r in rows}
    # 3×3×3 cube shifted by one voxel along x (0.8 mm): every surface voxel has a partner surface voxel 0.8 mm away
    assert float(by["case_1"]["hd"]) == pytest.approx(0.8, rel=1e-6) and float(by["case_0"]["hd"]) == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["labels"]) == ["1"] and "hd" in summary["foreground_mean"]


# ----------------------------------------------------------------------------------------------- ablation tables
def _row(table, method):
    return next((values, note) for m, values, note in table.rows if m == method)


def _variant(table, method):
    return table.variants[[m for m, _, _ in table.rows].index(method)]


def test_ablation_tables_match_the_spec_numbers():
    from nnunetv2_semisup.evaluation.published import published_tables

    mn, cml = published_tables("LA/8/ablation")
    assert mn.source.startswith("M&N Table 4") and cml.source.startswith("CML Table 4")
    assert (mn.preset, cml.preset) == ("medpy", "uamt_lcc")
    # docs/spec/mn.md §6 Table 4
    assert _row(mn, "SegFormer LoRA + 3D UNet, no LRG") == (("87.14", "77.35", "8.43", "2.36"), "own")
    assert _variant(mn, "SegFormer LoRA + 3D UNet, no LRG") == "nnUNetTrainerMN_uniform"
    assert _row(mn, "SegFormer whole fine-tuning + 3D UNet")[0] == ("91.39", "84.20", "5.02", "1.38")
    assert _row(mn, "ResUNet (ResNet-50, ImageNet) whole + 3D UNet")[0] == ("91.11", "83.74", "5.38", "1.41")
    assert _variant(mn, "ResUNet (ResNet-50, ImageNet) whole + 3D UNet") == "—"
    assert _row(mn, "SegFormer LoRA + 3D UNet, no iterative co-training")[0] == ("89.40", "81.32", "6.06", "1.74")
    # docs/spec/cml.md §6 Table 4 (LA columns, then ACDC)
    assert _row(cml, "L_sup^l + L_sup^u")[0] == ("88.16", "—", "9.83", "2.32", "87.75", "6.35", "1.71")
    assert _variant(cml, "L_sup^l + L_sup^u") == "nnUNetTrainerCML_noDis"
    assert _row(cml, "L_sup^l + L_dis")[0][:4] == ("83.73", "—", "18.92", "4.80")
    t3, t4, t5 = published_tables("synapse/20/ablation")
    # docs/spec/skcdf.md §6 Tables 3-5
    values = _row(t3, "+ DF + SKCM")[0]
    assert (values[0], values[3]) == ("59.17 ± 1.95", "7.78 ± 4.61")
    assert dict(zip(t3.columns, values))["Es"] == "17.9" and dict(zip(t3.columns, values))["LAG"] == "38.8"
    assert _variant(t3, "+ DF + SKCM") == "nnUNetTrainerSKCDF_noABSH"
    assert _variant(t3, "+ DF + ABSH") == "nnUNetTrainerSKCDF_noSKCM"
    assert (_row(t3, "+ DF")[0][0], _variant(t3, "+ DF")) == ("57.4 ± 0.9", "nnUNetTrainerSKCDF_DF")
    assert _row(t4, "inference decoder labeled, decoder EMA yes")[0] == ("57.21 ± 0.85", "—", "—", "11.56 ± 0.75")
    assert _row(t5, "H → H → D")[0] == ("62.40 ± 0.67", "—", "—", "1.34 ± 0.12")
    # every named variant is a trainer class of this package
    sources = ""
    for method in ("mn", "cml", "skcdf"):
        for name in ("variants.py", "trainer.py"):
            with open(os.path.join(REPO, "nnunetv2_semisup", "methods", method, name), encoding="utf-8") as f:
                sources += f.read()
    for table in (mn, cml, t3, t4, t5):
        for v in table.variants:
            assert v == "—" or f"class {v}(" in sources, v


def test_acdc_tables_match_the_spec_numbers():
    """CML Table 2 and the ACDC columns of Table 4 (docs/spec/datasets_more.md §3.5, docs/spec/cml.md §6), typed in from the spec."""
    from nnunetv2_semisup.evaluation.published import published_tables

    (t3,), (t7,), (abl,) = (published_tables(k) for k in ("ACDC/3", "acdc/7", "ACDC/7/ablation"))
    assert t3.preset == t7.preset == abl.preset == "uamt" and "anisotropic native grid" in t3.convention
    assert _row(t3, "CML") == (("88.53", "—", "1.87", "0.57"), "own")
    assert _row(t3, "MCF") == (("82.37", "—", "5.74", "1.59"), "quoted")
    assert _row(t3, "U-Net (3 patients labeled only)")[0] == ("47.83", "—", "31.16", "12.62")
    assert _row(t7, "CML") == (("89.42", "—", "1.42", "0.52"), "own")
    assert _row(t7, "SS-Net")[0] == ("86.78", "—", "6.07", "1.40") and _row(t7, "DTC")[0][2] == "12.81"
    assert _row(t7, "U-Net (70 patients labeled, all)")[0] == ("91.44", "—", "4.30", "0.99")
    assert len(t3.rows) == len(t7.rows) == 10
    assert _row(abl, "L_sup^l + L_dis")[0] == ("80.27", "—", "7.69", "2.36")
    assert _variant(abl, "L_sup^l + L_sup^u") == "nnUNetTrainerCML_noDis"
    assert _row(abl, "L_sup^l + L_dis + L_sup^u (CML)")[0] == _row(t7, "CML")[0]


def test_compare_paper_ablation_through_cli(folders, tmp_path, capsys):
    ref_dir, pred_dir = folders
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-l", "1", "--preset", "medpy", "-np", "1",
                 "-o", str(tmp_path / "out"), "--compare-paper", "LA/8/Ablation"]) == 0
    printed = capsys.readouterr().out
    assert "M&N Table 4" in printed and "CML Table 4" in printed and "port variant" in printed
    line = next(l for l in printed.splitlines() if l.startswith("SegFormer LoRA + 3D UNet, no LRG"))
    assert line.split()[-5:] == ["87.14", "77.35", "8.43", "2.36", "nnUNetTrainerMN_uniform"]
    line = next(l for l in printed.splitlines() if l.startswith("L_sup^l + L_sup^u "))
    assert "88.16" in line and "87.75" in line and line.endswith("nnUNetTrainerCML_noDis")
    assert "different convention" in printed  # medpy run vs CML's uamt_lcc table


def test_unwritable_output_folder_is_one_line(monkeypatch, capsys, tmp_path):
    """-o in a folder the user cannot write to: one line naming the path and the fix, exit 1, no traceback."""
    import errno
    from nnunetv2_semisup.evaluation import evaluate_cli

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro" / "summary.json"))

    monkeypatch.setattr(evaluate_cli, "evaluate_folders", refuse)
    assert evaluate_cli.main(["-ref", str(tmp_path), "-pred", str(tmp_path), "-o", str(tmp_path / "ro")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write {tmp_path / 'ro' / 'summary.json'}" in err
    assert "Choose an output folder you can write to" in err
