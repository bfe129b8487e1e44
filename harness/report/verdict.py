"""What a run resolves beyond noise: accuracy differences between estimators as paired
differences over the seeds they share, with a Student-t 95% interval.

A single-seed ranking is not a verdict: two estimators differ only when the interval of
their paired difference excludes zero, and with fewer than two shared seeds nothing is
resolved. Paired (the same seed's data split, initial weights and batches for both), since
most of the spread between seeds is shared by every estimator and cancels in a difference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

MIN_SEEDS = 2  # a difference needs an interval, so at least two shared seeds


def t95(n: int) -> float:
    """The two-sided 95% Student-t quantile for n samples (n - 1 degrees of freedom)."""
    from scipy.stats import t
    return float(t.ppf(0.975, n - 1))


def mean_interval(values: pd.Series) -> tuple[float, float]:
    """(mean, 95% t half-width); the half-width is NaN below two values."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    n = len(values)
    if not n:
        return math.nan, math.nan
    half = t95(n) * float(values.std()) / math.sqrt(n) if n >= MIN_SEEDS else math.nan
    return float(values.mean()), half


@dataclass(frozen=True)
class Difference:
    """a - b over the seeds both have: the mean, its 95% t half-width, the seeds used."""
    a: str
    b: str
    mean: float
    half: float
    seeds: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def resolved(self) -> bool:
        """The interval excludes zero (never with fewer than MIN_SEEDS seeds)."""
        return self.n >= MIN_SEEDS and not math.isnan(self.half) and abs(self.mean) > self.half

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def by_seed(rows: pd.DataFrame, value: str = "test_accuracy") -> pd.DataFrame:
    """Seeds x variants of one workload setting and backbone: each finished cell's `value`
    (cells without one, e.g. cost-only, left out)."""
    ok = rows[(rows["status"] == "ok") & pd.to_numeric(rows[value], errors="coerce").notna()]
    if ok.empty:
        return pd.DataFrame()
    table = ok.assign(**{value: pd.to_numeric(ok[value])}).pivot_table(
        index="seed", columns="variant", values=value, aggfunc="mean")
    return table[list(dict.fromkeys(ok["variant"]))]  # (the suite's order, not the alphabet's)


def paired(table: pd.DataFrame, a: str, b: str) -> Difference | None:
    """a - b on the seeds where both have a value (None when either is missing)."""
    if a not in table or b not in table:
        return None
    both = table[[a, b]].dropna()
    if both.empty:
        return None
    diff = both[a] - both[b]
    mean, half = mean_interval(diff)
    return Difference(a, b, mean, half, tuple(int(s) for s in both.index))


def all_pairs(table: pd.DataFrame) -> list[Difference]:
    """Every ordered pair's difference with a positive mean (so each pair appears once, the
    better first)."""
    out = []
    variants = list(table.columns)
    for i, a in enumerate(variants):
        for b in variants[i + 1:]:
            d = paired(table, a, b)
            if d is None:
                continue
            out.append(d if d.mean >= 0 else Difference(b, a, -d.mean, d.half, d.seeds))
    return out
