"""The shape of a result, in one place: the suite settings every cell carries, the cell key,
every column of results.csv, curves.csv and summary.csv, and which peak counts.

Everything that writes, reads or compares rows takes its facts from here (the plan builds
cells from `SETTINGS`, the runner writes `COLUMNS`, the store checks them, the report and
`hgbench compare` match rows by `KEY` and read memory through `peak_column`), so a new
column or setting is added once. Imports nothing heavy: the report stays torch-free.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from harness.core.params import Param, at_least

DEVICES = ("cpu", "cuda", "auto")

# Top-level suite settings. Each becomes a field of every cell and a results column (under
# the column name in SETTING_COLUMN).
SETTINGS: dict[str, Param] = {p.name: p for p in (
    Param("name", str, "suite", "suite name", max=200),
    Param("device", str, "cpu", "where cells run (auto: CUDA where the cell's process finds it)",
          choices=DEVICES),
    at_least("warmup_steps", int, 2, "untimed meta-iterations before timing", 0),
    at_least("timed_steps", int, 10, "timed meta-iterations (median and IQR)", 1),
    at_least("train_steps", int, 300, "inner steps of meta-training before evaluation", 0),
    at_least("hyper_every", int, 1, "a hyper-step every this many inner steps", 1),
    at_least("curve_points", int, 10, "evaluations (validation loss, test accuracy) spread over "
             "meta-training for the report's training curves (0: none)", 0),
    Param("timeout_s", float, 3600.0, "a cell still running after this many seconds is a `timeout` row",
          check=lambda v: v > 0, check_doc="> 0", max=1e6),  # (11.6 days; the poll's limit is 24.8)
    at_least("memory_budget_bytes", int, 0, "a hyper-step peaking above this is an `oom` row (0: no budget)", 0),
)}
# The suite's `fidelity:` mapping: how often, against how long an unroll, and with how many
# draws the fidelity probe (`harness.train.fidelity`) measures. Every cell carries it.
FIDELITY_SETTINGS: dict[str, Param] = {p.name: p for p in (
    at_least("checkpoints", int, 0, "checkpoints over meta-training (0: no fidelity)", 0),
    at_least("reference_T", int, 20, "inner steps of the long-unroll reference", 1),
    at_least("draws", int, 3, "draws per checkpoint for stochastic estimators", 1),
    Param("trajectory", str, "own", "own: checkpoints on the cell's meta-training; shared: on a "
          "copy trained without hyper-steps (hyperparameters at their initial values), so every "
          "estimator of a workload and seed is measured at the same weights and batches; start: one "
          "checkpoint at the initial weights, the same point for every cell of a workload and seed "
          "whatever its train_steps (checkpoints is then 1)",
          choices=("own", "shared", "start")),
)}
SETTING_COLUMN = {name: "suite" if name == "name" else name for name in SETTINGS}
# Settings a resume may change: they decide whether a cell finishes, not what it measures.
FREE_ON_RESUME = ("timeout_s",)
# Settings whose 0 means "none": their column is left empty rather than read as a size of 0.
EMPTY_WHEN_ZERO = ("memory_budget_bytes",)

# ------------------------------------------------------------------ which cell a row is

# The cell key: two rows with the same key measured the same cell (resume, compare, curves).
KEY = ["workload", "backbone", "estimator", "params", "seed"]
IDENTITY = ["suite", "workload", "backbone", "estimator", "params", "seed", "device"]


def params_json(estimator_params: Mapping[str, Any], workload_params: Mapping[str, Any]) -> str:
    """The `params` column: both parts of a cell's parameters, as stable JSON."""
    return json.dumps({"estimator": dict(estimator_params), "workload": dict(workload_params)},
                      sort_keys=True)


def estimator_params(params: Any) -> dict[str, Any]:
    """The estimator's part of a row's `params` JSON ({} when missing)."""
    return json.loads(params)["estimator"] if isinstance(params, str) else {}


def workload_params(params: Any) -> dict[str, Any]:
    """The workload's part of a row's `params` JSON ({} when missing)."""
    return json.loads(params).get("workload", {}) if isinstance(params, str) else {}


