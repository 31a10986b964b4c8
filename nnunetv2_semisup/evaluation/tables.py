"""Console tables: the evaluation summary, the run aggregate and ``--compare-paper`` (docs/evaluation.md §5-§7).

Dice and Jaccard are stored as fractions and printed ×100 with a % sign (§5); distances are printed with their
unit. Pure formatting: every function returns a string.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

from nnunetv2_semisup.evaluation.published import PublishedTable, published_tables

_OVERLAP = ("dice", "jaccard")


def _num(x) -> float:
    return math.nan if x is None else float(x)


def format_value(metric: str, value, percent_sign: bool = True) -> str:
    """Dice/Jaccard ×100 (with %), distances with 2 decimals; NaN/None as ``nan``."""
    v = _num(value)
    if math.isnan(v):
        return "nan"
    if metric in _OVERLAP or metric not in ("hd95", "asd", "assd", "hd"):
        return f"{100 * v:.2f}" + ("%" if percent_sign else "")
    return f"{v:.2f}"


def _header(metric: str, units: str) -> str:
    return {"dice": "Dice", "jaccard": "Jaccard"}.get(metric, f"{metric.upper()} ({units})")


def _render(header: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> str:
    """Plain-text table; columns in ``left`` (indices, negative allowed) are left-aligned, the others right."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    left = {i % len(widths) for i in left}
    line = lambda cells: "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def settings_line(summary: dict) -> str:
    preset = f", preset {summary['preset']}" if summary.get("preset") else ""
    dist = "ASSD" if summary["asd_definition"] == "assd_pooled" else "ASD"
    return (f"mode {summary['mode']}{preset}: units {summary['units']}, HD95 = {summary['hd95_definition']}, "
            f"{dist} = {summary['asd_definition']}, empty-mask policy {summary['empty_policy']}, "
            f"LCC {'on' if summary['lcc'] else 'off'}")


def format_summary(summary: dict) -> str:
    """Per-label mean ± std table, foreground mean, policy notes, missing cases (the CLI's console output)."""
    metrics = summary["metrics"]
    header = ["label"] + [_header(m, summary["units"]) for m in metrics] + ["n", "NaN"]
    rows = []
    for k, name in summary["labels"].items():
        mean, std = summary["mean"][k], summary["std"][k]
        cells = [f"{k} {name}"]
        for m in metrics:
            s = format_value(m, mean[m])
            if not math.isnan(_num(std[m])):
                s += " ± " + format_value(m, std[m], percent_sign=False)
            cells.append(s)
        n_nan = mean["n_nan"]  # cases with any NaN metric (older summaries: a per-metric dict)
        cells += [str(mean["n"]), str(max(n_nan.values()) if isinstance(n_nan, dict) else n_nan)]
        rows.append(cells)
    rows.append(["foreground mean"] + [format_value(m, summary["foreground_mean"][m]) for m in metrics] + ["", ""])
    out = [f"{summary['n_cases']} cases, {settings_line(summary)}", _render(header, rows),
           "(mean ± std over cases, std ddof 0; NaN excluded from means; NaN column = cases with any NaN metric)"]
    out += [f"note: {n}" for n in summary.get("notes", [])]
    empty = summary.get("empty_cases", {})
    if any(empty.values()):
        out.append("empty-mask rows: " + ", ".join(f"{k} {v}" for k, v in empty.items() if v)
                   + " (flagged in the empty_case column of metrics_per_case.csv)")
    if summary.get("missing_predictions"):
        out.append(f"MISSING predictions ({len(summary['missing_predictions'])}, counted as empty predictions): "
                   + ", ".join(summary["missing_predictions"]))
    if summary.get("unmatched_predictions"):
        out.append(f"predictions without a reference (not evaluated): {', '.join(summary['unmatched_predictions'])}")
    return "\n".join(out)


