"""The memory frontier: for each memory budget, each estimator's largest model (the deepest
ResNet; for models without a depth in their name, such as MetaXL's transformers, the most
parameters), then largest batch, whose measured hyper-step peak fits: the answer to "what
fits in X GB".

The peak is the report's `peak_mb`: on CUDA the allocator's peak during the hyper-step
(with `memory_budget_bytes` the budget is enforced, so out-of-memory is real); on the CPU
the rise in resident memory during it. Budgets come from the suite's `memory_frontier`
list or `hgbench report --budget`.
"""
from __future__ import annotations

import math
from typing import Iterable

import pandas as pd


def frontier(prepared: pd.DataFrame, budgets: Iterable[int]) -> pd.DataFrame:
    """One row per workload, estimator variant and budget: the deepest backbone, then the
    largest batch, among finished cells whose peak fits (empty when none fits)."""
    ok = prepared[(prepared["status"] == "ok") & prepared["peak_mb"].notna()].copy()
    ok["batch"] = pd.to_numeric(ok["batch_size"], errors="coerce")
    ok["n_params"] = pd.to_numeric(ok["n_params"], errors="coerce") if "n_params" in ok else math.nan
    ok["size"] = ok["depth"].where(ok["depth"].notna(), ok["n_params"])
    # one frontier per workload, across its batch sizes (and other settings)
    rows = []
    for (workload, variant), g in ok.groupby(["workload", "variant"], sort=False):
        for budget in budgets:
            fits = g[g["peak_mb"] * 2 ** 20 <= budget]
            best = fits.sort_values(["size", "batch", "peak_mb"]).iloc[-1] if len(fits) else None
            rows.append({"workload": workload, "variant": variant, "budget_bytes": budget,
                         "backbone": None if best is None else _model(best, workload),
                         "depth": math.nan if best is None else best["depth"],
                         "n_params": math.nan if best is None else best["n_params"],
                         "batch_size": math.nan if best is None else best["batch"],
                         "peak_mb": math.nan if best is None else best["peak_mb"]})
    return pd.DataFrame(rows, columns=["workload", "variant", "budget_bytes", "backbone", "depth", "n_params",
                                       "batch_size", "peak_mb"])


def _model(row: pd.Series, workload: str) -> str:
    """The backbone, with the workload's setting where one backbone name covers several
    sizes (`xlmr(layers=6)`)."""
    label = str(row.get("workload_label", workload))
    setting = label[len(workload):] if label.startswith(workload + "(") else ""
    return f"{row['backbone']}{setting}"
