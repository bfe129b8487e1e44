"""The report page: every table and section as HTML. Every string from a suite or results
file is escaped; the page loads nothing from anywhere."""
from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from harness.core.schema import (ACCURACY_MEANS, FIDELITY_REFERENCES, FIDELITY_TARGET_COS, GROWTH_MIN_BYTES,
                                 GROWTH_MIN_FRACTION, PROVENANCE)
from harness.core.units import format_size
from harness.report import verdict
from harness.report.predicted import against, error_summary, predicted_frontier
from harness.report.tables import PASS_LEGEND, Reference


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
               "time x ref", "memory x ref", "FLOPs x ref", "peak MB", "iteration memory x plain", "GFLOPs",
               "passes", "FLOP efficiency", "test accuracy"]
    for (workload, backbone), g in table.groupby(["workload_label", "backbone"], sort=False):
        ref = next((v for v in g["reference"] if v), "")
        note = (f"reference: {_e(ref)}" if ref else
                f"no finished {_e(reference)} cell here, so no x ref columns")
        means = ACCURACY_MEANS.get(g["workload"].iloc[0])
        if means:
            note += f"; test accuracy here is the {_e(means)}"
        rows = []
        dashed = False
        for _, r in g.iterrows():
            # (the hyper-step's own columns; a dash where it takes none)
            show = (lambda c: "&mdash;") if _no_hyper_step(r) else (lambda c: _num(r[c]))
            dashed |= _no_hyper_step(r)
            status = _e(r["status"]) + (" &dagger;" if r["timing_shared"] else "")
            if r["memory_grows"] is True:
                status += "<br><b class='grows'>memory grows per step</b>"
            rows.append([_e(r["variant"]), status,
                         *map(show, ("hyper_ms", "time_x_plain", "mem_x_plain", "flops_x_plain", "time_x_ref",
                                     "mem_x_ref", "flops_x_ref", "peak_mb")),
                         _num(r["iter_mem_x_plain"]), show("gflops"), _e(r["passes"]) or "&ndash;",
                         _num(r["flop_efficiency"]), _accuracy(r)])
        if g["passes"].astype(bool).any():
            note += "; " + _e(PASS_LEGEND)
        if g["memory_grows"].map(lambda v: v is True).any():
            note += ("; <b>memory grows per step</b>: after warm-up, what the process holds still rose by "
                     f"more than {GROWTH_MIN_BYTES // 1024} KiB (and {GROWTH_MIN_FRACTION:.0%} of the hyper-step's "
                     "peak) per meta-iteration, at the median "
                     "over 4 meta-iterations of the memory pass: something (a graph, optimiser state) is kept by every step")
        if dashed:
            note += "; &mdash;: takes no hyper-step (its hypergradient does no work: no FLOPs, no graph)"
        steps = g[(g["status"] == "ok") & ~g.apply(_no_hyper_step, axis=1)]
        if not steps.empty and (steps["gflops"] == 0).all():
            note += ("; every hyper-step here is scalar arithmetic, which the FLOP counter (tensor operations "
                     "such as matrix products and convolutions) does not count, and whose memory is below "
                     "the allocator's resolution: time is Python overhead, and what this workload measures "
                     "is fidelity against its closed form (the fidelity section)")
        classes = ["ok" if r["status"] == "ok" else "failed" for _, r in g.iterrows()]
        if g["timing_shared"].any():
            note += ("; &dagger;: timings taken while other cells shared the machine (--jobs or Ray): "
                     "read them as rough")
        parts.append(f"<h3>{_e(workload)} / {_e(backbone)}</h3><p class='note'>{note}</p>"
                     + _table(headers, rows, classes))
    return "".join(parts)


def _no_hyper_step(r: pd.Series) -> bool:
    """`plain` and its like: a hyper-step that computes nothing (no FLOPs and no graph; its
    timed call is overhead). toy1d's estimators do count: scalar arithmetic has no FLOPs the
    counter sees, but they build a graph."""
    return r["status"] == "ok" and r["gflops"] == 0 and not (r["graph_mb"] > 0)