def format_runs(agg: dict) -> str:
    """Mean ± std (ddof 0) over runs of the foreground mean (``--aggregate-runs``)."""
    metrics = agg["metrics"]
    header = ["", *[_header(m, agg["units"]) for m in metrics]]
    rows = [[f"run {i + 1}"] + [format_value(m, r[m]) for m in metrics]
            for i, r in enumerate(agg["run_foreground_means"])]
    rows.append(["mean ± std"] + [format_value(m, agg["foreground_mean"][m]) + " ± "
                                  + format_value(m, agg["foreground_std_over_runs"][m], percent_sign=False)
                                  for m in metrics])
    preset = f", preset {agg['preset']}" if agg.get("preset") else ""
    return (f"{agg['n_runs']} runs, mode {agg['mode']}{preset}, empty-mask policy {agg['empty_policy']}, "
            f"LCC {'on' if agg['lcc'] else 'off'}\n" + _render(header, rows)
            + "\n(foreground mean per run; mean and std over runs, std ddof 0 as the SKCDF/DHC scripts)")


def _comparability(summary: dict, table: PublishedTable) -> List[str]:
    notes = []
    if summary["mode"] != "paper":
        notes.append(f"NOT COMPARABLE: your numbers are mm-mode (mm, symmetric ASSD, max-of-directed HD95); the "
                     f"table is in voxels with paper conventions. Re-run with --preset {table.preset}")
    elif summary.get("preset") != table.preset:
        notes.append(f"different convention: your run used preset {summary.get('preset')} (empty policy "
                     f"{summary['empty_policy']}, LCC {'on' if summary['lcc'] else 'off'}); the table corresponds "
                     f"to --preset {table.preset}")
    return notes


def format_comparison(summary: dict, key: str, runs: Optional[dict] = None) -> str:
    """The user's foreground means beside the published rows for ``key`` (e.g. ``LA/8``), with conventions.

    ``runs`` (an ``--aggregate-runs`` result) adds the std over runs to the user's row. For multi-organ tables
    the user's per-label Dice fills the per-class columns when the number of labels matches.
    """
    out = []
    dist_key = "asd" if summary["mode"] == "paper" else "assd"
    for table in published_tables(key):
        base = ("dice", "jaccard", "hd95", "asd")
        header = ["method", "", "Dice %", "Jaccard %", "HD95", "ASD"] + list(table.columns[len(base):])
        fg = runs["foreground_mean"] if runs else summary["foreground_mean"]
        user = []
        for m in base:
            v = format_value(m, fg[dist_key if m == "asd" else m], percent_sign=False)
            if runs and v != "nan":
                v += " ± " + format_value(m, runs["foreground_std_over_runs"][dist_key if m == "asd" else m],
                                          percent_sign=False)
            user.append(v)
        labels = list(summary["labels"])
        if table.n_class_columns:
            per_label = runs["per_label_mean"] if runs else summary["mean"]
            if len(labels) == table.n_class_columns:
                user += [f"{100 * _num(per_label[k]['dice']):.1f}" for k in labels]
            else:
                user += ["—"] * table.n_class_columns
        user += ["—"] * (len(table.columns) - len(user))  # published-only columns (e.g. CML Table 4's ACDC)
        preset = summary.get("preset") or summary["mode"]
        rows = [["your run", preset] + user] + [[m, note] + list(v) for m, v, note in table.rows]
        if table.variants:
            header.append("port variant")
            rows = [rows[0] + [""]] + [r + [v] for r, v in zip(rows[1:], table.variants)]
        out.append(f"== {table.source} ==")
        out.append(f"convention: {table.convention}")
        out.append(f"compare with: --preset {table.preset}; your run: {settings_line(summary)}")
        out += [f"!! {n}" for n in _comparability(summary, table)]
        if table.n_class_columns and len(labels) != table.n_class_columns:
            out.append(f"(per-class columns left empty: you evaluated {len(labels)} labels, the table has "
                       f"{table.n_class_columns} classes)")
        if summary["mode"] != "paper":
            out.append("(your HD95/ASD columns are in mm: HD95 max-of-directed, ASD column = symmetric ASSD)")
        out.append(_render(header, rows, left=(0, -1) if table.variants else (0,)))
        out.append("('own' = measured by the paper under the convention above; 'quoted' = copied by the paper from "
                   "the cited work, protocol not re-measured)")
        if table.variants:
            out.append("('port variant' = the trainer of this package that re-runs the row: train it with "
                       "nnUNetv2_train … -tr <variant>, evaluate with the preset above and compare; '—' = not "
                       "available in the port)")
        out.append("")
    return "\n".join(out).rstrip()
