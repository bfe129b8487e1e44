"""The results store: one row per cell in results.csv and results.parquet, both rewritten
atomically (temporary file, then rename) after every cell."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from harness.errors import ConfigError
from harness.curves import COLUMNS as CURVE_POINT_COLUMNS
from harness.fidelity import COLUMNS as FIDELITY_COLUMNS

IDENTITY = ["suite", "workload", "backbone", "estimator", "params", "seed", "device"]
# The documented columns, in order; README.md describes each one.
COLUMNS = IDENTITY + [
    "status", "error",
    "step_time_s", "step_time_iqr_s", "step_time_min_s", "hyper_time_s", "hyper_time_iqr_s",
    "inner_time_s", "plain_time_s", "time_x_plain",
    "peak_rss_delta_bytes", "peak_alloc_bytes", "peak_reserved_bytes", "nvml_peak_bytes",
    "plain_peak_bytes", "mem_x_plain", "graph_bytes", "plain_graph_bytes", "graph_x_plain",
    "memory_note",
    "hyper_flops", "plain_flops", "flops_x_plain",
    *FIDELITY_COLUMNS,
    "test_accuracy", "test_accuracy_ci95", "final_val_loss", "metrics", "n_params", "n_hparams",
    "batch_size", "synthetic",
    "warmup_steps", "timed_steps", "train_steps", "hyper_every", "curve_points", "timeout_s", "memory_budget_bytes",
    "hgbench_version", "git_sha", "git_dirty", "torch_version", "cuda_version", "cudnn_version",
    "device_type", "device_name", "cpu_model", "num_threads", "tf32_matmul", "tf32_cudnn",
    "cudnn_benchmark", "deterministic", "hostname", "start_time", "wall_s", "shared_machine_cells",
]
STATUSES = ("ok", "oom", "timeout", "error", "diverged")
RESULT_FILES = ("results.csv", "results.parquet")
# curves.csv: one row per cell and evaluation step (harness.curves).
CURVE_KEY = ["workload", "backbone", "estimator", "params", "seed"]
CURVE_COLUMNS = CURVE_KEY + CURVE_POINT_COLUMNS


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    return df[COLUMNS]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(rows: Iterable[Mapping[str, Any]], out_dir: Path) -> pd.DataFrame:
    df = to_frame(rows)
    _atomic(out_dir / "results.csv", lambda p: df.to_csv(p, index=False))
    # Parquet needs one type per column: mixed object columns are stored as text.
    typed = df.copy()
    for col in typed.columns[typed.dtypes == object]:
        values = typed[col].dropna()
        if len({type(v) for v in values}) > 1:
            typed[col] = typed[col].map(lambda v: None if v is None else str(v))
    _atomic(out_dir / "results.parquet", lambda p: typed.to_parquet(p, index=False))
    return df


def write_curves(points: Iterable[Mapping[str, Any]], out_dir: Path) -> None:
    df = pd.DataFrame(list(points), columns=CURVE_COLUMNS)
    _atomic(out_dir / "curves.csv", lambda p: df.to_csv(p, index=False))


def read_curves(out_dir: Path) -> pd.DataFrame:
    """The training curves in `out_dir` (empty when there are none or they are unreadable:
    curves only feed figures, and losing them never blocks a run or a report)."""
    try:
        df = pd.read_csv(out_dir / "curves.csv")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return pd.DataFrame(columns=CURVE_COLUMNS)
    if any(c not in df.columns for c in CURVE_COLUMNS):
        return pd.DataFrame(columns=CURVE_COLUMNS)
    return df[CURVE_COLUMNS]


def read_results(out_dir: Path) -> pd.DataFrame | None:
    """The rows already in `out_dir`, or None if it holds none. A file that is not an intact
    hgbench results table is refused, never overwritten."""
    path = out_dir / "results.csv"
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a readable results table ({str(e).splitlines()[0]}); "
                          "move it away or choose another --out") from None
    missing = [c for c in IDENTITY + ["status"] if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: not an hgbench results file (no column {missing[0]!r}); "
                          "move it away or choose another --out")
    if df[IDENTITY[1:] + ["status"]].isna().any().any() or not df["status"].isin(STATUSES).all():
        raise ConfigError(f"{path}: damaged (a row lacks its cell or status; truncated?); "
                          "move it away or choose another --out")
    short = _short_record(path)
    if short is not None:
        raise ConfigError(f"{path}: damaged (record {short} has fewer fields than the header, or the "
                          "file stops mid-row: truncated?); move it away or choose another --out")
    return df


def _short_record(path: Path) -> int | None:
    """The first record (1 = the first data row) that is cut short, if any. pandas pads a
    short last row with empty values, which would silently lose its measurements."""
    text = path.read_text(encoding="utf-8")
    records = list(csv.reader(io.StringIO(text)))
    width = len(records[0]) if records else 0
    for i, record in enumerate(records[1:], start=1):
        if len(record) != width:
            return i
    return len(records) - 1 if records and not text.endswith("\n") else None


def row_key(row: Mapping[str, Any]) -> tuple:
    """The same tuple as `Cell.key()`, from a results row."""
    return (row["workload"], row["backbone"], row["estimator"], row["params"], int(row["seed"]))


SUMMARY_COLUMNS = ["workload", "backbone", "estimator", "params", "seed", "status",
                   "step_time_s", "time_x_plain", "mem_x_plain", "flops_x_plain",
                   "fid_cos_1step", "fid_cos_long", "test_accuracy", "final_val_loss"]


def estimator_params(params_json: Any) -> dict[str, Any]:
    """The estimator's part of a row's `params` JSON ({} when missing)."""
    return json.loads(params_json)["estimator"] if isinstance(params_json, str) else {}


def workload_params(params_json: Any) -> dict[str, Any]:
    """The workload's part of a row's `params` JSON ({} when missing)."""
    return json.loads(params_json).get("workload", {}) if isinstance(params_json, str) else {}


def summary_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The table people look at: estimator parameters only, times in ms."""
    out = df[SUMMARY_COLUMNS].copy()
    params = [estimator_params(p) for p in out["params"]]
    out["params"] = [", ".join(f"{k}={v}" for k, v in p.items()) for p in params]
    out.insert(out.columns.get_loc("step_time_s"), "step_ms",
               pd.to_numeric(df["step_time_s"], errors="coerce") * 1000)
    return out.drop(columns=["step_time_s"])
