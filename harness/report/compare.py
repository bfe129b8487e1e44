"""`hgbench compare BASE NEW`: guard estimator code in CI against slowdowns, memory growth
and newly failing cells.

Cells are matched by workload, backbone, estimator, parameters and seed. A matched cell
regresses when it was ok and now is not, or when its hyper-step time or peak memory grew
past the threshold ratio. Tiny quantities are noise (a plain hyper-step takes microseconds
and a few kilobytes), so a growth must also exceed an absolute floor to count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.core.errors import ConfigError
from harness.core.schema import KEY, hyper_peak_bytes, row_key
from harness.core.units import ratio
from harness.store.results import read_results


@dataclass(frozen=True)
class Thresholds:
    max_slowdown: float = 1.10
    max_memory_growth: float = 1.10
    min_time_s: float = 1e-3      # growth smaller than this many seconds is never a regression
    min_bytes: int = 2 ** 20      # nor growth smaller than this many bytes


def _peak(row: pd.Series) -> float:
    return pd.to_numeric(hyper_peak_bytes(row), errors="coerce")


def _time(row: pd.Series) -> float:
    return pd.to_numeric(row.get("hyper_time_s"), errors="coerce")


def compare(base: pd.DataFrame, new: pd.DataFrame, limits: Thresholds) -> pd.DataFrame:
    """One row per matched cell: both statuses, time and memory ratios, and the verdict."""
    base_by_key = {row_key(r): r for _, r in base.iterrows()}
    rows = []
    for _, n in new.iterrows():
        b = base_by_key.get(row_key(n))
        if b is None:
            continue
        t_base, t_new, m_base, m_new = _time(b), _time(n), _peak(b), _peak(n)
        time_x, mem_x = (math.nan if r is None else r for r in (ratio(t_new, t_base), ratio(m_new, m_base)))
        problems = []
        if b["status"] == "ok" and n["status"] != "ok":
            problems.append(f"now {n['status']}")
        if time_x > limits.max_slowdown and t_new - t_base > limits.min_time_s:
            problems.append(f"{time_x:.2f}x slower")
        if mem_x > limits.max_memory_growth and m_new - m_base > limits.min_bytes:
            problems.append(f"{mem_x:.2f}x memory")
        rows.append({**{k: n[k] for k in KEY}, "base_status": b["status"],
                     "new_status": n["status"], "time_ratio": time_x, "memory_ratio": mem_x,
                     "verdict": "; ".join(problems) or "ok"})
    return pd.DataFrame(rows, columns=[*KEY, "base_status", "new_status", "time_ratio", "memory_ratio",
                                       "verdict"])


def load(path: Path) -> pd.DataFrame:
    df = read_results(path) if path.is_dir() else None
    if df is None:
        raise ConfigError(f"{path}: no results.csv there; give two folders written by `hgbench run`")
    return df
