"""The report's analysis: results rows made comparable (labels, numbers, the peak that
counts) and pooled over seeds into one summary row per estimator variant, with cost as
multiples of a plain step and of a reference estimator."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.core.errors import ConfigError
from harness.report.verdict import t95
from harness.core.schema import (FIDELITY_METRICS, PASS_COLUMNS, SUMMARY_COLUMNS, estimator_params, peak_column,
                                 workload_params)

FIDELITY_NUMERIC = [*FIDELITY_METRICS, "fid_reference_T", "fid_draws", "fid_draws_to_target"]
NUMERIC = ["step_time_s", "step_time_iqr_s", "hyper_time_s", "hyper_time_iqr_s", "plain_time_s",
           "time_x_plain", "mem_x_plain", "flops_x_plain", "peak_rss_delta_bytes", "peak_alloc_bytes",
           "graph_bytes", "hyper_flops", "test_accuracy", "seed", "iter_mem_x_plain", "flop_efficiency",
           *FIDELITY_NUMERIC]
DEFAULT_REFERENCE = "unroll:T=1"


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


def _labels(names: pd.Series, params: list[dict[str, Any]]) -> pd.Series:
    """`name(key=value,...)` naming only the parameters that differ between the rows of that
    name: `unroll(backend=func)`, or just `evograd` when there is one variant. Linear in the
    rows: each value is serialised once, and the keys that vary are found once per name."""
    values: dict[Any, dict[str, set[str]]] = {}
    for name, p in zip(names, params):
        seen = values.setdefault(name, {})
        for k, v in p.items():
            seen.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    for name, p in zip(names, params):  # a row without the key reads as null, as q.get(k)
        for k, seen in values[name].items():
            if k not in p:
                seen.add("null")
    varying = {name: {k for k, vs in seen.items() if len(vs) > 1} for name, seen in values.items()}
    labels = []
    for name, p in zip(names, params):
        keys = [k for k in p if k in varying[name]]
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


def peak_bytes(rows: pd.DataFrame) -> pd.Series:
    """Each row's hyper-step peak, from the column `schema.peak_column` names for its device."""
    column = rows["device_type"].map(peak_column)
    return pd.Series([rows.at[i, c] for i, c in column.items()], index=rows.index, dtype=float)


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns as numbers, plus the derived columns every table and figure uses."""
    out = df.copy()
    for col in NUMERIC:
        out[col] = pd.to_numeric(out[col], errors="coerce")
    out["variant"] = variant_labels(out)
    out["workload_label"] = workload_labels(out)  # (`workload` stays the registry name)
    out["depth"] = out["backbone"].map(_depth)
    out["hyper_ms"] = out["hyper_time_s"] * 1000
    out["hyper_iqr_ms"] = out["hyper_time_iqr_s"] * 1000
    out["step_ms"] = out["step_time_s"] * 1000
    out["peak_mb"] = peak_bytes(out) / 2 ** 20
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


def _status(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{n} {s}" for s, n in counts.items())


# How the cost table writes a hyper-step's pass counts (PASS_COLUMNS), in that order.
PASS_LETTERS = {"passes_train_forwards": "T", "passes_val_forwards": "V", "passes_backwards": "B",
                "passes_double_backwards": "D", "passes_forward_mode": "J"}
PASS_LEGEND = ("passes per hyper-step: T training forwards, V validation forwards, B first-order backwards, "
               "D double backwards (through a gradient built with create_graph), J forward-mode passes; "
               "k: backwards that kept their graph (create_graph), counted within B and D")


def passes_text(ok: pd.DataFrame) -> str:
    """`1T 1V 1B 1D (1k)`: the first finished cell's counts (a variant's counts do not
    depend on the seed); "none" for a hyper-step that does no pass, "" where not counted."""
    if ok.empty or any(c not in ok.columns for c in PASS_COLUMNS) or ok[PASS_COLUMNS].iloc[0].isna().any():
        return ""
    r = ok[PASS_COLUMNS].iloc[0].astype(int)
    text = " ".join(f"{r[c]}{letter}" for c, letter in PASS_LETTERS.items() if r[c])
    kept = r["passes_kept_backwards"]
    return (text + (f" ({kept}k)" if kept else "")) or "none"


def _grows(ok: pd.DataFrame) -> bool:
    return "memory_grows" in ok.columns and bool(ok["memory_grows"].map(lambda v: v is True or v == 1
                                                                           or str(v) == "True").any())


def _pooled_draws(ok: pd.DataFrame) -> dict[str, Any]:
    """Over seeds: the reference most seeds' mean of draws matched best, and the draws its
    mean needed on the worst of those seeds (NaN when one did not get there within its draws)."""
    best = ok["fid_best_ref"].dropna()
    best = best[best.astype(str).str.len() > 0]
    if best.empty:
        return {"fid_best_ref": "", "fid_draws_to_target": math.nan}
    ref = best.mode().iloc[0]
    needed = ok.loc[best.index[best == ref], "fid_draws_to_target"]
    return {"fid_best_ref": ref, "fid_draws_to_target": math.nan if needed.isna().any() else needed.max()}


def summary(prepared: pd.DataFrame, reference: Reference) -> pd.DataFrame:
    """One row per workload, backbone and estimator variant (seeds pooled): cost from the
    cells that finished, accuracy as mean and 95% CI half-width over seeds."""
    rows = []
    keys = ["workload_label", "backbone", "variant"]
    for (label, backbone, variant), g in prepared.groupby(keys, sort=False):
        ok = g[g["status"] == "ok"]
        acc = ok["test_accuracy"].dropna()
        n = len(acc)
        row = {"workload": g["workload"].iloc[0], "workload_label": label, "backbone": backbone,
               "estimator": g["estimator"].iloc[0],
               "variant": variant,
               "params": ", ".join(f"{k}={v}" for k, v in estimator_params(g["params"].iloc[0]).items()),
               "cells": len(g), "status": _status(g["status"]),
               "acc_mean": acc.mean() if n else math.nan,
               "acc_ci95": t95(n) * acc.std() / math.sqrt(n) if n > 1 else math.nan, "n_seeds": n,
               "timing_shared": int(ok["timing_shared"].sum())}
        for col in ("hyper_ms", "hyper_iqr_ms", "step_ms", "peak_mb", "graph_mb", "gflops",
                    "time_x_plain", "mem_x_plain", "iter_mem_x_plain", "flops_x_plain", "flop_efficiency",
                    *FIDELITY_METRICS, "fid_reference_T", "fid_draws"):
            row[col] = ok[col].mean() if len(ok) else math.nan
        row.update(passes=passes_text(ok), memory_grows=_grows(ok))
        row.update(_pooled_draws(ok), fid_trajectory=", ".join(dict.fromkeys(ok["fid_trajectory"].dropna().astype(str))))
        rows.append(row)
    table = pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c not in
                                        ("time_x_ref", "mem_x_ref", "flops_x_ref", "reference")])
    for col in ("time_x_ref", "mem_x_ref", "flops_x_ref"):
        table[col] = math.nan
    table["reference"] = ""
    for (label, backbone), g in table.groupby(["workload_label", "backbone"], sort=False):
        ref = next((r for _, r in g.iterrows()
                    if r["status"] == "ok" and reference.matches(
                        r["estimator"], _params_of(prepared, label, backbone, r["variant"]))), None)
        if ref is None:
            continue
        for col, base in (("time_x_ref", "hyper_ms"), ("mem_x_ref", "peak_mb"), ("flops_x_ref", "gflops")):
            table.loc[g.index, col] = g[base] / ref[base] if ref[base] else math.nan
        table.loc[g.index, "reference"] = ref["variant"]
    return table[SUMMARY_COLUMNS]


def _params_of(prepared: pd.DataFrame, label: str, backbone: str, variant: str) -> dict[str, Any]:
    row = prepared[(prepared["workload_label"] == label) & (prepared["backbone"] == backbone)
                   & (prepared["variant"] == variant)].iloc[0]
    return estimator_params(row["params"])
