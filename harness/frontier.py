"""The memory frontier: for each memory budget, each estimator's largest backbone (then
batch size) whose measured hyper-step peak fits, the answer to "what fits in X GB".

The peak is the report's `peak_mb`: on CUDA the allocator's peak during the hyper-step
(with `memory_budget_bytes` the budget is enforced, so out-of-memory is real); on the CPU
the rise in resident memory during it. Budgets come from the suite's `memory_frontier`
list or `hgbench report --budget`.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

import pandas as pd

from harness.errors import ConfigError

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_size(value: Any, where: str) -> int:
    """Bytes from an integer or a string such as `512MB`, `1.5GB` or `8GiB`."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b|b)?\s*", value.lower())
        if m and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[m.group(2) or ""])
    raise ConfigError(f"{where}: {value!r} is not a memory size (bytes, or e.g. 512MB, 1.5GB, 8GiB)")


def parse_sizes(values: Any, where: str) -> list[int]:
    if values is None:
        return []
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: expected a list of memory sizes, e.g. [1GB, 4GB]")
    return sorted({parse_size(v, f"{where}[{i}]") for i, v in enumerate(values)})


def format_size(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def frontier(prepared: pd.DataFrame, budgets: Iterable[int]) -> pd.DataFrame:
    """One row per workload, estimator variant and budget: the deepest backbone, then the
    largest batch, among finished cells whose peak fits (empty when none fits)."""
    ok = prepared[(prepared["status"] == "ok") & prepared["peak_mb"].notna()].copy()
    ok["batch"] = pd.to_numeric(ok["batch_size"], errors="coerce")
    # one frontier per workload, across its batch sizes (and other settings)
    name = "workload_name" if "workload_name" in ok else "workload"
    rows = []
    for (workload, variant), g in ok.groupby([name, "variant"], sort=False):
        for budget in budgets:
            fits = g[g["peak_mb"] * 2 ** 20 <= budget]
            best = fits.sort_values(["depth", "batch", "peak_mb"]).iloc[-1] if len(fits) else None
            rows.append({"workload": workload, "variant": variant, "budget_bytes": budget,
                         "backbone": None if best is None else best["backbone"],
                         "depth": math.nan if best is None else best["depth"],
                         "batch_size": math.nan if best is None else best["batch"],
                         "peak_mb": math.nan if best is None else best["peak_mb"]})
    return pd.DataFrame(rows, columns=["workload", "variant", "budget_bytes", "backbone", "depth",
                                       "batch_size", "peak_mb"])
