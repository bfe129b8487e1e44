"""Published claims, each checked against the rows a run has: `reproduced`, `not reproduced`
or `not measured` (the run lacks the rows; never read as a success).

One registry, CLAIMS. A claim names its source, what is measured (a ratio of two
estimators' costs on the same cell, an accuracy, a paired accuracy gain, a learned value),
the comparison that decides it, and the published value. Cost ratios pair two estimators
on the same workload setting, backbone and seed (and, for two variants of one estimator,
the same values of every parameter neither names, e.g. the same T); cells without counted
FLOPs (toy1d's scalar arithmetic, whose times are Python overhead) are left out; their
interval is the range over those cells. Accuracies are means over seeds with a 95% Student-t interval;
gains are paired differences over shared seeds (harness.report.verdict).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from harness.core.schema import estimator_params, workload_params
from harness.report.tables import Reference
from harness.report.verdict import MIN_SEEDS, by_seed, mean_interval, paired

VERDICTS = ("reproduced", "not reproduced", "not measured")
CLAIM_COLUMNS = ["claim", "source", "statement", "quantity", "comparison", "published", "measured",
                 "interval_low", "interval_high", "n", "cells", "verdict", "note"]


@dataclass(frozen=True)
class Measured:
    value: float
    low: float = math.nan
    high: float = math.nan
    n: int = 0
    cells: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Claim:
    id: str
    source: str
    statement: str
    quantity: str
    published: str
    measure: Callable[[pd.DataFrame], Measured | None]
    judge: Callable[[Measured], bool]
    comparison: str
    workload: str                                         # "" = any workload
    where: dict[str, Any] = field(default_factory=dict)  # workload parameters the rows must have

    def rows(self, prepared: pd.DataFrame) -> pd.DataFrame:
        rows = prepared[prepared["status"] == "ok"]
        if self.workload:
            rows = rows[rows["workload"] == self.workload]
        if self.where:
            keep = [all(workload_params(p).get(k) in (v if isinstance(v, tuple) else (v,))
                        for k, v in self.where.items()) for p in rows["params"]]
            rows = rows[pd.Series(keep, index=rows.index, dtype=bool)]
        return rows

    def evaluate(self, prepared: pd.DataFrame) -> dict[str, Any]:
        row = {"claim": self.id, "source": self.source, "statement": self.statement, "quantity": self.quantity,
               "comparison": self.comparison, "published": self.published, "measured": math.nan,
               "interval_low": math.nan, "interval_high": math.nan, "n": 0, "cells": "",
               "verdict": "not measured", "note": ""}
        m = self.measure(self.rows(prepared))
        if m is None or math.isnan(m.value):
            row["note"] = (m.note if m is not None and m.note else
                           "this run has no rows for it (see the quantity for the cells it needs)")
            return row
        note = m.note
        band = getattr(self.judge, "band", None)
        if band and not math.isnan(m.low) and (m.low < band[0] or m.high > band[1]):
            note += ("; " if note else "") + "the 95% interval reaches beyond the band: the seeds disagree"
        row.update(measured=m.value, interval_low=m.low, interval_high=m.high, n=m.n,
                   cells="; ".join(m.cells), note=note,
                   verdict="reproduced" if self.judge(m) else "not reproduced")
        return row


# ------------------------------------------------------------------ what is measured

def _cell(r: pd.Series) -> str:
    return f"{r['workload_label']}/{r['backbone']}/{r['variant']}/seed{int(r['seed'])}"


def _matching(rows: pd.DataFrame, spec: str) -> pd.DataFrame:
    ref = Reference.parse(spec)
    keep = [ref.matches(e, estimator_params(p)) for e, p in zip(rows["estimator"], rows["params"])]
    return rows[pd.Series(keep, index=rows.index, dtype=bool)]


def _partner(a: pd.Series, candidates: pd.DataFrame, free: set[str]) -> pd.Series | None:
    """The cell of `candidates` on a's workload setting, backbone and seed; for a variant of
    the same estimator, also with a's value of every parameter not in `free`."""
    same = candidates[(candidates["workload_label"] == a["workload_label"]) & (candidates["backbone"] == a["backbone"])
                      & (candidates["seed"] == a["seed"])]
    if a["estimator"] in set(same["estimator"]):
        pa = estimator_params(a["params"])
        keep = [all(estimator_params(p).get(k) == v for k, v in pa.items() if k not in free) for p in same["params"]]
        same = same[pd.Series(keep, index=same.index, dtype=bool)]
    return None if same.empty else same.iloc[0]


