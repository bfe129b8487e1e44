"""`hgbench compare BASE NEW`: guard estimator code in CI against slowdowns, memory growth,
newly failing cells and lost cells.

Exit-code contract (the CLI's): 0 only when every cell of BASE was matched in NEW and
judged, with no regression; 1 when a matched cell regressed (slower or bigger than the
limits, or `ok` and now failing) or a cell of BASE has no row in NEW (a lost cell, or one
whose parameters changed); 2 when either table cannot be judged at all (not an hgbench
run, a cell listed twice, an `ok` row whose time or memory is missing, not a number,
infinite or negative, or two runs that share no cell).

Cells are matched by workload, backbone, estimator, parameters and seed. Tiny quantities
are noise (a plain hyper-step takes microseconds and a few kilobytes), so a growth must
also exceed an absolute floor to count; against a base of exactly 0 (a plain or toy1d
step's memory) the floor alone decides, since no ratio exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.core.errors import ConfigError
from harness.core.schema import KEY, hyper_peak_bytes, peak_column, row_key
from harness.core.units import ratio
from harness.store.results import read_results
from harness.store.runfolder import bring_in_line

VERDICT_COLUMNS = [*KEY, "base_status", "new_status", "time_ratio", "memory_ratio", "verdict"]
MISSING = "missing in new"


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


def _grew(new: float, base: float, limit: float, floor: float) -> bool:
    """A regression: more than `floor` above the base, and more than `limit` times it (a
    base of 0 has no ratio: the floor alone decides)."""
    return new - base > floor and (base == 0 or new / base > limit)


def compare(base: pd.DataFrame, new: pd.DataFrame, limits: Thresholds) -> pd.DataFrame:
    """One row per cell of `base`: both statuses, time and memory ratios, and the verdict
    (`ok`, what regressed, or MISSING). Tables must have passed `check_judgeable`."""
    new_by_key = {row_key(r): r for _, r in new.iterrows()}
    rows = []
    for _, b in base.iterrows():
        n = new_by_key.get(row_key(b))
        if n is None:
            rows.append({**{k: b[k] for k in KEY}, "base_status": b["status"], "new_status": None,
                         "time_ratio": math.nan, "memory_ratio": math.nan, "verdict": MISSING})
            continue
        problems = []
        time_x = mem_x = math.nan
        if b["status"] == "ok" and n["status"] != "ok":
            problems.append(f"now {n['status']}")
        elif b["status"] == "ok":
            t_base, t_new, m_base, m_new = _time(b), _time(n), _peak(b), _peak(n)
            time_x, mem_x = (math.nan if r is None else r for r in (ratio(t_new, t_base), ratio(m_new, m_base)))
            if _grew(t_new, t_base, limits.max_slowdown, limits.min_time_s):
                problems.append(f"{time_x:.2f}x slower" if t_base else f"time grew from 0 to {t_new:.3g} s")
            if _grew(m_new, m_base, limits.max_memory_growth, limits.min_bytes):
                problems.append(f"{mem_x:.2f}x memory" if m_base else f"memory grew from 0 to {m_new:.0f} bytes")
        rows.append({**{k: n[k] for k in KEY}, "base_status": b["status"], "new_status": n["status"],
                     "time_ratio": time_x, "memory_ratio": mem_x, "verdict": "; ".join(problems) or "ok"})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def _label(row: pd.Series) -> str:
    return f"{row['workload']}/{row['backbone']}/{row['estimator']}/seed {row['seed']}"


def check_judgeable(df: pd.DataFrame, where: str) -> None:
    """Refuse (ConfigError) a table compare cannot judge: a cell listed twice, or an `ok` row
    whose hyper-step time or peak memory is not a finite number >= 0."""
    keys = [row_key(r) for _, r in df.iterrows()]
    seen: dict[tuple, int] = {}
    for i, key in enumerate(keys, start=1):
        if key in seen:
            raise ConfigError(f"{where}: cell {_label(df.iloc[i - 1])} has two rows ({seen[key]} and {i}); "
                              "a run holds one row per cell, so this table is damaged or merged by hand")
        seen[key] = i
    for i, (_, row) in enumerate(df.iterrows(), start=1):
        if row["status"] != "ok":
            continue
        for what, column in (("hyper-step time", "hyper_time_s"), ("peak memory", peak_column(row.get("device_type")))):
            raw = row.get(column)
            value = pd.to_numeric(raw, errors="coerce")
            if pd.isna(value) or not math.isfinite(value) or value < 0:
                shown = "missing" if raw is None or (isinstance(raw, float) and math.isnan(raw)) else repr(raw)
                raise ConfigError(f"{where}: row {i} ({_label(row)}) is ok but its {what} ({column}) is "
                                  f"{shown}, not a number >= 0, so it cannot be compared; re-run that cell")


def load(path: Path) -> pd.DataFrame:
    if path.is_dir():
        bring_in_line(path)
    df = read_results(path) if path.is_dir() else None
    if df is None:
        raise ConfigError(f"{path}: no results.csv there; give two folders written by `hgbench run`")
    check_judgeable(df, str(path / "results.csv"))
    return df
