"""benchmarks/active_learning.py: its arithmetic (paired ranking − random with a t-interval) and its resumption (a
seed interrupted after some stages redoes none of them). The training runs themselves are the benchmark
(numbers in docs/benchmarks.md), not a test: here training, ranking and the dataset writing are replaced by fakes."""
import csv
import importlib.util
import json
import math
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _al():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    spec = importlib.util.spec_from_file_location("active_learning", os.path.join(REPO, "benchmarks",
                                                                                   "active_learning.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_difference_of_ranking_and_random_by_hand():
    al = _al()
    dice = {0: (0.60, 0.70, 0.65, 0.62), 1: (0.50, 0.58, 0.57, 0.52), 2: (0.55, 0.66, 0.60, 0.61)}
    results = [{"seed": s, "start_result": {"dice": d[0]}, "ranking": {"dice": d[1]}, "random": {"dice": d[2]},
                "lowest": {"dice": d[3]}, "picks": {"ranking": ["a", "b", "c"]}} for s, d in dice.items()]
    summary = al.summarize(results)
    # ranking − random per seed: 0.05, 0.01, 0.06 → mean 0.04, sd = √((0.01² + 0.03² + 0.02²)/2) = √0.0007,
    # half width t(0.975, 2) · sd / √3 with t(0.975, 2) = 4.302652729911275 (table value)
    d = summary["ranking_minus_random"]
    half = 4.302652729911275 * math.sqrt(0.0007) / math.sqrt(3)
    assert d["mean"] == pytest.approx(0.04) and d["n"] == 3 and d["wins"] == 3
    assert (d["low"], d["high"]) == (pytest.approx(0.04 - half), pytest.approx(0.04 + half))
    assert summary["ranking_minus_lowest"]["mean"] == pytest.approx((0.08 + 0.06 + 0.05) / 3)
    assert summary["start"]["mean"] == pytest.approx(0.55)
    text = al.markdown(al.parse_args(["--work", "w"]), results, summary)
    assert "| 1 | 0.500 | 0.580 | 0.570 | 0.520 | a, b, c |" in text and "wins 3/3" in text


def test_an_interrupted_seed_resumes_after_its_last_finished_stage(tmp_path, monkeypatch):
    al = _al()
    args = al.parse_args(["--work", str(tmp_path), "--seeds", "0", "--epochs", "2"])
    truth = tmp_path / "seed0" / "truth"
    truth.mkdir(parents=True)
    (truth / "dataset.json").write_text("{}")  # the generated dataset exists: not regenerated
    calls = {"train": [], "rank": 0}

    def fake_train(cfg, log):
        calls["train"].append(os.path.basename(cfg.out))
        if len(calls["train"]) == 3:
            raise KeyboardInterrupt  # killed while training the second strategy
        return {"dice": 0.5 + 0.1 * len(calls["train"]), "hd95": 1.0, "train_seconds": 1.0}

    def fake_rank(cmd, env, log_file):
        calls["rank"] += 1
        out = cmd[cmd.index("-o") + 1]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "ranking.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, ["rank", "case"])
            w.writeheader()
            w.writerows({"rank": i + 1, "case": f"syn_{23 - i:03d}"} for i in range(21))

    monkeypatch.setattr(al, "train_and_evaluate", fake_train)
    monkeypatch.setattr(al, "make_raw", lambda *a: None)
    monkeypatch.setattr(al.demo, "prepare_out_folder", lambda out: None)
    monkeypatch.setattr(al.demo, "run_command", fake_rank)
    with pytest.raises(KeyboardInterrupt):
        al.run_seed(args, 0)
    assert calls == {"train": ["start", "ranking", "random"], "rank": 1}
    out = al.run_seed(args, 0)
    # resumed: only the interrupted strategy and the one after it are trained; nothing is ranked again
    assert calls == {"train": ["start", "ranking", "random", "random", "lowest"], "rank": 1}
    assert out["picks"]["ranking"] == ["syn_023", "syn_022", "syn_021"]
    assert out["picks"]["lowest"] == ["syn_005", "syn_004", "syn_003"]
    assert [out[s]["dice"] for s in ("start_result", "ranking", "random", "lowest")] == pytest.approx(
        [0.6, 0.7, 0.9, 1.0])
    cached = [p for p in os.listdir(tmp_path / "cache")]
    assert len(cached) == 1 and not cached[0].endswith(".partial")
    with open(tmp_path / "cache" / cached[0]) as f:
        assert json.load(f)["lowest"]["dice"] == pytest.approx(1.0)
    assert al.run_seed(args, 0) == out and len(calls["train"]) == 5  # a finished seed comes from the cache