def _fidelity_tables(table: pd.DataFrame) -> str:
    """Per workload and backbone: every estimator's fidelity against every reference measured,
    and for stochastic estimators one draw beside the mean of the draws."""
    parts = []
    for (workload, backbone), g in table.groupby(["workload_label", "backbone"], sort=False):
        g = g[g[[f"fid_cos_{r}" for r in FIDELITY_REFERENCES]].notna().any(axis=1)]
        if g.empty:
            continue
        refs = [r for r in FIDELITY_REFERENCES if g[f"fid_cos_{r}"].notna().any()]
        drawn = g["fid_meancos_" + refs[0]].notna().any()
        headers, columns = ["estimator", "draws"], []
        for r in refs:
            headers.append(f"cos vs {r}" + (" (one draw)" if drawn else ""))
            columns.append(f"fid_cos_{r}")
            if drawn:
                headers.append(f"cos vs {r} (mean of draws)")
                columns.append(f"fid_meancos_{r}")
            headers += [f"relerr vs {r}", f"sign vs {r}"]
            columns += [f"fid_relerr_{r}", f"fid_sign_{r}"]
        if drawn:
            headers += ["relative variance", f"draws for cos {FIDELITY_TARGET_COS:g}"]
        rows = []
        for _, r in g.iterrows():
            row = [_e(r["variant"]), _num(r["fid_draws"]), *(_num(r[c]) for c in columns)]
            if drawn:
                row += [_num(r["fid_relvar"]), _draws_to_target(r)]
            rows.append(row)
        long_T = sorted({int(t) for t in g["fid_reference_T"].dropna()})
        words = "; ".join(f"<b>{r}</b>: {_e(FIDELITY_REFERENCES[r])}" for r in refs).replace(
            "fid_reference_T", "/".join(map(str, long_T)) or "reference_T")
        where = {"own": "each cell's own meta-training", "shared": "plain training with the hyperparameters "
                 "held, the same weights and batches for every estimator (fidelity.trajectory: shared)",
                 "start": "the initial weights, the same weights and batches for every cell of a workload and "
                 "seed (fidelity.trajectory: start)"}
        places = "; ".join(where.get(t, t) for t in dict.fromkeys(g["fid_trajectory"]) if isinstance(t, str) and t)
        parts.append(f"<h3>{_e(workload)} / {_e(backbone)}</h3>" + _fidelity_matrix(g, refs, long_T)
                     + f"<details><summary>every fidelity figure</summary><p class='note'>Checkpoints on "
                     f"{_e(places)}. References: {words}.</p>" + _table(headers, rows) + "</details>")
    if not parts:
        return ""
    return ("<h2>Hypergradient fidelity</h2><p class='note'>Per workload, one cosine per estimator and "
            "reference (for stochastic estimators the cosine of the mean of their draws), green near 1, red "
            "below 0; every figure below it, folded. Every figure names its reference, each computed "
            "at the same checkpoints on the same weights and batches as the estimator. Means over checkpoints "
            "and seeds. <i>cos</i>: cosine; <i>relerr</i>: |g - ref| / |ref|; <i>sign</i>: the fraction of "
            "hyperparameters whose sign agrees. For estimators drawn several times per checkpoint (stochastic "
            "ones): <i>one draw</i> is what one hyper-step gets, <i>mean of draws</i> the cosine of the mean "
            "of a checkpoint's draws (its bias in direction); <i>relative variance</i>: the draws' variance "
            "over the squared norm of their mean (a mean of n draws has 1/n of it); <i>draws for cos "
            f"{FIDELITY_TARGET_COS:g}</i>: how many draws the mean needs to reach it with the reference it "
            "matches best (&gt; N: not within the N drawn).</p>" + "".join(parts))


def _shade(cos: float) -> str:
    """A cell colour for a cosine: green near 1, white at 0, red at -1."""
    if pd.isna(cos):
        return ""
    c = max(-1.0, min(1.0, float(cos)))
    rgb = (255 - int(120 * c), 255, 255 - int(120 * c)) if c >= 0 else (255, 255 + int(120 * c), 255 + int(120 * c))
    return f" style='background:rgb{rgb}'"


def _fidelity_matrix(g: pd.DataFrame, refs: list[str], long_T: list[int]) -> str:
    """Estimator x reference: one cosine each (the mean of draws for a stochastic estimator,
    its direction; else its one draw), coloured."""
    head = "".join(f"<th>{_e(reference_name(r, '/'.join(map(str, long_T))))}</th>" for r in refs)
    body = []
    for _, r in g.iterrows():
        cells = []
        for ref in refs:
            cos = cosine_of(r, ref)
            cells.append(f"<td{_shade(cos)}>{_num(cos, 2)}</td>")
        body.append(f"<tr><td>{_e(r['variant'])}</td>{''.join(cells)}</tr>")
    return (f"<table class='matrix'><thead><tr><th>cosine with</th>{head}</tr></thead><tbody>{''.join(body)}"
            "</tbody></table>")


