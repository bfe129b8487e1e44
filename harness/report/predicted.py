"""Predictions beside measurements: the error of each predicted peak and time against a run
of the same cells, its distribution per estimator, and the memory frontier from predictions.

A prediction is judged against the same cell's measured row (same workload, backbone,
estimator, parameters and seed) and the same device type; memory errors are relative
(predicted / measured - 1), time errors a ratio (predicted / measured). A hyper-step's peak
is compared as the device's probe reads it (`schema.peak_column`): on the CPU the rise
during the step, on CUDA the caching allocator's whole peak, what the device held when the
step began included (`device_peak_bytes`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import pandas as pd

from harness.core.errors import ConfigError
from harness.core.schema import peak_includes_resident
from harness.report.frontier import frontier
from harness.report.tables import _depth, peak_bytes, variant_labels, workload_labels

KEY = ["workload", "backbone", "estimator", "params", "seed"]
AGAINST_COLUMNS = ["workload", "backbone", "variant", "seed", "predicted_peak_bytes", "measured_peak_bytes",
                   "peak_error", "predicted_iter_peak_bytes", "measured_iter_peak_bytes", "iter_peak_error",
                   "predicted_time_s", "measured_time_s", "time_ratio"]


def _numeric(df: pd.DataFrame, cols: Iterable[str]) -> pd.DataFrame:
    out = df.copy()
    for c in cols:
        out[c] = pd.to_numeric(out[c], errors="coerce") if c in out else math.nan
    return out


def device_peak_bytes(predicted: pd.DataFrame) -> pd.Series:
    """Each prediction of a hyper-step's peak as its device's probe measures it: the rise
    during the step (`predicted_peak_bytes`) where the measured peak is a rise (the CPU's
    resident set); with what the device held when the step began
    (`predicted_resident_bytes`) where the measured peak counts everything allocated
    (`torch.cuda.max_memory_allocated`). Empty where that is needed and missing (a
    predicted.csv written before the column existed), never the rise alone."""
    rows = _numeric(predicted, ["predicted_peak_bytes", "predicted_resident_bytes"])
    whole = rows["predicted_device"].map(peak_includes_resident).astype(bool)
    return rows["predicted_peak_bytes"] + rows["predicted_resident_bytes"].where(whole, 0)


def against(predicted: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """One row per cell both predicted (status ok) and measured (status ok) on the device
    type it was predicted for. `predicted_peak_bytes` and `measured_peak_bytes` are the
    hyper-step's peak as the device's probe reads it (`device_peak_bytes`)."""
    pred = _numeric(predicted[predicted["status"] == "ok"], ["predicted_iter_peak_bytes", "predicted_time_s", "seed"])
    pred["predicted_peak_bytes"] = device_peak_bytes(pred)
    meas = measured[measured["status"] == "ok"].reset_index(drop=True)
    meas["measured_peak_bytes"] = peak_bytes(meas)
    meas = _numeric(meas, ["iter_peak_bytes", "hyper_time_s", "seed"]).rename(
        columns={"iter_peak_bytes": "measured_iter_peak_bytes", "hyper_time_s": "measured_time_s"})
    joined = pred.merge(meas[KEY + ["device_type", "measured_peak_bytes", "measured_iter_peak_bytes",
                                    "measured_time_s"]], on=KEY, how="inner")
    joined = joined[joined["device_type"] == joined["predicted_device"]].copy()
    joined["variant"] = variant_labels(joined)
    joined["peak_error"] = joined["predicted_peak_bytes"] / joined["measured_peak_bytes"] - 1
    joined["iter_peak_error"] = joined["predicted_iter_peak_bytes"] / joined["measured_iter_peak_bytes"] - 1
    # (a hyper-step that does nothing, plain's, is predicted to take no time: no ratio)
    timed = (joined["predicted_time_s"] > 0) & (joined["measured_time_s"] > 0)
    joined["time_ratio"] = (joined["predicted_time_s"] / joined["measured_time_s"]).where(timed)
    return joined[AGAINST_COLUMNS].reset_index(drop=True)


def error_summary(joined: pd.DataFrame) -> pd.DataFrame:
    """Per estimator variant: cells, median and worst |peak error| (hyper-step and
    meta-iteration), median and worst-from-1 time ratio."""
    rows = []
    for variant, g in joined.groupby("variant", sort=True):
        ratio = g["time_ratio"].dropna()
        worst_ratio = ratio.iloc[(ratio.map(math.log).abs()).argmax()] if len(ratio) else math.nan
        rows.append({"variant": variant, "cells": len(g),
                     "peak_error_median": g["peak_error"].abs().median(),
                     "peak_error_worst": g["peak_error"].abs().max(),
                     "iter_peak_error_median": g["iter_peak_error"].abs().median(),
                     "iter_peak_error_worst": g["iter_peak_error"].abs().max(),
                     "time_ratio_median": ratio.median() if len(ratio) else math.nan,
                     "time_ratio_worst": worst_ratio})
    return pd.DataFrame(rows)


def predicted_frontier(predicted: pd.DataFrame, budgets: Iterable[int]) -> pd.DataFrame:
    """The memory frontier (report.frontier) from predicted hyper-step peaks as the
    device's probe would read them (`device_peak_bytes`: on CUDA what the device holds
    before the step counts against the budget), each row marked `predicted`."""
    rows = _numeric(predicted, ["n_params", "batch_size"])
    rows["variant"] = variant_labels(rows)
    rows["workload_label"] = workload_labels(rows)
    rows["depth"] = rows["backbone"].map(_depth)
    rows["peak_mb"] = device_peak_bytes(rows) / 2 ** 20
    out = frontier(rows, budgets)
    out["source"] = "predicted"
    return out


PREDICTED_FILE = "predicted.csv"
_NEEDED = KEY + ["predicted_peak_bytes", "predicted_iter_peak_bytes", "predicted_time_s", "status",
                 "predicted_device"]


def read_predicted(folder: Path) -> pd.DataFrame | None:
    """`folder/predicted.csv` as `hgbench predict --out folder` wrote it, or None where there is
    none; a file that is not one is a one-line error naming it."""
    path = folder / PREDICTED_FILE
    if not path.exists():
        return None
    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise ConfigError(f"{path}: not a table `hgbench predict` wrote ({str(e).splitlines()[0][:80]}); "
                          "move it away or predict again") from None
    missing = [c for c in _NEEDED if c not in table.columns]
    if missing:
        raise ConfigError(f"{path}: not a table `hgbench predict` wrote (no column {missing[0]!r}); "
                          "move it away or predict again")
    return table