def cost_ratio(a: str, b: str, column: str, pick: str = "mean") -> Callable[[pd.DataFrame], Measured | None]:
    """a's `column` over b's on each cell both have; `pick`: the mean of the cells (`mean`),
    or the cell most in a's favour (`min`, `max`: 'up to' claims)."""
    free = {k for spec in (a, b) for k, _ in Reference.parse(spec).params}

    def measure(rows: pd.DataFrame) -> Measured | None:
        bs = _matching(rows, b)
        ratios, cells = [], []
        for _, ra in _matching(rows, a).iterrows():
            rb = _partner(ra, bs, free)
            if rb is None or not rb[column] or pd.isna(ra[column]) or pd.isna(rb[column]):
                continue
            if not (ra["gflops"] > 0 and rb["gflops"] > 0):  # scalar problems (toy1d): cost is overhead
                continue
            ratios.append(float(ra[column]) / float(rb[column]))
            cells.append(f"{_cell(ra)} over {rb['variant']}: {ratios[-1]:.3g}")
        if not ratios:
            return None
        value = {"mean": sum(ratios) / len(ratios), "min": min(ratios), "max": max(ratios)}[pick]
        return Measured(value, min(ratios), max(ratios), len(ratios), tuple(cells),
                        "interval: the range over the cells" + ("" if pick == "mean" else f"; value: the {pick}"))
    return measure


def accuracy(spec: str, scale: float = 100.0) -> Callable[[pd.DataFrame], Measured | None]:
    """The mean test accuracy of `spec` over seeds (in points), with its 95% t interval."""
    def measure(rows: pd.DataFrame) -> Measured | None:
        mine = _matching(rows, spec)
        mine = mine[pd.to_numeric(mine["test_accuracy"], errors="coerce").notna()]
        if mine.empty:
            return None
        mean, half = mean_interval(mine["test_accuracy"] * scale)
        return Measured(mean, mean - half, mean + half, len(mine),
                        tuple(f"{_cell(r)}: {scale * float(r['test_accuracy']):.4g}" for _, r in mine.iterrows()),
                        "" if len(mine) >= MIN_SEEDS else "one seed: no interval")
    return measure


def metric(spec: str, key: str) -> Callable[[pd.DataFrame], Measured | None]:
    """A value the workload reports in `metrics` (e.g. the learned angle), mean over seeds."""
    def measure(rows: pd.DataFrame) -> Measured | None:
        mine = _matching(rows, spec)
        mine = mine[pd.to_numeric(mine["test_accuracy"], errors="coerce").notna()]  # meta-trained cells
        values = pd.Series([_metrics(m).get(key) for m in mine["metrics"]], index=mine.index, dtype=float).dropna()
        if values.empty:
            return None
        mean, half = mean_interval(values)
        return Measured(mean, mean - half, mean + half, len(values),
                        tuple(f"{_cell(mine.loc[i])}: {values[i]:.4g}" for i in values.index),
                        "" if len(values) >= MIN_SEEDS else "one seed: no interval")
    return measure