def _draws_to_target(r: pd.Series) -> str:
    if not r["fid_best_ref"]:
        return ""
    n = r["fid_draws_to_target"]
    count = f"&gt; {_num(r['fid_draws'])}" if pd.isna(n) else _num(n)
    return f"{count} (vs {_e(r['fid_best_ref'])})"


GLANCE_REFERENCES = ("exact", "long", "1step")  # the reference "at a glance" names, first measured wins


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _accuracy_verdict(rows: pd.DataFrame, means: str | None) -> list[str]:
    """Accuracy with its uncertainty: each variant's mean +- 95% t interval over seeds, then
    the paired differences (shared seeds) that exclude zero; never a single-seed ranking."""
    table = verdict.by_seed(rows)
    if table.empty:
        return []
    unit = "F1" if means else "accuracy"
    scale = (lambda v: f"{v:.4f}") if means else (lambda v: f"{100 * v:.1f}%")
    parts = []
    for variant in table.columns:
        mean, half = verdict.mean_interval(table[variant])
        n = int(table[variant].notna().sum())
        parts.append(f"{_e(variant)} {scale(mean)}" + (f" &plusmn; {scale(half).rstrip('%')}" if n >= verdict.MIN_SEEDS
                                                        else ""))
    n_seeds = int(table.notna().sum(axis=1).gt(0).sum())
    lines = [f"{unit} (mean &plusmn; 95% t interval over {n_seeds} seed{'s' if n_seeds != 1 else ''}): "
             + ", ".join(parts)]
    pairs = verdict.all_pairs(table)
    shown = (lambda d: f"{d.mean:+.4f} &plusmn; {d.half:.4f}") if means else (
        lambda d: f"{_points(d.mean)} &plusmn; {100 * d.half:.1f} points")
    most = max((d.n for d in pairs), default=0)
    resolved = [d for d in pairs if d.resolved]
    if "plain" in table.columns:
        beat = [d for d in resolved if d.b == "plain"]
        worse = [d for d in resolved if d.a == "plain"]
        text = "; ".join([*(f"{_e(d.a)} beats plain by {shown(d)}" for d in beat),
                          *(f"plain beats {_e(d.b)} by {shown(d)}" for d in worse)])
        lines.append("against plain (paired over shared seeds, 95% t interval of the difference): "
                     + (text or f"no difference resolved at {most} seed{'s' if most != 1 else ''}"))
    between = [d for d in resolved if "plain" not in (d.a, d.b)]
    learners = [c for c in table.columns if c != "plain"]
    if len(learners) > 1:
        lines.append("between estimators: " + ("; ".join(f"{_e(d.a)} beats {_e(d.b)} by {shown(d)}" for d in between)
                                               or f"no difference resolved at {most} seed{'s' if most != 1 else ''}"))
    return lines


def _cost_line(g: pd.DataFrame) -> str:
    """Each estimator's time and memory over the reference's (or plain's when there is none)."""
    learners = g[(g["status"] == "ok") & ~g.apply(_no_hyper_step, axis=1)]
    if learners.empty:
        return ""
    ref = next((v for v in g["reference"] if v), "")
    cols, base = (("time_x_ref", "mem_x_ref"), ref) if ref else (("time_x_plain", "mem_x_plain"), "a plain step")
    ratio = lambda v: "?" if pd.isna(v) else f"{v:.2f}"
    items = [f"{_e(r['variant'])} {ratio(r[cols[0]])}x / {ratio(r[cols[1]])}x"
             for _, r in learners.iterrows() if not (ref and r["variant"] == ref)]
    return f"cost (time / peak memory) over {_e(base)}: " + ", ".join(items) if items else ""


def cosine_of(r: pd.Series, ref: str) -> float:
    """A row's one cosine with `ref`: the mean of draws for a stochastic estimator (its
    direction), else its one draw; NaN when not measured."""
    for col in (f"fid_meancos_{ref}", f"fid_cos_{ref}"):
        if col in r and pd.notna(r[col]):
            return float(r[col])
    return math.nan