def row_key(row: Mapping[str, Any]) -> tuple:
    """The cell key of a results row, a curves row or a cell's identity."""
    return tuple(int(row[k]) if k == "seed" else row[k] for k in KEY)


def setting_value(name: str, value: Any) -> Any:
    """How a setting is recorded in its column."""
    return None if name in EMPTY_WHEN_ZERO and not value else value

# ------------------------------------------------------------------ the columns

STATUSES = ("ok", "oom", "timeout", "error", "diverged")
TIME_COLUMNS = ["step_time_s", "step_time_iqr_s", "step_time_min_s", "hyper_time_s", "hyper_time_iqr_s",
                "inner_time_s", "plain_time_s", "time_x_plain"]
MEMORY_COLUMNS = ["peak_rss_delta_bytes", "peak_alloc_bytes", "peak_reserved_bytes", "nvml_peak_bytes",
                  "plain_peak_bytes", "mem_x_plain", "inner_peak_bytes", "iter_peak_bytes", "iter_mem_x_plain",
                  "graph_bytes", "plain_graph_bytes", "graph_x_plain", "memory_method", "memory_note"]
FLOPS_COLUMNS = ["hyper_flops", "plain_flops", "inner_flops", "flops_x_plain", "flop_efficiency"]
# One hyper-step's passes, counted from the work done (harness.measure.pass_counts).
PASS_COLUMNS = ["passes_train_forwards", "passes_val_forwards", "passes_backwards", "passes_kept_backwards",
                "passes_double_backwards", "passes_forward_mode"]
# Whether memory still grows per meta-iteration after warm-up (harness.measure.memory).
GROWTH_COLUMNS = ["memory_growth_bytes_per_step", "memory_grows"]
# A cell's memory grows per step when, after warm-up, the median rise per repeated
# meta-iteration is above the larger of these (the resident set moves by pages and heap
# growth; a graph kept per step moves it by its whole size every step).
GROWTH_MIN_BYTES = 256 * 1024
GROWTH_MIN_FRACTION = 0.01  # of the hyper-step's peak
# Hypergradient fidelity (harness.train.fidelity), against each reference, computed at the
# same checkpoint on the same weights and batches: name -> what it is.
FIDELITY_REFERENCES = {
    "1step": "the one-step lookahead (unroll T=1 at the workload's learning rate)",
    "long": "a long unroll (T = fid_reference_T)",
    "small": "the one-step lookahead's limit as its step goes to 0 (first order in the step, no "
             "step taken: EvoGrad's target)",
    "exact": "the closed form (where the workload has one)",
}
FIDELITY_MEASURES = ("cos", "relerr", "sign")  # per draw: cosine, relative error, sign agreement
# Means over checkpoints (and draws), each with its standard deviation: per draw against each
# reference; for stochastic estimators also the cosine of the mean of a checkpoint's draws
# (`meancos`, the bias in direction) and the draws' relative variance.
FIDELITY_METRICS = (*(f"fid_{m}_{r}" for r in FIDELITY_REFERENCES for m in FIDELITY_MEASURES),
                    *(f"fid_meancos_{r}" for r in FIDELITY_REFERENCES), "fid_relvar")
# Where the checkpoints were (`own`: the cell's meta-training; `shared`: plain training with
# the hyperparameters held, the same for every cell of a workload and seed), the long
# unroll's T and the draws per checkpoint; for stochastic estimators, the reference
# the mean of draws matches best and how many draws its mean needs to reach cosine
# FIDELITY_TARGET_COS with it (empty: not within the draws taken).
FIDELITY_FACTS = ["fid_trajectory", "fid_reference_T", "fid_draws", "fid_best_ref", "fid_draws_to_target"]
FIDELITY_TARGET_COS = 0.9
FIDELITY_COLUMNS = [c for m in FIDELITY_METRICS for c in (m, m + "_std")] + FIDELITY_FACTS
OUTCOME_COLUMNS = ["test_accuracy", "test_accuracy_ci95", "final_val_loss", "metrics"]
# Workloads whose `test_accuracy` column holds another score (the report says which).
ACCURACY_MEANS = {"metaxl": "entity-level F1 on the target-language test set"}
PROBLEM_COLUMNS = ["n_params", "n_hparams", "batch_size", "synthetic"]
PROVENANCE = ["hgbench_version", "git_sha", "git_dirty", "torch_version", "cuda_version", "cudnn_version",
              "device_type", "device_name", "cpu_model", "num_threads", "tf32_matmul", "tf32_cudnn",
              "cudnn_benchmark", "deterministic", "hostname", "start_time"]
