"""The label-limited benchmark's data (synthetic preset ``cohort``) and its arithmetic (gap share, cache keys).

The training runs themselves are the benchmark (benchmarks/quality.py, numbers in docs/benchmarks.md), not a test.
"""
import importlib.util
import json
import os

import numpy as np
import pytest

from nnunetv2_semisup.synthetic import (COHORT_SCANNERS, cohort_scanners, make_cohort_case, make_synthetic_dataset)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quality():
    spec = importlib.util.spec_from_file_location("quality", os.path.join(REPO, "benchmarks", "quality.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scanners_differ_in_tissue_order_not_only_in_scale():
    """Per-image z-scoring cannot map one scanner onto another: the order of the tissue intensities differs."""
    profiles = cohort_scanners()
    assert len(profiles) == COHORT_SCANNERS == 3 and cohort_scanners() == profiles   # fixed, not seed-dependent
    orders = {tuple(np.argsort(p["means"][1:])) for p in profiles}
    assert len(orders) == 3
    # each structure's contrast against its surroundings changes sign on some scanner
    for a, b in ((1, 2), (1, 3), (2, 4), (2, 3)):   # organ/body, organ2/body, lesion/organ, organ2/organ
        assert len({np.sign(p["means"][a] - p["means"][b]) for p in profiles}) == 2
    for p in profiles:
        body, organ, organ2, lesion = p["means"][1:]
        assert min(abs(organ - body), abs(organ2 - body), abs(lesion - organ), abs(organ2 - organ)) >= 0.19


def test_cohort_cases_vary_in_anatomy_and_scanner():
    rng = np.random.default_rng(0)
    cases = [make_cohort_case(rng) for _ in range(40)]
    scanners = [c[2] for c in cases]
    assert len(set(scanners)) == 3
    seg = [c[1] for c in cases]
    sizes = np.array([[(s == k).sum() for k in (1, 2, 3)] for s in seg])
    assert sizes[:, 0].min() > 1000 and sizes[:, 0].max() > 1.5 * sizes[:, 0].min()     # organ size varies
    assert (sizes[:, 2] == 0).any() and (sizes[:, 2] > 0).mean() > 0.6                  # lesion sometimes absent
    assert 0 < sizes[:, 2][sizes[:, 2] > 0].mean() < 0.15 * sizes[:, 0].mean()          # and small
    from scipy.ndimage import label
    pieces = [label(s == 2)[1] for s in seg]
    assert max(pieces) >= 2 and min(pieces) == 1                                          # topology varies
    centres = np.array([np.argwhere(s == 1).mean(0) for s in seg])
    assert centres[:, 1:].std(0).min() > 1.0                                              # position varies
    # in the image, organ vs body contrast flips sign between scanners
    signs = {np.sign(img[0][s == 1].mean() - img[0][(s == 0) & (img[0] > np.percentile(img[0], 60))].mean())
             for img, s, _ in cases}
    assert signs == {-1.0, 1.0}


def test_more_labeled_cases_are_the_same_images(tmp_path):
    """The fully supervised reference trains on exactly the images of the semi-supervised split."""
    import SimpleITK as sitk
    semi = make_synthetic_dataset(str(tmp_path / "semi"), 2, 3, 1, seed=5, preset="cohort")
    full = make_synthetic_dataset(str(tmp_path / "full"), 5, 0, 1, seed=5, preset="cohort")
    a = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(semi, "imagesUnlabeled", "syn_003_0000.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(full, "imagesTr", "syn_003_0000.nii.gz")))
    np.testing.assert_array_equal(a, b)
    with open(os.path.join(semi, "dataset.json")) as f:
        record = json.load(f)["semisup"]
    assert record["preset"] == "cohort" and set(record["case_scanner"]) == {f"syn_{i:03d}" for i in range(6)}
    assert sitk.ReadImage(os.path.join(semi, "imagesTs", "syn_005_0000.nii.gz")).GetSpacing() == (1.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="unknown synthetic preset 'x'"):
        make_synthetic_dataset(str(tmp_path / "x"), 1, 0, 0, preset="x")


def test_gap_share_per_seed_and_convergence_table():
    q = _quality()
    args = q.parse_args(["--track", "random", "--seeds", "0", "1", "--budgets", "2", "--epochs", "10", "--methods", "A", "--convergence"])

    def row(method, budget, seed, dice, epochs=10):
        return {"method": method, "budget": budget, "seed": seed, "epochs": epochs, "iterations": epochs * 50,
                "dice": dice, "hd95": 5.0, "per_label_dice": {"organ": dice}, "per_label_hd95": {"organ": 5.0},
                "train_seconds": 1.0, "segformer": None}
    rows = [row(q.FULL, None, 0, 0.8), row(q.demo.BASELINE, 2, 0, 0.4), row("A", 2, 0, 0.5),
            row(q.FULL, None, 1, 0.9), row(q.demo.BASELINE, 2, 1, 0.5), row("A", 2, 1, 0.8),
            row(q.FULL, None, 0, 0.81, epochs=20)]
    entries = {e["method"]: e for e in q.summarize(args, rows)["2"]}
    # seed 0: (0.5 - 0.4) / (0.8 - 0.4) = 0.25; seed 1: (0.8 - 0.5) / (0.9 - 0.5) = 0.75
    assert entries["A"]["gap_share_per_seed"] == pytest.approx([0.25, 0.75])
    assert entries["A"]["gap_share"] == pytest.approx((0.5, 0.25))
    assert entries[q.FULL]["dice"] == pytest.approx((0.85, 0.05)) and entries[q.FULL]["n"] == 2   # 20-epoch run apart
    conv = q.convergence(args, rows)
    assert conv == [{"method": q.FULL, "budget": None, "seed": 0, "iterations": [500, 1000], "dice": [0.8, 0.81],
                     "change": pytest.approx(0.01)}]
    text = q.markdown(args, q.summarize(args, rows), conv)
    assert "0.50 ± 0.25" in text and "500 → 1000" in text and "+0.010" in text
    assert q.run_key("A", None, 3, 10, 50) == "A__full__seed3__10x50"
    jobs = q.planned_jobs(args)
    assert jobs[:3] == [(q.FULL, None, 0, 10), (q.demo.BASELINE, 2, 0, 10), (q.FULL, None, 1, 10)]
    assert (q.FULL, None, 0, 20) in jobs and ("A", 2, 1, 10) in jobs and len(jobs) == 4 + 2 + 2


def test_convergence_over_several_seeds_reports_the_mean_change():
    q = _quality()
    args = q.parse_args(["--track", "random", "--seeds", "0", "1", "--epochs", "10", "--methods", "A", "--convergence",
                         "--convergence-seeds", "0", "1"])
    jobs = q.planned_jobs(args)
    doubled = [j for j in jobs if j[3] == 20]
    assert sorted(doubled, key=str) == sorted([(q.FULL, None, 0, 20), (q.demo.BASELINE, 2, 0, 20),
                                               (q.FULL, None, 1, 20), (q.demo.BASELINE, 2, 1, 20)], key=str)

    def row(method, seed, dice, epochs):
        return {"method": method, "budget": None if method == q.FULL else 2, "seed": seed, "epochs": epochs,
                "iterations": epochs * 50, "dice": dice}
    rows = [row(q.FULL, 0, 0.80, 10), row(q.FULL, 0, 0.81, 20), row(q.FULL, 1, 0.70, 10), row(q.FULL, 1, 0.75, 20),
            row(q.demo.BASELINE, 0, 0.40, 10), row(q.demo.BASELINE, 0, 0.41, 20),
            row(q.demo.BASELINE, 1, 0.50, 10), row(q.demo.BASELINE, 1, 0.49, 20)]
    means = {m["method"]: m for m in q.convergence_means(q.convergence(args, rows))}
    # fully supervised: changes +0.01 and +0.05 -> mean 0.03, std 0.02 (ddof 0): not converged
    assert means[q.FULL]["change"] == pytest.approx((0.03, 0.02)) and not means[q.FULL]["converged"]
    # labeled-only: +0.01 and -0.01 -> mean 0.00, std 0.01: converged
    assert means[q.demo.BASELINE]["change"] == pytest.approx((0.0, 0.01), abs=1e-12)
    assert means[q.demo.BASELINE]["converged"] and means[q.demo.BASELINE]["seeds"] == [0, 1]
    text = q.markdown(args, {}, q.convergence(args, rows))
    assert "+0.030 ± 0.020" in text and "not converged" in text and "mean of seeds 0,1" in text
    assert q.parse_args(["--track", "random", "--seeds", "3", "4", "--convergence"]).convergence_seeds == [3]  # default: first seed


def test_convergence_runs_only_at_the_convergence_budgets():
    """With two budgets the doubled labeled-only runs are of the first budget unless --convergence-budgets says
    otherwise; a convergence budget outside --budgets is refused."""
    q = _quality()
    base = ["--track", "random", "--seeds", "0", "--epochs", "10", "--methods", "A", "--budgets", "2", "4", "--convergence"]
    doubled = [j for j in q.planned_jobs(q.parse_args(base)) if j[3] == 20]
    assert sorted(doubled, key=str) == sorted([(q.FULL, None, 0, 20), (q.demo.BASELINE, 2, 0, 20)], key=str)
    doubled = [j for j in q.planned_jobs(q.parse_args(base + ["--convergence-budgets", "2", "4"])) if j[3] == 20]
    assert (q.demo.BASELINE, 4, 0, 20) in doubled and len(doubled) == 3
    with pytest.raises(SystemExit):
        q.parse_args(base + ["--convergence-budgets", "3"])


def test_dice_on_seen_and_unseen_scanners(tmp_path):
    """Per-scanner Dice from nnUNetv2_semisup_evaluate's per-case CSV, then pooled over the scanners a budget's
    labeled cases saw and the others (hand-computed)."""
    q = _quality()
    raw = tmp_path / "raw" / "Dataset1_X"
    raw.mkdir(parents=True)
    # training cases syn_000 (A), syn_001 (C), syn_002 (B); test cases syn_003 (A), syn_004 (B), syn_005 (C)
    scanners = {"syn_000": 0, "syn_001": 2, "syn_002": 1, "syn_003": 0, "syn_004": 1, "syn_005": 2}
    (raw / "dataset.json").write_text(json.dumps({"semisup": {"case_scanner": scanners}}))
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    lines = ["case,label,dice", "syn_003,1,0.9", "syn_003,2,0.7", "syn_004,1,0.5", "syn_004,2,nan",
             "syn_005,1,0.1", "syn_005,2,0.3"]
    (evaluation / "metrics_per_case.csv").write_text("\n".join(lines) + "\n")
    got = q.scanner_breakdown(str(evaluation), str(tmp_path / "raw"))
    assert got["train_case_scanners"] == ["A", "C", "B"]
    assert got["per_scanner_dice"] == {"A": {"dice": pytest.approx(0.8), "n": 2}, "B": {"dice": 0.5, "n": 1},
                                       "C": {"dice": pytest.approx(0.2), "n": 2}}
    run = {**got}
    # budget 2: labeled cases syn_000 (A), syn_001 (C) -> seen = (0.9 + 0.7 + 0.1 + 0.3) / 4, unseen = B's 0.5
    seen, unseen = q.seen_unseen_dice(run, set(got["train_case_scanners"][:2]))
    assert seen == pytest.approx(0.5) and unseen == pytest.approx(0.5)
    seen, unseen = q.seen_unseen_dice(run, {"A"})
    assert seen == pytest.approx(0.8) and unseen == pytest.approx((0.5 + 0.1 + 0.3) / 3)
    assert all(np.isnan(q.seen_unseen_dice({}, {"A"})))
    assert q.scanner_breakdown(str(evaluation), str(tmp_path / "nothing")) == {}


def _pseudo_label_quality():
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "pseudo_label_quality.py")
    spec = importlib.util.spec_from_file_location("pseudo_label_quality", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pseudo_label_quality_scores_unlabeled_cases_per_scanner(tmp_path):
    """Dice of predictions on unlabeled cases against their true labels, pooled over (case, label) pairs with a
    Dice, split into the scanners the labeled cases saw and the others (hand-counted voxels); the kept checkpoints
    are found and ordered by epoch, the final one counted as the last epoch."""
    import SimpleITK as sitk
    p = _pseudo_label_quality()

    def write(folder, case, arr):
        folder.mkdir(exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(arr.astype(np.uint8)), str(folder / f"{case}.nii.gz"))

    pred, truth = tmp_path / "pred", tmp_path / "truth"
    # syn_002 (scanner A, seen): label 1 — truth 4 voxels, prediction 2 of them + 2 others -> 2*2/(4+4) = 0.5;
    # label 2 absent from both -> no Dice. syn_003 (C, unseen): label 1 exact -> 1.0; label 2 truth 1 voxel,
    # predicted none -> 0.0
    t = np.zeros((1, 2, 6), np.uint8)
    t[0, 0, :4] = 1
    q_ = np.zeros_like(t)
    q_[0, 0, 2:6] = 1
    write(truth, "syn_002", t), write(pred, "syn_002", q_)
    t2 = np.zeros_like(t)
    t2[0, 1, :3] = 1
    t2[0, 0, 5] = 2
    q2 = np.zeros_like(t)
    q2[0, 1, :3] = 1
    write(truth, "syn_003", t2), write(pred, "syn_003", q2)
    got = p.score(str(pred), str(truth), {"organ": 1, "organ2": 2}, {"syn_002": "A", "syn_003": "C"}, {"A", "B"})
    assert got["dice_seen"] == pytest.approx(0.5)
    assert got["dice_unseen"] == pytest.approx(0.5)          # (1.0 + 0.0) / 2
    assert got["dice"] == pytest.approx(0.5)                 # (0.5 + 1.0 + 0.0) / 3
    assert got["per_label_dice"] == {"organ": pytest.approx(0.75), "organ2": 0.0} and got["cases"] == 2
    assert np.isnan(p.dice(np.zeros(3), np.zeros(3), 3))

    fold = tmp_path / "fold"
    fold.mkdir()
    for name in ("checkpoint_epoch10.pth", "checkpoint_epoch5.pth", "checkpoint_final.pth", "checkpoint_latest.pth",
                 "checkpoint_epoch5.pth.tmp"):
        (fold / name).write_text("")
    assert [e for e, _ in p.checkpoints(str(fold), 20)] == [5, 10, 20]
    assert p.checkpoints(str(fold), 20)[-1][1].endswith("checkpoint_final.pth")


def test_tracks_set_their_data_and_cache_folders():
    q = _quality()
    a = q.parse_args(["--track", "iid", "--cache", "c", "--work", "w"])
    assert (a.seeds, a.budgets, a.train_cases, a.test, a.preset) == ([0, 1, 2, 3, 4], [3], 24, 30, "cohort_iid")
    assert a.cache_dir == os.path.join("c", "iid") and q.dataset_config(a, 2, 3, 40).out.endswith(
        os.path.join("w", "iid", "seed2_L3_e40"))
    assert q.dataset_config(a, 2, 3, 80).out.endswith(os.path.join("w", "iid", "seed2_L3_e80"))
    assert q.data_settings(a, 0)["track"] == "iid"
    r = q.parse_args(["--track", "random", "--cache", "c"])
    # the random track's settings (and so its cache files from before the i.i.d. track) are unchanged
    assert r.cache_dir == "c" and "track" not in q.data_settings(r, 0) and r.budgets == [2]
    u = q.parse_args(["--track", "unseen_A"])
    assert u.preset == "cohort" and u.unseen == "A" and q.dataset_config(u, 0, 4, 40).unseen == "A"


def test_jobs_with_compute_matched_selftraining_and_doubling():
    q = _quality()
    a = q.parse_args(["--track", "iid", "--seeds", "0", "1", "--epochs", "10", "--methods", q.SELFTRAIN, "B",
                      "--compute-factor", "3", "--doubling-seeds", "0"])
    jobs = q.planned_jobs(a)
    assert (q.COMPUTE_MATCHED, 3, 1, 10) in jobs and (q.SELFTRAIN, 3, 0, 10) in jobs and ("B", 3, 1, 10) in jobs
    assert (q.SELFTRAIN, 3, 0, 20) in jobs and ("B", 3, 0, 20) in jobs and ("B", 3, 1, 20) not in jobs
    # labeled-only first: the self-training row reuses it as its teacher
    assert jobs.index((q.demo.BASELINE, 3, 0, 10)) < jobs.index((q.SELFTRAIN, 3, 0, 10))
    assert q.job_settings(a, (q.COMPUTE_MATCHED, 3, 0, 10))["compute_factor"] == 3


def test_t_interval_and_decision_rule_by_hand():
    q = _quality()
    # deltas 0.10, 0.20, 0.30, 0.00, 0.15: mean 0.15, sd (ddof 1) = sqrt(0.05 / 4) = 0.111803,
    # t(0.975, 4) = 2.776445 -> half width 2.776445 * 0.111803 / sqrt(5) = 0.138822
    ci = q.t_interval([0.10, 0.20, 0.30, 0.00, 0.15])
    assert ci["mean"] == pytest.approx(0.15) and ci["low"] == pytest.approx(0.011178, abs=1e-6)
    assert ci["high"] == pytest.approx(0.288822, abs=1e-6)
    a = q.parse_args(["--track", "iid", "--epochs", "10", "--methods", "A", "B", "--compute-factor", "2"])

    def row(method, seed, dice, hd95=10.0, budget=3):
        return {"method": method, "budget": budget, "seed": seed, "epochs": 10, "dice": dice, "hd95": hd95,
                "per_label_dice": {"organ": dice}, "per_label_hd95": {"organ": hd95}, "train_seconds": 1.0}
    lo = [0.50, 0.40, 0.45, 0.55, 0.50]
    rows = [row(q.demo.BASELINE, s, d) for s, d in enumerate(lo)]
    rows += [row(q.FULL, s, 0.9, budget=None) for s in range(5)]
    rows += [row(q.COMPUTE_MATCHED, s, d) for s, d in enumerate(lo)]
    rows += [row(q.SELFTRAIN, s, d + 0.02 + 0.01 * (s % 2)) for s, d in enumerate(lo)]
    # A - self-training = 0.01 + (0.10, 0.20, 0.30, 0.00, 0.15): the hand interval above, shifted by 0.01
    x = [0.10, 0.20, 0.30, 0.00, 0.15]
    rows += [row("A", s, d + 0.03 + 0.01 * (s % 2) + x[s], hd95=9.0) for s, d in enumerate(lo)]
    # B: better than both baselines on every seed but with a worse HD95
    rows += [row("B", s, d + 0.2, hd95=12.0) for s, d in enumerate(lo)]
    v = {e["method"]: e for e in q.verdicts(a, rows)["3"]}
    # the compute-matched baseline is a row of the summary table (named with its factor), between the references
    table = q.summarize(a, rows)["3"]
    assert [e["method"] for e in table] == [q.demo.BASELINE, q.COMPUTE_MATCHED, q.FULL, "A", "B"]
    assert table[1]["name"] == "nnU-Net (labeled only, 2x iterations: compute-matched)" and table[1]["n"] == 5
    assert v["A"]["vs_selftrain"]["mean"] == pytest.approx(0.16)
    assert v["A"]["vs_selftrain"]["low"] == pytest.approx(0.021178, abs=1e-6)
    assert v["A"]["vs_selftrain"]["high"] == pytest.approx(0.298822, abs=1e-6)
    assert v["A"]["vs_compute_matched"]["wins"] == 5 and v["A"]["beats_nnunet"] is True
    assert v["B"]["beats_nnunet"] is False and "HD95" in v["B"]["verdict"]
    # the self-training row is judged against compute-matched labeled-only only: +0.02 / +0.03, interval > 0
    assert v[q.SELFTRAIN]["vs_selftrain"] is None and v[q.SELFTRAIN]["beats_nnunet"] is True
    # a row that loses to self-training on one seed of five by enough
    rows2 = [r for r in rows if r["method"] != "A"] + [row("A", s, d + 0.025 + (0.2 if s else -0.1))
                                                        for s, d in enumerate(lo)]
    va = {e["method"]: e for e in q.verdicts(a, rows2)["3"]}["A"]
    assert va["beats_nnunet"] is False and "self-training" in va["verdict"] and va["vs_selftrain"]["wins"] == 4
    # four seeds: no verdict
    v4 = {e["method"]: e for e in q.verdicts(a, [r for r in rows if r["seed"] < 4])["3"]}
    assert v4["A"]["beats_nnunet"] is None and "no verdict" in v4["A"]["verdict"]
    # the compute-matched row missing: a row whose 5-seed interval vs self-training already includes 0 fails the
    # rule whatever that row will show; one that passes the conditions it can be judged on waits for it
    no_cm = [r for r in rows2 if r["method"] != q.COMPUTE_MATCHED]
    vn = {e["method"]: e for e in q.verdicts(a, no_cm)["3"]}
    assert vn["A"]["beats_nnunet"] is False and "self-training" in vn["A"]["verdict"]
    assert "decided before every baseline" in vn["A"]["verdict"]
    vp = {e["method"]: e for e in q.verdicts(a, [r for r in rows if r["method"] != q.COMPUTE_MATCHED])["3"]}
    assert vp["A"]["beats_nnunet"] is None and "no verdict" in vp["A"]["verdict"]
    text = q.verdict_markdown(a, q.verdicts(a, rows))
    assert "+0.160 [+0.021, +0.299]" in text and "beats nnU-Net" in text


def test_mixed_domain_track_judges_its_three_seeds():
    """The mixed-domain tracks run 3 seeds (their protocol): a row with all 3 gets a verdict from t(0.975, 2)."""
    q = _quality()
    a = q.parse_args(["--track", "unseen_C", "--epochs", "10", "--methods", "A", "--compute-factor", "3"])
    assert a.seeds == [0, 1, 2] and a.budgets == [4]

    def row(method, seed, dice, hd95=10.0, budget=4):
        return {"method": method, "budget": budget, "seed": seed, "epochs": 10, "dice": dice, "hd95": hd95,
                "per_label_dice": {"organ": dice}, "per_label_hd95": {"organ": hd95}, "train_seconds": 1.0}
    lo = [0.50, 0.40, 0.45]
    rows = [row(q.demo.BASELINE, s, d) for s, d in enumerate(lo)] + [row(q.FULL, s, 0.9, budget=None) for s in range(3)]
    rows += [row(q.COMPUTE_MATCHED, s, d) for s, d in enumerate(lo)]
    rows += [row(q.SELFTRAIN, s, d + 0.01) for s, d in enumerate(lo)]
    # A - self-training = 0.10, 0.20, 0.30: mean 0.2, sd 0.1, t(0.975, 2) = 4.302653 -> half width 0.248414
    rows += [row("A", s, d + 0.01 + x) for s, (d, x) in enumerate(zip(lo, (0.10, 0.20, 0.30)))]
    v = {e["method"]: e for e in q.verdicts(a, rows)["4"]}
    assert v["A"]["vs_selftrain"]["low"] == pytest.approx(0.2 - 0.248414, abs=1e-6)
    assert v["A"]["vs_selftrain"]["high"] == pytest.approx(0.2 + 0.248414, abs=1e-6)
    assert v["A"]["beats_nnunet"] is False and "self-training" in v["A"]["verdict"]
    assert "decided before" not in v["A"]["verdict"]          # complete: all three seeds against both baselines
    # self-training: +0.01 on each seed vs compute-matched (sd 0: a zero-width interval above 0)
    assert v[q.SELFTRAIN]["beats_nnunet"] is True
    # two seeds of the track's three: no verdict, and the message names the track's count
    v2 = {e["method"]: e for e in q.verdicts(a, [r for r in rows if r["seed"] < 2])["4"]}
    assert v2["A"]["beats_nnunet"] is None and "fewer than 3 seeds" in v2["A"]["verdict"]
    # the i.i.d. track still wants five
    assert q.min_seeds_for_verdict(q.parse_args(["--track", "iid"])) == 5


def test_track_json_keeps_the_other_tracks(tmp_path):
    q = _quality()
    path = str(tmp_path / "q.json")
    with open(path, "w") as f:
        json.dump({"summary": {"2": []}, "runs": [1]}, f)   # the single-track layout from before the i.i.d. track = random track
    q.write_track_json(path, "iid", {"runs": [2]})
    with open(path) as f:
        data = json.load(f)
    assert data == {"tracks": {"random": {"summary": {"2": []}, "runs": [1]}, "iid": {"runs": [2]}}}