def reference_name(ref: str, T: object = "") -> str:
    """A fidelity reference in words (`long` with its T when known)."""
    if ref == "long":
        return f"unroll T={T}" if T not in ("", None) and not pd.isna(T) else "the long unroll"
    return {"exact": "the closed form", "1step": "unroll T=1", "small": "small (first order in lr)"}.get(ref, ref)


def fidelity_number(r: pd.Series) -> tuple[str, float] | None:
    """(reference, cosine): the first of GLANCE_REFERENCES measured for this row."""
    for ref in GLANCE_REFERENCES:
        if not math.isnan(cos := cosine_of(r, ref)):
            return ref, cos
    return None


def _fidelity_line(g: pd.DataFrame) -> str:
    numbers = [(r["variant"], fidelity_number(r), r["fid_reference_T"]) for _, r in g.iterrows()]
    undefined = [r["variant"] for _, r in g.iterrows() if fidelity_number(r) is None
                 and any(pd.notna(r.get(f"fid_relerr_{ref}")) for ref in GLANCE_REFERENCES)]
    numbers = [(v, f, t) for v, f, t in numbers if f is not None]
    if not numbers and not undefined:
        return ""
    by_ref: dict[str, list[str]] = {}
    for v, (ref, cos), T in numbers:
        name = reference_name(ref, int(T) if pd.notna(T) else "")
        by_ref.setdefault(name, []).append(f"{_e(v)} {cos:.2f}")
    text = "; ".join(f"against {_e(name)}: {', '.join(items)}" for name, items in by_ref.items())
    if undefined:
        text += ("; " if text else "") + ", ".join(map(_e, undefined)) + ": no cosine (a zero hypergradient here)"
    return "fidelity (cosine; mean of draws where drawn): " + text


def _at_a_glance(table: pd.DataFrame, prepared: pd.DataFrame) -> str:
    """Per workload and backbone: what the accuracy resolves (with its interval, never a
    single-seed ranking), each estimator's cost over the reference, its fidelity in one
    number with the reference named."""
    items = []
    for (workload, backbone), g in table.groupby(["workload_label", "backbone"], sort=False):
        rows = prepared[(prepared["workload_label"] == workload) & (prepared["backbone"] == backbone)]
        lines = _accuracy_verdict(rows, ACCURACY_MEANS.get(g["workload"].iloc[0]))
        if not lines:
            trained = pd.to_numeric(rows["train_steps"], errors="coerce").fillna(0).gt(0) & ~rows["synthetic"]
            lines = ["cost and fidelity only: " + ("synthetic data" if rows["synthetic"].any() else
                                                   "these cells do not meta-train (train_steps 0)")
                     + ", so no accuracy is ranked (the suite file at the end of this page says why)"
                     if not trained.any() else "no finished cell with an accuracy"]
        lines += [x for x in (_cost_line(g), _fidelity_line(g)) if x]
        items.append(f"<li><b>{_e(workload)} / {_e(backbone)}</b><br>" + "<br>".join(lines) + "</li>")
    return f"<ul class='glance'>{''.join(items)}</ul>" if items else ""


VERDICT_CLASS = {"reproduced": "ok", "not reproduced": "failed", "not measured": "unmeasured"}


def _claims_section(claims: pd.DataFrame) -> str:
    """Every registered claim: reproduced, not reproduced or not measured by this run."""
    if claims.empty:
        return ""
    rows = []
    for _, c in claims.iterrows():
        measured = "" if pd.isna(c["measured"]) else _num(c["measured"])
        if measured and pd.notna(c["interval_low"]) and c["interval_high"] != c["interval_low"]:
            measured += f" [{_num(c['interval_low'])}, {_num(c['interval_high'])}]"
        cells = (f"<details><summary>{int(c['n'])} cell{'s' if c['n'] != 1 else ''}</summary>"
                 f"{'<br>'.join(_e(x) for x in str(c['cells']).split('; '))}</details>" if c["cells"] else "")
        rows.append([f"<b>{_e(c['verdict'])}</b>", _e(c["statement"]), _e(c["source"]), _e(c["quantity"]),
                     _e(c["published"]), _e(c["comparison"]), measured, cells + _e(c["note"])])
    counts = claims["verdict"].value_counts()
    line = ", ".join(f"{counts.get(v, 0)} {v}" for v in ("reproduced", "not reproduced", "not measured"))
    return ("<h2>Claims</h2><p class='note'>Published claims checked against this run's rows (claims.csv): "
            f"{line}. <i>measured</i>: the value, then [the interval: 95% t over seeds for accuracies and "
            "gains, the range over cells for cost ratios]. A claim whose rows this run lacks is <i>not "
            "measured</i>; this run's sizes are a CPU's, so a cost ratio is this size's, not the paper's.</p>"
            + _table(["verdict", "claim", "source", "quantity", "published", "reproduced when", "measured",
                      "cells"], rows, [VERDICT_CLASS[v] for v in claims["verdict"]]))