# The documented columns of results.csv, in order; README.md describes each one.
COLUMNS = [
    *IDENTITY, "status", "error", *TIME_COLUMNS, *MEMORY_COLUMNS, *GROWTH_COLUMNS, *FLOPS_COLUMNS, *PASS_COLUMNS,
    *FIDELITY_COLUMNS,
    *OUTCOME_COLUMNS, *PROBLEM_COLUMNS,
    *(SETTING_COLUMN[s] for s in SETTINGS if SETTING_COLUMN[s] not in IDENTITY),
    *PROVENANCE, "wall_s", "shared_machine_cells",
]

# curves.csv: one row per cell and evaluation step of meta-training.
CURVE_POINT_COLUMNS = ["step", "train_loss", "val_loss", "test_accuracy"]
CURVE_COLUMNS = KEY + CURVE_POINT_COLUMNS

# summary.csv: one row per workload, backbone and estimator variant, seeds pooled.
# `workload` is the registry name; `workload_label` adds the settings that differ between a
# run's cells of that workload (`mwn(batch_size=64)`), so tables never pool them.
SUMMARY_COLUMNS = ["workload", "workload_label", "backbone", "estimator", "variant", "params", "cells", "status",
                   "hyper_ms", "hyper_iqr_ms", "step_ms", "peak_mb", "graph_mb", "gflops",
                   "time_x_plain", "mem_x_plain", "iter_mem_x_plain", "flops_x_plain", "flop_efficiency",
                   "time_x_ref", "mem_x_ref", "flops_x_ref", "reference", "passes", "memory_grows",
                   *FIDELITY_METRICS, *FIDELITY_FACTS, "acc_mean", "acc_ci95", "n_seeds", "timing_shared"]
# What `hgbench run` prints of the summary when it ends.
CONSOLE_COLUMNS = ["workload_label", "backbone", "variant", "status", "hyper_ms", "time_x_plain", "mem_x_plain",
                   "flops_x_plain", "flop_efficiency", "fid_cos_1step", "fid_cos_small", "fid_meancos_small", "acc_mean", "n_seeds"]

# What a pytest-benchmark JSON (tests/benchmarks) carries per benchmark in `extra_info`.
BENCH_CARRIED = ("workload", "backbone", "estimator", "params", "seed", "device", "time_x_plain",
                 "plain_time_s", "peak_rss_delta_bytes", "plain_peak_bytes", "mem_x_plain", "graph_bytes",
                 "graph_x_plain", "inner_peak_bytes", "iter_peak_bytes", "iter_mem_x_plain", "memory_method",
                 "hyper_flops", "plain_flops", "inner_flops", "flops_x_plain", "flop_efficiency", "n_params",
                 "n_hparams")


class SchemaError(KeyError):
    """A row carries a column the schema does not list: a programming error, never user input."""


def unknown_columns(row: Mapping[str, Any], columns: list[str] = COLUMNS) -> list[str]:
    known = set(columns)
    return [k for k in row if k not in known]

# ------------------------------------------------------------------ which peak counts


def peak_column(device_type: Any) -> str:
    """The column holding a hyper-step's peak memory on its device: the caching allocator's
    peak on CUDA, the rise in resident memory on the CPU. Memory budgets, the frontier, the
    report and `hgbench compare` all read this one."""
    return "peak_alloc_bytes" if str(device_type) == "cuda" else "peak_rss_delta_bytes"


def peak_includes_resident(device_type: Any) -> bool:
    """Whether `peak_column`'s figure counts what the device held before the step (CUDA's
    `max_memory_allocated` does: weights, optimiser state, data kept on the device) or only
    the rise during it (the CPU's resident-set probe)."""
    return peak_column(device_type) == "peak_alloc_bytes"


def hyper_peak_bytes(row: Mapping[str, Any]) -> Any:
    return row.get(peak_column(row.get("device_type")))
