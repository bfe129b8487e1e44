"""The results store: one row per cell in results.csv and results.parquet, both rewritten
atomically (temporary file, then rename) after every cell."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from harness.core.errors import ConfigError
from harness.core.spec import MAX_SEED, RECORD_FILE
from harness.core.schema import (COLUMNS, CURVE_COLUMNS, IDENTITY, STATUSES, SchemaError,
                                 unknown_columns)

RESULT_FILES = ("results.csv", "results.parquet")
# Set (to 1) by the test suite: a row column the schema does not list is then an error.
STRICT_ENV = "HGBENCH_STRICT_SCHEMA"


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The rows as a table with the schema's columns, in order. A column the schema does not
    list (a plugin workload's `describe()`, a new measurement not yet added to the schema) is
    an error under the test suite and otherwise kept after the documented ones, with a
    warning: never dropped silently."""
    df = pd.DataFrame(list(rows))
    extra = unknown_columns(dict.fromkeys(df.columns))
    if extra and os.environ.get(STRICT_ENV):
        raise SchemaError(f"columns not in harness.core.schema.COLUMNS: {', '.join(map(str, extra))}")
    if extra:
        warnings.warn(f"hgbench: results columns not in the schema, kept at the end: {', '.join(map(str, extra))}",
                      stacklevel=2)
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    return df[COLUMNS + extra]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
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
    """results.csv, then results.parquet from the same rows. The csv is the truth: a run
    stopped between the two writes leaves the parquet behind, and the next command that
    opens the folder brings it back in line (`parquet_behind`, `write_parquet`)."""
    df = to_frame(rows)
    atomic_write(out_dir / "results.csv", lambda p: df.to_csv(p, index=False))
    write_parquet(df, out_dir)
    return df


def write_parquet(df: pd.DataFrame, out_dir: Path) -> None:
    # Parquet needs one type per column: mixed object columns are stored as text.
    typed = df.copy()
    for col in typed.columns[typed.dtypes == object]:
        values = typed[col].dropna()
        if len({type(v) for v in values}) > 1:
            typed[col] = typed[col].map(lambda v: None if v is None else str(v))
    atomic_write(out_dir / "results.parquet", lambda p: typed.to_parquet(p, index=False))


def parquet_behind(out_dir: Path, rows: int) -> bool:
    """Whether results.parquet does not hold what results.csv (with `rows` rows) holds:
    missing, unreadable, another row count, or written before the csv."""
    csv_path, parquet = out_dir / "results.csv", out_dir / "results.parquet"
    try:
        import pyarrow.parquet as pq

        if parquet.stat().st_mtime_ns < csv_path.stat().st_mtime_ns:
            return True
        return pq.read_metadata(parquet).num_rows != rows
    except Exception:  # (missing, truncated, not parquet: all behind)
        return True


def write_curves(points: Iterable[Mapping[str, Any]], out_dir: Path) -> None:
    df = pd.DataFrame(list(points), columns=CURVE_COLUMNS)
    atomic_write(out_dir / "curves.csv", lambda p: df.to_csv(p, index=False))


def read_curves(out_dir: Path) -> pd.DataFrame:
    """The training curves in `out_dir` (empty when there are none or they are unreadable:
    curves only feed figures, and losing them never blocks a run or a report)."""
    try:
        df = pd.read_csv(out_dir / "curves.csv")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return pd.DataFrame(columns=CURVE_COLUMNS)
    if any(c not in df.columns for c in CURVE_COLUMNS):
        return pd.DataFrame(columns=CURVE_COLUMNS)
    seed = pd.to_numeric(df["seed"], errors="coerce")
    return df[CURVE_COLUMNS][seed.notna() & (seed == seed.round())].assign(seed=lambda d: d["seed"].astype(int))


def read_results(out_dir: Path) -> pd.DataFrame | None:
    """The rows already in `out_dir`, or None if it holds none. A file that is not an intact
    hgbench results table is refused, never overwritten."""
    path = out_dir / "results.csv"
    if not path.exists():
        return None
    for name in (*RESULT_FILES, "curves.csv", "suite.yaml", RECORD_FILE):
        if (out_dir / name).is_dir():
            raise ConfigError(f"{out_dir / name}: a folder where hgbench keeps a file; move it away or "
                              "choose another --out")
    try:
        df = pd.read_csv(path, dtype={"params": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
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
    bad = _bad_identity(df)
    if bad:
        raise ConfigError(f"{path}: damaged ({bad}); move it away or choose another --out")
    df["seed"] = df["seed"].astype(int)
    missing = [c for c in COLUMNS if c not in df.columns]  # (a table from an older hgbench)
    return df.assign(**{c: None for c in missing})[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def _bad_identity(df: pd.DataFrame) -> str | None:
    """What is wrong with a row's cell identity (its seed, its params JSON), if anything."""
    for i, (seed, params) in enumerate(zip(df["seed"], df["params"]), start=1):
        try:
            ok_seed = float(seed) == int(float(seed)) and 0 <= int(float(seed)) < MAX_SEED
        except (TypeError, ValueError, OverflowError):
            ok_seed = False
        if not ok_seed:
            return f"row {i}: seed {str(seed)[:40]!r} is not an integer in [0, 2**31)"
        try:
            parsed = json.loads(params)
        except (TypeError, ValueError, RecursionError):
            parsed = None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("estimator", {}), dict) \
                or not isinstance(parsed.get("workload", {}), dict):
            return f"row {i}: params {str(params)[:40]!r} is not the JSON object hgbench writes"
    return None


def _short_record(path: Path) -> int | None:
    """The first record (1 = the first data row) that is cut short, if any. pandas pads a
    short last row with empty values, which would silently lose its measurements."""
    text = path.read_text(encoding="utf-8")
    csv.field_size_limit(2 ** 31 - 1)  # read every field the store wrote, however long
    records = list(csv.reader(io.StringIO(text)))
    width = len(records[0]) if records else 0
    for i, record in enumerate(records[1:], start=1):
        if len(record) != width:
            return i
    return len(records) - 1 if records and not text.endswith("\n") else None
