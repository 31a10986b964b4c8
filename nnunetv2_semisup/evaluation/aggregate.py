"""Aggregation over cases, labels and runs (docs/evaluation.md §5).

- per label: mean, std (ddof 0), median over cases, NaN excluded; ``n_nan`` = number of cases with at least one
  NaN metric (an integer, docs/evaluation.md §6), ``n_nan_per_metric`` = the NaN count of each metric;
- ``foreground_mean``: mean over foreground labels of the per-label means (cases first, then classes, as
  DHC/SKCDF); labels whose mean is NaN (every case NaN) are left out of it;
- runs (seeds): mean and std (ddof 0, as the SKCDF/DHC scripts) over runs of the run-level ``foreground_mean``.
"""
from __future__ import annotations

import json
import math
from typing import Dict, List, Sequence

import numpy as np


def _stats(values: Sequence[float]) -> Dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    finite = v[~np.isnan(v)]
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan}
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=0)), "median": float(np.median(finite))}


def aggregate_rows(rows: List[dict], labels: Sequence[int], metric_keys: Sequence[str]) -> dict:
    """Per-label mean/std/median and ``foreground_mean`` from per-case rows (docs/evaluation.md §5).

    Each of ``mean``/``std``/``median`` maps ``str(label)`` to ``{metric: value, "n": cases, "n_nan": int,
    "n_nan_per_metric": {metric: count}}``. ``n_nan`` counts the cases (rows of this label) in which **any** of
    ``metric_keys`` is NaN, i.e. the cases left out of at least one mean; ``n_nan_per_metric`` gives the count for
    each metric separately (an extension beyond docs/evaluation.md §6).
    """
    out = {"mean": {}, "std": {}, "median": {}}
    for k in labels:
        label_rows = [r for r in rows if r["label"] == k]
        per_metric = {m: int(sum(1 for r in label_rows if math.isnan(r[m]))) for m in metric_keys}
        n_nan = int(sum(1 for r in label_rows if any(math.isnan(r[m]) for m in metric_keys)))
        for stat in out:
            out[stat][str(k)] = {m: _stats([r[m] for r in label_rows])[stat] for m in metric_keys}
            out[stat][str(k)].update(n=len(label_rows), n_nan=n_nan, n_nan_per_metric=dict(per_metric))
    fg = {}
    for m in metric_keys:
        means = [out["mean"][str(k)][m] for k in labels]
        means = [x for x in means if not math.isnan(x)]
        fg[m] = float(np.mean(means)) if means else math.nan
    out["foreground_mean"] = fg
    return out


class RunAggregationError(ValueError):
    """Summaries that cannot be aggregated together (different settings or labels)."""


_SAME_KEYS = ("mode", "preset", "empty_policy", "lcc", "units", "hd95_definition", "asd_definition", "labels")


def aggregate_runs(summary_files: Sequence[str]) -> dict:
    """Mean and std (ddof 0) over runs of each run's ``foreground_mean`` and per-label means (docs/evaluation.md §5).

    All summaries must share mode, preset, empty policy, LCC and labels; otherwise the numbers are not comparable
    and a :class:`RunAggregationError` names the differing key and file.
    """
    if len(summary_files) < 1:
        raise RunAggregationError("--aggregate-runs needs at least one summary.json")
    summaries = []
    for path in summary_files:
        try:
            with open(path, encoding="utf-8") as f:
                summaries.append(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise RunAggregationError(f"cannot read summary {path}: {e}") from None
        if summaries[-1].get("generator") != "nnunetv2_semisup" or "foreground_mean" not in summaries[-1]:
            raise RunAggregationError(f"{path} is not a summary.json written by nnUNetv2_semisup_evaluate")
    first = summaries[0]
    for path, s in zip(summary_files[1:], summaries[1:]):
        for key in _SAME_KEYS:
            if s.get(key) != first.get(key):
                raise RunAggregationError(f"{path}: {key} = {s.get(key)!r} differs from {summary_files[0]} "
                                          f"({first.get(key)!r}); runs must be evaluated with the same settings")
    metrics = list(first["foreground_mean"])

    def to_float(x):
        return math.nan if x is None else float(x)

    def over_runs(values):
        v = np.asarray([to_float(x) for x in values])
        if np.isnan(v).any():
            return {"mean": math.nan, "std": math.nan}
        return {"mean": float(v.mean()), "std": float(v.std(ddof=0))}

    fg = {m: over_runs([s["foreground_mean"][m] for s in summaries]) for m in metrics}
    per_label = {k: {m: over_runs([s["mean"][k][m] for s in summaries]) for m in metrics} for k in first["labels"]}
    return {
        "generator": "nnunetv2_semisup", "aggregate_of": [str(p) for p in summary_files], "n_runs": len(summaries),
        **{k: first.get(k) for k in _SAME_KEYS}, "metrics": metrics, "std_ddof": 0,
        "foreground_mean": {m: fg[m]["mean"] for m in metrics},
        "foreground_std_over_runs": {m: fg[m]["std"] for m in metrics},
        "per_label_mean": {k: {m: v[m]["mean"] for m in metrics} for k, v in per_label.items()},
        "per_label_std_over_runs": {k: {m: v[m]["std"] for m in metrics} for k, v in per_label.items()},
        "run_foreground_means": [{m: to_float(s["foreground_mean"][m]) for m in metrics} for s in summaries],
    }
