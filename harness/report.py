"""`hgbench report`: one self-contained HTML page, a summary CSV and figure files from a
run's results (or a pytest-benchmark JSON file).

The page answers "which estimator, at what cost, with what accuracy, at which depth":
per-backbone tables of cost as multiples of a plain step and of a reference estimator
(default unroll T=1, the papers' second-order baseline), accuracy as mean +- 95% CI over
seeds, figures inline as SVG, the environment and the suite that produced the run. Every
string from a suite or results file is HTML-escaped; the page loads nothing from anywhere.
"""
from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from harness import figures
from harness.errors import ConfigError
from harness.frontier import format_size, frontier, parse_sizes
from harness.results import _atomic, estimator_params, read_curves, read_results, workload_params

NUMERIC = ["step_time_s", "step_time_iqr_s", "hyper_time_s", "hyper_time_iqr_s", "plain_time_s",
           "time_x_plain", "mem_x_plain", "flops_x_plain", "peak_rss_delta_bytes", "peak_alloc_bytes",
           "graph_bytes", "hyper_flops", "fid_cos_1step", "fid_cos_long", "test_accuracy", "seed"]
PROVENANCE = ["hgbench_version", "git_sha", "git_dirty", "torch_version", "cuda_version", "cudnn_version",
              "device_type", "device_name", "cpu_model", "num_threads", "tf32_matmul", "tf32_cudnn",
              "cudnn_benchmark", "deterministic", "hostname", "start_time"]
SUMMARY_COLUMNS = ["workload", "backbone", "estimator", "variant", "params", "cells", "status",
                   "hyper_ms", "hyper_iqr_ms", "step_ms", "peak_mb", "graph_mb", "gflops",
                   "time_x_plain", "mem_x_plain", "flops_x_plain",
                   "time_x_ref", "mem_x_ref", "flops_x_ref", "reference",
                   "fid_cos_1step", "fid_cos_long", "acc_mean", "acc_ci95", "n_seeds", "timing_shared"]
DEFAULT_REFERENCE = "unroll:T=1"


# ---------------------------------------------------------------- the reference estimator

@dataclass(frozen=True)
class Reference:
    """`NAME[:key=value,...]`: the first variant of estimator NAME whose parameters include
    every key=value (values compared as text)."""
    name: str
    params: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> "Reference":
        name, _, rest = text.partition(":")
        pairs = []
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--reference {text!r}: expected NAME or NAME:key=value,... "
                                  "(e.g. unroll:T=1)")
            pairs.append((key.strip(), value.strip()))
        if not name.strip():
            raise ConfigError(f"--reference {text!r}: no estimator name (e.g. unroll:T=1)")
        return cls(name.strip(), tuple(pairs))

    def matches(self, estimator: str, params: dict[str, Any]) -> bool:
        return estimator == self.name and all(str(params.get(k)) == v for k, v in self.params)

    def __str__(self) -> str:
        return self.name + ("(" + ", ".join(f"{k}={v}" for k, v in self.params) + ")" if self.params else "")


# ---------------------------------------------------------------- preparing the rows

def _labels(names: pd.Series, params: list[dict[str, Any]]) -> pd.Series:
    """`name(key=value,...)` naming only the parameters that differ between the rows of that
    name: `unroll(backend=func)`, or just `evograd` when there is one variant."""
    labels = []
    for name, p in zip(names, params):
        others = [q for n, q in zip(names, params) if n == name]
        keys = [k for k in p if len({json.dumps(q.get(k), sort_keys=True) for q in others}) > 1]
        labels.append(f"{name}({','.join(f'{k}={p[k]}' for k in keys)})" if keys else name)
    return pd.Series(labels, index=names.index, dtype=object)


def variant_labels(df: pd.DataFrame) -> pd.Series:
    return _labels(df["estimator"], [estimator_params(p) for p in df["params"]])


def workload_labels(df: pd.DataFrame) -> pd.Series:
    """`mwn(batch_size=64)` when a run has several settings of a workload, so tables and
    figures never pool them."""
    return _labels(df["workload"], [workload_params(p) for p in df["params"]])