def _failures(prepared: pd.DataFrame) -> str:
    bad = prepared[prepared["status"] != "ok"]
    if bad.empty:
        return "<p>Every cell finished ok.</p>"
    rows = [[_e(r["workload_label"]), _e(r["backbone"]), _e(r["variant"]), _e(r["seed"]), _e(r["status"]),
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
tr.failed{background:#fde8e8}tr.unmeasured{color:#777}table.matrix td{min-width:5em}
ul.glance li{margin:.4em 0}details summary{cursor:pointer;color:#555;font-size:13px}p.note{color:#555;font-size:13px;margin:.2em 0}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:13px}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"""


def _frontier_section(table: pd.DataFrame, heading: str = "Memory frontier",
                      what: str = "measured") -> str:
    if table.empty:
        return ""
    parts = [f"<h2>{_e(heading)}</h2><p class='note'>For each budget, each estimator's largest model "
             "(the deepest ResNet; for transformers, the most parameters), then largest training batch "
             f"(samples), whose {what} hyper-step peak fits "
             "(peak MB as in the tables). &mdash;: nothing " + what + " fits.</p>"]
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


def _percent(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:+.1f}%"


def predicted_section(predicted: pd.DataFrame, measured: pd.DataFrame | None, budgets: list[int]) -> str:
    """`hgbench predict`'s rows: their errors against the same cells measured (where both
    exist), each cell's prediction, and the memory frontier from predictions."""
    ok = predicted[predicted["status"] == "ok"]
    device = ", ".join(dict.fromkeys(predicted["predicted_device"].astype(str)))
    notes = "; ".join(dict.fromkeys(predicted.get("predicted_note", pd.Series(dtype=str)).dropna().astype(str)))
    parts = [f"<h2>Predicted (fake tensors, none run)</h2><p class='note'>{len(predicted)} cells predicted for "
             f"{_e(device)} by <code>hgbench predict</code>: one meta-iteration under FakeTensorMode, each "
             f"output storage counted at its allocator footprint; {len(ok)} ok. {_e(notes)}.</p>"]
    joined = against(predicted, measured) if measured is not None and len(measured) else pd.DataFrame()
    if len(joined):
        summary = error_summary(joined)
        rows = [[_e(r["variant"]), _num(r["cells"]), *(_percent(r[c]).lstrip("+") for c in (
                    "peak_error_median", "peak_error_worst", "iter_peak_error_median", "iter_peak_error_worst")),
                 _num(r["time_ratio_median"]), _num(r["time_ratio_worst"])] for _, r in summary.iterrows()]
        parts.append("<h3>Predicted against measured</h3><p class='note'>The same cells, measured in this run on "
                     "the device predicted for: |predicted / measured - 1| of the hyper-step peak and of the "
                     "meta-iteration peak (median and worst over the cells), and predicted / measured time.</p>"
                     + _table(["estimator", "cells", "peak error median", "peak error worst",
                               "iteration peak error median", "iteration peak error worst", "time ratio median",
                               "time ratio worst"], rows))
        cells = [[_e(r["workload"]), _e(r["backbone"]), _e(r["variant"]),
                  _num(r["predicted_peak_bytes"] / 2 ** 20), _num(r["measured_peak_bytes"] / 2 ** 20),
                  _percent(r["peak_error"]), _percent(r["iter_peak_error"]), _num(r["time_ratio"])]
                 for _, r in joined.iterrows()]
        parts.append("<details><summary>every cell</summary>" + _table(
            ["workload", "backbone", "estimator", "predicted MB", "measured MB", "peak error", "iteration peak error",
             "time ratio"], cells) + "</details>")
    rows, classes = [], []
    for _, r in predicted.iterrows():
        failed = r["status"] != "ok"
        mb = (lambda c: "" if failed or pd.isna(r[c]) else _num(r[c] / 2 ** 20))
        rows.append([_e(r["workload"]), _e(r["backbone"]), _e(r["estimator"]),
                     mb("predicted_resident_bytes") if "predicted_resident_bytes" in r else "",
                     mb("predicted_peak_bytes"), mb("predicted_iter_peak_bytes"),
                     "" if failed or pd.isna(r["predicted_time_s"]) else _num(r["predicted_time_s"]),
                     _e(r["status"]) + (f": {_e(r['error'])}" if failed else "")])
        classes.append("failed" if failed else "ok")
    parts.append("<details><summary>every prediction</summary><p class='note'>Resident: what the device "
                 "holds when the hyper-step begins (weights, buffers, hyperparameters, optimiser state, the "
                 "data a workload keeps on the device); the peaks are rises above what was allocated before "
                 "the step. On CUDA the frontier and the errors count both.</p>" + _table(
        ["workload", "backbone", "estimator", "resident MB", "hyper-step peak MB", "meta-iteration peak MB",
         "time s", "status"], rows, classes) + "</details>")
    if budgets and len(ok):
        parts.append(_frontier_section(predicted_frontier(ok, budgets), "Memory frontier from predictions",
                                       "predicted"))
    return "".join(parts)


def predicted_page(predicted: pd.DataFrame, measured: pd.DataFrame | None, budgets: list[int], title: str) -> str:
    """`predicted.html`: the predicted section as a page of its own."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>"
            f"{predicted_section(predicted, measured, budgets)}</body></html>")


def _memory_methods(prepared: pd.DataFrame) -> str:
    """How the rows' peaks were measured (the `memory_method` column), in words."""
    methods = list(dict.fromkeys(str(m) for m in prepared.get("memory_method", pd.Series()).dropna()))
    return "; ".join(_e(m) for m in methods) if methods else (
        "on CUDA the allocator's peak, on the CPU the rise in resident memory")


def page(source, prepared: pd.DataFrame, table: pd.DataFrame, front: pd.DataFrame, reference: Reference,
         drawn: list[tuple[str, str, str, str]], claims: pd.DataFrame | None = None,
         budgets: list[int] | None = None) -> str:
    """The whole page. `drawn`: (file name, heading, SVG, caption) of each figure."""
    claims_html = _claims_section(claims) if claims is not None else ""
    predicted_html = ("" if source.predicted is None else
                      predicted_section(source.predicted, source.rows, budgets or []))
    sections = [f"<h3>{_e(heading)}</h3><figure id='fig-{name}'>{svg}"
                f"<figcaption>{_e(doc)} Files: figures/{name}.png, figures/{name}.pdf.</figcaption></figure>"
                for name, heading, svg, doc in drawn]
    counts = prepared["status"].value_counts()
    status_line = ", ".join(f"{n} {_e(s)}" for s, n in counts.items())
    suite = (f"<h2>Suite file</h2><pre>{_e(source.suite_text)}</pre>" if source.suite_text else "")
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(source.title)}</title>
<style>{STYLE}</style></head><body>
<h1>{_e(source.title)}</h1>
<p>{len(prepared)} cells: {status_line}. Generated {generated}. Tables: summary.csv; every
measured column: results.csv.</p>
<h2>At a glance</h2>{_at_a_glance(table, prepared)}
{claims_html}
<h2>Cost and accuracy per backbone</h2>
<p class="note">hyper-step ms: median time of one hypergradient computation and hyper-update.
<i>x plain</i>: the hyper-step's time, peak memory and FLOPs over a plain forward and
backward of the same batch. <i>x ref</i>: over the reference estimator's ({_e(reference)}).
Peak MB (MiB) of the hyper-step: {_memory_methods(prepared)}. <i>Iteration memory x plain</i>:
the peak of a whole meta-iteration (hyper-step and real step) over a real step alone.
<i>FLOP efficiency</i>: FLOP/s achieved by a meta-iteration over the plain step's, timed in
the same process (below 1: the estimator's work runs slower per FLOP). Accuracy:
mean over seeds ± 95% confidence half-width (Student t); none for synthetic data or without
meta-training (train_steps 0), which measure cost only. Failed cells are shown with their status, in red.</p>
{_cost_tables(table, reference)}
{_fidelity_tables(table)}
{_frontier_section(front)}
{predicted_html}
<h2>Cells that did not finish</h2>{_failures(prepared)}
<h2>Figures</h2>{''.join(sections) or '<p>No figure applies to these rows.</p>'}
<h2>Environment</h2>{_environment(prepared, source.environment)}
{suite}
</body></html>"""