def _metrics(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def gain(a: str, b: str, scale: float = 100.0) -> Callable[[pd.DataFrame], Measured | None]:
    """a's accuracy minus b's (points), paired over the seeds both have, per workload setting
    and backbone; the setting with the most shared seeds is reported."""
    def measure(rows: pd.DataFrame) -> Measured | None:
        best = None
        for _, g in rows.groupby(["workload_label", "backbone"], sort=False):
            va, vb = _matching(g, a)["variant"], _matching(g, b)["variant"]
            if va.empty or vb.empty:
                continue
            d = paired(by_seed(g), va.iloc[0], vb.iloc[0])
            if d is not None and (best is None or d.n > best[0].n):
                best = (d, g)
        if best is None:
            return None
        d, g = best
        if d.n < MIN_SEEDS:
            return Measured(math.nan, note=f"only {d.n} shared seed: a gain needs an interval, so at least "
                                          f"{MIN_SEEDS} seeds")
        label = f"{g['workload_label'].iloc[0]}/{g['backbone'].iloc[0]}"
        return Measured(d.mean * scale, d.low * scale, d.high * scale, d.n,
                        (f"{label}: {d.a} - {d.b}, seeds {', '.join(map(str, d.seeds))}",),
                        "paired over shared seeds, 95% t interval")
    return measure


# ------------------------------------------------------------------ how it is judged

def within(low: float, high: float) -> Callable[[Measured], bool]:
    """The mean inside [low, high] (an interval reaching outside is noted, not failed: with
    three seeds a t interval is wide)."""
    judge = lambda m: low <= m.value <= high
    judge.band = (low, high)
    return judge


def at_most(bound: float) -> Callable[[Measured], bool]:
    return lambda m: m.value <= bound


def at_least(bound: float) -> Callable[[Measured], bool]:
    return lambda m: m.value >= bound


def interval_above(bound: float) -> Callable[[Measured], bool]:
    """The whole 95% interval above `bound` (a gain resolved beyond noise)."""
    return lambda m: not math.isnan(m.low) and m.low > bound


EVOGRAD = "EvoGrad (Bohdal, Yang, Hospedales, NeurIPS 2021)"
NOTEBOOK = "EvoGrad rotation notebook (MNIST, LeNet, validation and test rotated 30 degrees, 5 seeds)"
HD_TABLE3 = "HyperDistill (Lee et al., ICLR 2022), Table 3 (MW-Net CIFAR-100, RTX 2080 Ti)"
SAMA = "SAMA (Choe et al., NeurIPS 2023), abstract: one GPU"
MIXFLOW = "MixFlow-MG (Kemaev et al., ICML 2025), abstract"
MNIST = {"data": ("mnist5k", "mnist")}

CLAIMS: list[Claim] = [
    Claim("evograd-memory-mwn", EVOGRAD, "EvoGrad needs about half the memory of second order on MW-Net",
          "peak hyper-step memory, evograd / unroll(T=1), same cell", "0.5",
          cost_ratio("evograd", "unroll:T=1", "peak_mb"), within(0.35, 0.65), "0.35 <= mean <= 0.65", "mwn"),
    Claim("evograd-memory-lft", EVOGRAD, "EvoGrad needs about half the memory of second order on LFT",
          "peak hyper-step memory, evograd / unroll(T=1), same cell", "0.5",
          cost_ratio("evograd", "unroll:T=1", "peak_mb"), within(0.35, 0.65), "0.35 <= mean <= 0.65", "lft"),
    Claim("mwn-beats-plain", "Meta-Weight-Net (Shu et al., NeurIPS 2019), Table 1 (CIFAR, 40% uniform noise)",
          "the meta-learned weighting beats plain training under 40% uniform label noise",
          "test accuracy, unroll(T=1) (MW-Net's one-step lookahead) - plain, points, paired over seeds",
          "a gain (CIFAR-10/100)", gain("unroll:T=1", "plain"), interval_above(0.0), "95% interval above 0",
          "mwn", {"noise": "unif", "noise_rate": 0.4}),
    Claim("rotation-plain", NOTEBOOK, "plain training reaches 81.79 +- 0.64% on the rotated test set",
          "rotated-test accuracy of plain, %, mean over seeds", "81.79",
          accuracy("plain"), within(76.79, 86.79), "within 5 points of 81.79", "rotation", MNIST),
    Claim("rotation-evograd", NOTEBOOK, "EvoGrad (K=2) reaches 98.11 +- 0.32% on the rotated test set",
          "rotated-test accuracy of evograd, %, mean over seeds", "98.11",
          accuracy("evograd"), within(95.11, 100.0), "within 3 points of 98.11", "rotation", MNIST),
    Claim("rotation-evograd-gain", NOTEBOOK, "EvoGrad lifts rotated-test accuracy far above plain (+16.3 points)",
          "rotated-test accuracy, evograd - plain, points, paired over seeds", "16.32",
          gain("evograd", "plain"), interval_above(10.0), "95% interval above +10 points", "rotation", MNIST),
    Claim("rotation-angle", NOTEBOOK, "EvoGrad learns an angle of 28.47 +- 5.23 degrees (the test rotation: 30)",
          "learned angle of evograd, degrees, mean over seeds", "28.47",
          metric("evograd", "learned_angle_deg"), within(25.0, 35.0), "25 <= mean <= 35", "rotation", MNIST),
    Claim("hyperdistill-time", HD_TABLE3, "HyperDistill costs about one one-step lookahead in time (6.04 s vs 6.17 s)",
          "hyper-step time, hyperdistill / unroll(T=1), same cell", "0.979",
          cost_ratio("hyperdistill", "unroll:T=1", "hyper_ms"), within(0.8, 1.2), "0.8 <= mean <= 1.2", "mwn"),
    Claim("hyperdistill-memory", HD_TABLE3, "HyperDistill costs about one one-step lookahead in memory (1206 vs 1214 MB)",
          "peak hyper-step memory, hyperdistill / unroll(T=1), same cell", "0.993",
          cost_ratio("hyperdistill", "unroll:T=1", "peak_mb"), within(0.8, 1.2), "0.8 <= mean <= 1.2", "mwn"),
    Claim("sama-memory", SAMA, "up to 2.0x lower memory than other meta-learning algorithms",
          "peak hyper-step memory, sama / unroll(T=1), the cell most in SAMA's favour", "0.5",
          cost_ratio("sama", "unroll:T=1", "peak_mb", pick="min"), at_most(0.556),
          "best cell <= 0.556 (2.0x within 10%)", ""),
    Claim("sama-throughput", SAMA, "up to 1.7x the throughput of other meta-learning algorithms",
          "hyper-step time, unroll(T=1) / sama, the cell most in SAMA's favour", "1.7",
          cost_ratio("unroll:T=1", "sama", "hyper_ms", pick="max"), at_least(1.53),
          "best cell >= 1.53 (1.7x within 10%)", ""),
    Claim("mixflow-memory", MIXFLOW, "over 10x lower memory than reverse-over-reverse for the same unroll",
          "peak hyper-step memory, unroll(backend=func) / unroll(backend=mixed), same T, the best cell", "10",
          cost_ratio("unroll:backend=func", "unroll:backend=mixed", "peak_mb", pick="max"), at_least(9.0),
          "best cell >= 9 (10x within 10%)", ""),
    Claim("mixflow-time", MIXFLOW, "up to 25% less wall-clock time than reverse-over-reverse",
          "hyper-step time, unroll(backend=mixed) / unroll(backend=func), same T, the best cell", "0.75",
          cost_ratio("unroll:backend=mixed", "unroll:backend=func", "hyper_ms", pick="min"), at_most(0.833),
          "best cell <= 0.833 (1.33x faster within 10%)", ""),
]


def evaluate(prepared: pd.DataFrame, claims: list[Claim] | None = None) -> pd.DataFrame:
    """One row per claim (CLAIM_COLUMNS), `verdict` one of VERDICTS."""
    table = pd.DataFrame([c.evaluate(prepared) for c in (CLAIMS if claims is None else claims)],
                         columns=CLAIM_COLUMNS)
    assert set(table["verdict"]) <= set(VERDICTS)
    return table