def _depth(backbone: str) -> float:
    m = re.search(r"(\d+)$", str(backbone))
    return float(m.group(1)) if m else math.nan


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns as numbers, plus the derived columns every table and figure uses."""
    out = df.copy()
    for col in NUMERIC:
        out[col] = pd.to_numeric(out[col], errors="coerce")
    out["variant"] = variant_labels(out)
    out["workload_name"] = out["workload"]
    out["workload"] = workload_labels(out)
    out["depth"] = out["backbone"].map(_depth)
    out["hyper_ms"] = out["hyper_time_s"] * 1000
    out["hyper_iqr_ms"] = out["hyper_time_iqr_s"] * 1000
    out["step_ms"] = out["step_time_s"] * 1000
    cuda = out["device_type"].astype(str) == "cuda"
    out["peak_mb"] = out["peak_alloc_bytes"].where(cuda, out["peak_rss_delta_bytes"]) / 2 ** 20
    out["graph_mb"] = out["graph_bytes"] / 2 ** 20
    out["gflops"] = out["hyper_flops"] / 1e9
    # Synthetic data, or no meta-training (train_steps 0), measures cost only: the accuracy
    # of an untrained model or of random labels means nothing and is not reported.
    out["synthetic"] = out["synthetic"].astype(str).str.lower().isin(["true", "1", "1.0"])
    cost_only = out["synthetic"] | (pd.to_numeric(out["train_steps"], errors="coerce") == 0)
    out.loc[cost_only, "test_accuracy"] = math.nan
    # Timings taken while other cells ran on the same host (--jobs, Ray) are flagged.
    out["timing_shared"] = pd.to_numeric(out["shared_machine_cells"], errors="coerce").fillna(0) > 0
    return out


def _t95(n: int) -> float:
    from scipy.stats import t
    return float(t.ppf(0.975, n - 1))


def _status(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def summary(prepared: pd.DataFrame, reference: Reference) -> pd.DataFrame:
    """One row per workload, backbone and estimator variant (seeds pooled): cost from the
    cells that finished, accuracy as mean and 95% CI half-width over seeds."""
    rows = []
    keys = ["workload", "backbone", "variant"]
    for (workload, backbone, variant), g in prepared.groupby(keys, sort=False):
        ok = g[g["status"] == "ok"]
        acc = ok["test_accuracy"].dropna()
        n = len(acc)
        row = {"workload": workload, "backbone": backbone, "estimator": g["estimator"].iloc[0],
               "variant": variant,
               "params": ", ".join(f"{k}={v}" for k, v in estimator_params(g["params"].iloc[0]).items()),
               "cells": len(g), "status": _status(g["status"]),
               "acc_mean": acc.mean() if n else math.nan,
               "acc_ci95": _t95(n) * acc.std() / math.sqrt(n) if n > 1 else math.nan, "n_seeds": n,
               "timing_shared": int(ok["timing_shared"].sum())}
        for col in ("hyper_ms", "hyper_iqr_ms", "step_ms", "peak_mb", "graph_mb", "gflops",
                    "time_x_plain", "mem_x_plain", "flops_x_plain", "fid_cos_1step", "fid_cos_long"):
            row[col] = ok[col].mean() if len(ok) else math.nan
        rows.append(row)
    table = pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c not in
                                        ("time_x_ref", "mem_x_ref", "flops_x_ref", "reference")])
    for col in ("time_x_ref", "mem_x_ref", "flops_x_ref"):
        table[col] = math.nan
    table["reference"] = ""
    for (workload, backbone), g in table.groupby(["workload", "backbone"], sort=False):
        ref = next((r for _, r in g.iterrows()
                    if r["status"] == "ok" and reference.matches(
                        r["estimator"], _params_of(prepared, workload, backbone, r["variant"]))), None)
        if ref is None:
            continue
        for col, base in (("time_x_ref", "hyper_ms"), ("mem_x_ref", "peak_mb"), ("flops_x_ref", "gflops")):
            table.loc[g.index, col] = g[base] / ref[base] if ref[base] else math.nan
        table.loc[g.index, "reference"] = ref["variant"]
    return table[SUMMARY_COLUMNS]


def _params_of(prepared: pd.DataFrame, workload: str, backbone: str, variant: str) -> dict[str, Any]:
    row = prepared[(prepared["workload"] == workload) & (prepared["backbone"] == backbone)
                   & (prepared["variant"] == variant)].iloc[0]
    return estimator_params(row["params"])


# ---------------------------------------------------------------- HTML

def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:,.0f}"
    return _e(v)


def _accuracy(r: pd.Series) -> str:
    if not r["n_seeds"]:
        return ""
    text = f"{100 * r['acc_mean']:.2f}%"
    if r["n_seeds"] > 1:
        text += f" ± {100 * r['acc_ci95']:.2f} (n={r['n_seeds']})"
    return text


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(f"<tr class='{_e(c)}'>" + "".join(f"<td>{v}</td>" for v in r) + "</tr>"
                   for r, c in zip(rows, classes or [""] * len(rows)))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cost_tables(table: pd.DataFrame, reference: Reference) -> str:
    parts = []
    headers = ["estimator", "status", "hyper-step ms", "time x plain", "memory x plain", "FLOPs x plain",
               "time x ref", "memory x ref", "FLOPs x ref", "peak MB", "GFLOPs", "fidelity cos (long)",
               "test accuracy"]
    for (workload, backbone), g in table.groupby(["workload", "backbone"], sort=False):
        ref = next((v for v in g["reference"] if v), "")
        note = (f"reference: {_e(ref)}" if ref else
                f"no finished {_e(reference)} cell here, so no x ref columns")
        rows = [[_e(r["variant"]), _e(r["status"]) + (" &dagger;" if r["timing_shared"] else ""),
                 _num(r["hyper_ms"]), _num(r["time_x_plain"]),
                 _num(r["mem_x_plain"]), _num(r["flops_x_plain"]), _num(r["time_x_ref"]),
                 _num(r["mem_x_ref"]), _num(r["flops_x_ref"]), _num(r["peak_mb"]), _num(r["gflops"]),
                 _num(r["fid_cos_long"]), _accuracy(r)] for _, r in g.iterrows()]
        classes = ["ok" if r["status"] == "ok" else "failed" for _, r in g.iterrows()]
        if g["timing_shared"].any():
            note += ("; &dagger;: timings taken while other cells shared the machine (--jobs or Ray): "
                     "read them as rough")
        parts.append(f"<h3>{_e(workload)} / {_e(backbone)}</h3><p class='note'>{note}</p>"
                     + _table(headers, rows, classes))
    return "".join(parts)


def _at_a_glance(table: pd.DataFrame) -> str:
    """Per workload and backbone: the most accurate estimator and the accuracy-time front."""
    items = []
    for (workload, backbone), g in table.groupby(["workload", "backbone"], sort=False):
        ok = g[(g["status"] == "ok") & g["acc_mean"].notna() & g["hyper_ms"].notna()]
        learners = g[(g["status"] == "ok") & (g["flops_x_plain"] > 0)]  # not `plain`
        if ok.empty and not learners.empty:  # cost only: the cheapest hypergradients
            fast, small = (learners.loc[learners[c].idxmin()] for c in ("hyper_ms", "peak_mb"))
            items.append(f"<li><b>{_e(workload)} / {_e(backbone)}</b> (cost only): fastest "
                         f"{_e(fast['variant'])} ({_num(fast['time_x_plain'])}x plain, "
                         f"{_num(fast['hyper_ms'])} ms); smallest {_e(small['variant'])} "
                         f"({_num(small['mem_x_plain'])}x plain, {_num(small['peak_mb'])} MB)</li>")
        if ok.empty:
            continue
        best = ok.loc[ok["acc_mean"].idxmax()]
        front = figures.pareto_front(ok["hyper_ms"], ok["acc_mean"])
        path = " &rarr; ".join(f"{_e(ok.loc[i, 'variant'])} ({100 * ok.loc[i, 'acc_mean']:.1f}%, "
                               f"{_num(ok.loc[i, 'time_x_plain'])}x plain)" for i in front)
        items.append(f"<li><b>{_e(workload)} / {_e(backbone)}</b>: most accurate "
                     f"{_e(best['variant'])} ({100 * best['acc_mean']:.2f}%); accuracy-time front: {path}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


def _failures(prepared: pd.DataFrame) -> str:
    bad = prepared[prepared["status"] != "ok"]
    if bad.empty:
        return "<p>Every cell finished ok.</p>"
    rows = [[_e(r["workload"]), _e(r["backbone"]), _e(r["variant"]), _e(r["seed"]), _e(r["status"]),
             _e(r["error"])] for _, r in bad.iterrows()]
    return _table(["workload", "backbone", "estimator", "seed", "status", "error"], rows,
                  ["failed"] * len(rows))


def _environment(prepared: pd.DataFrame, extra: dict[str, Any]) -> str:
    facts = {}
    for col in PROVENANCE:
        if col in prepared:
            values = sorted(dict.fromkeys(str(v) for v in prepared[col].dropna()))
            if col == "start_time" and len(values) > 1:
                facts["cells started"] = f"{values[0]} to {values[-1]}"
            elif values:
                facts[col] = "; ".join(values)
    facts.update(extra)
    return _table(["fact", "value"], [[_e(k), _e(v)] for k, v in facts.items()])


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:right;font-size:13px}td:first-child,th:first-child{text-align:left}
tr.failed{background:#fde8e8}p.note{color:#555;font-size:13px;margin:.2em 0}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:13px}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"""


@dataclass
class Source:
    """What a report is made from: rows, training curves, a title, the suite text and the
    memory budgets of the frontier."""
    rows: pd.DataFrame
    curves: pd.DataFrame
    title: str
    suite_text: str | None
    environment: dict[str, Any]
    budgets: list[int] = field(default_factory=list)


def _suite_budgets(text: str | None) -> list[int]:
    """The suite's `memory_frontier` sizes (validated when the suite ran)."""
    import yaml

    try:
        raw = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return []
    return parse_sizes(raw.get("memory_frontier"), "suite.yaml: memory_frontier") if isinstance(raw, dict) else []


def load_run(path: Path) -> Source:
    """A run folder (results.csv, curves.csv, suite.yaml) or a pytest-benchmark JSON file."""
    if path.is_file() and path.suffix == ".json":
        from harness.benchjson import load_benchmark_json
        return load_benchmark_json(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a run folder or a pytest-benchmark .json file")
    rows = read_results(path)
    if rows is None:
        raise ConfigError(f"{path}: no results.csv here; give the folder `hgbench run` wrote "
                          "(e.g. reports/latest)")
    suite = path / "suite.yaml"
    name = str(rows["suite"].iloc[0]) if len(rows) else path.name
    text = suite.read_text(errors="replace") if suite.exists() else None
    return Source(rows, read_curves(path), f"hgbench report: {name}", text, {}, _suite_budgets(text))


FIGURES: list[tuple[str, str, Callable[..., Any], str]] = [
    # (file name, heading, function, which data it takes)
    ("cost_by_backbone", "Time and peak memory per estimator", figures.cost_bars, "ok"),
    ("cost_vs_depth", "Cost scaling with depth", figures.depth_scaling, "ok"),
    ("accuracy_vs_cost", "Accuracy against cost", figures.accuracy_vs_cost, "summary"),
    ("fidelity_vs_cost", "Hypergradient fidelity against cost", figures.fidelity_vs_cost, "ok"),
    ("training_curves", "Training curves", figures.training_curves, "curves"),
    ("memory_frontier", "Memory frontier: what fits", figures.memory_frontier, "frontier"),
]


def _frontier_section(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    parts = ["<h2>Memory frontier</h2><p class='note'>For each budget, each estimator's deepest "
             "backbone, then largest training batch (samples), whose measured hyper-step peak fits "
             "(peak MB as in the tables). &mdash;: nothing measured fits.</p>"]
    budgets = sorted(table["budget_bytes"].unique())
    for workload, g in table.groupby("workload", sort=False):
        rows = []
        for variant, v in g.groupby("variant", sort=False):
            by_budget = v.set_index("budget_bytes")
            cells = []
            for b in budgets:
                r = by_budget.loc[b]
                cells.append("&mdash;" if r["backbone"] is None or pd.isna(r["backbone"]) else
                             f"{_e(r['backbone'])}, batch {_num(r['batch_size'])} ({_num(r['peak_mb'])} MB)")
            rows.append([_e(variant)] + cells)
        parts.append(f"<h3>{_e(workload)}</h3>" + _table(["estimator"] + [_e(format_size(b)) for b in budgets], rows))
    return "".join(parts)


def write_report(source: Source, out_dir: Path, reference: Reference | None = None,
                 budgets: list[int] | None = None) -> Path:
    """report.html, summary.csv (and frontier.csv with budgets) and figures/NAME.{png,pdf}
    in `out_dir`. `budgets` replaces the suite's memory_frontier sizes."""
    reference = reference or Reference.parse(DEFAULT_REFERENCE)
    budgets = budgets or source.budgets
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "figures").mkdir(exist_ok=True)
    prepared = prepare(source.rows)
    table = summary(prepared, reference)
    _atomic(out_dir / "summary.csv", lambda p: table.to_csv(p, index=False))

    curves = source.curves.copy()
    if not curves.empty:
        key = ["workload", "backbone", "estimator", "params", "seed"]
        cell_keys = prepared.assign(workload=prepared["workload_name"])[key]
        cell_keys = cell_keys.astype({"seed": "Int64"}).astype(str).itertuples(index=False, name=None)
        labels_of = dict(zip(cell_keys, zip(prepared["workload"], prepared["variant"])))
        curve_keys = curves[key].astype({"seed": "Int64"}).astype(str).itertuples(index=False, name=None)
        labels = [labels_of.get(k, (k[0], k[2])) for k in curve_keys]
        curves["workload"] = [w for w, _ in labels]
        curves["variant"] = [v for _, v in labels]
        for col in ("step", "val_loss", "test_accuracy"):
            curves[col] = pd.to_numeric(curves[col], errors="coerce")
    front = frontier(prepared, budgets)
    if not front.empty:
        _atomic(out_dir / "frontier.csv", lambda p: front.to_csv(p, index=False))
    data = {"ok": prepared[prepared["status"] == "ok"], "summary": table, "curves": curves, "frontier": front}

    sections = []
    for name, heading, draw, kind in FIGURES:
        fig = draw(data[kind])
        if fig is None:
            continue
        for ext in ("png", "pdf"):
            fig.savefig(out_dir / "figures" / f"{name}.{ext}", dpi=150)
        svg = figures.to_svg(fig)
        figures.close(fig)
        doc = (draw.__doc__ or "").strip().split("\n\n")[0]
        sections.append(f"<h3>{_e(heading)}</h3><figure id='fig-{name}'>{svg}"
                        f"<figcaption>{_e(' '.join(doc.split()))} Files: figures/{name}.png, "
                        f"figures/{name}.pdf.</figcaption></figure>")

    counts = prepared["status"].value_counts()
    status_line = ", ".join(f"{n} {_e(s)}" for s, n in counts.items())
    suite = (f"<h2>Suite file</h2><pre>{_e(source.suite_text)}</pre>" if source.suite_text else "")
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(source.title)}</title>
<style>{STYLE}</style></head><body>
<h1>{_e(source.title)}</h1>
<p>{len(prepared)} cells: {status_line}. Generated {generated}. Tables: summary.csv; every
measured column: results.csv.</p>
<h2>At a glance</h2>{_at_a_glance(table)}
<h2>Cost and accuracy per backbone</h2>
<p class="note">hyper-step ms: median time of one hypergradient computation and hyper-update.
<i>x plain</i>: the hyper-step's time, peak memory and FLOPs over a plain forward and
backward of the same batch. <i>x ref</i>: over the reference estimator's ({_e(reference)}).
Peak MB: on CUDA the allocator's peak, on the CPU the rise in resident memory. Accuracy:
mean over seeds ± 95% confidence half-width (Student t); none for synthetic data or without
meta-training (train_steps 0), which measure cost only. Failed cells are shown with their status, in red.</p>
{_cost_tables(table, reference)}
{_frontier_section(front)}
<h2>Cells that did not finish</h2>{_failures(prepared)}
<h2>Figures</h2>{''.join(sections) or '<p>No figure applies to these rows.</p>'}
<h2>Environment</h2>{_environment(prepared, source.environment)}
{suite}
</body></html>"""
    path = out_dir / "report.html"
    _atomic(path, lambda p: p.write_text(page, encoding="utf-8"))
    return path
