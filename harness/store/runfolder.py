"""The run folder's life: made and checked writable, locked while one run writes there, told
which cells it already holds (resume), and given each finished row at once.

One run at a time: two `hgbench run --out X` would otherwise both run every cell and the
last writer's table would win. The lock is a `flock` on `.hgbench.lock`, which the kernel
drops when the holder dies (even by kill -9), so a stale lock never blocks a resume; the
file itself only says who held it last.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from harness.core.errors import ConfigError
from harness.core.result import CellResult
from harness.core.schema import row_key
from harness.core.spec import RECORD_FILE, RunSpec
from harness.store.results import (RESULT_FILES, atomic_write, parquet_behind, read_curves, read_results, write_curves,
                                   write_parquet, write_results)

LOCK_FILE = ".hgbench.lock"


def default_out(parent: Path = Path("reports")) -> Path:
    """A new folder `reports/<timestamp>` made for this run (`-2`, `-3`, ... when another run
    made that one in the same second), so runs started together never share a folder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{parent}: cannot write there ({e.strerror}); give --out DIR") from None
    for n in range(1, 1000):
        path = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"{path}: cannot write there ({e.strerror}); give --out DIR") from None
    raise ConfigError(f"{parent}: 999 runs started in the same second; give --out DIR")


def _span(row: dict[str, Any]) -> tuple[Any, float, float] | None:
    try:
        start = datetime.fromisoformat(str(row["start_time"])).timestamp()
        return row.get("hostname"), start, start + float(row["wall_s"])
    except (KeyError, TypeError, ValueError):
        return None


def count_shared_machine(rows: list[dict[str, Any]], new: dict[str, Any]) -> None:
    """Add `new` to the counts of cells that ran on the same host at the same time (more than
    half a second of overlap): a row's timings were taken on a shared machine when its
    `shared_machine_cells` is above 0. Linear in the rows, so a sweep stays quadratic."""
    new["shared_machine_cells"] = 0
    a = _span(new)
    for r in rows:
        b = _span(r) if a is not None and r is not new else None
        if b is not None and b[0] == a[0] and min(a[2], b[2]) - max(a[1], b[1]) > 0.5:
            before = r.get("shared_machine_cells")
            r["shared_machine_cells"] = (0 if before is None or before != before else int(before)) + 1
            new["shared_machine_cells"] += 1


class RunFolder:
    """A run's output folder, held (locked) from `open` to `close`."""

    def __init__(self, path: Path, rows: list[dict[str, Any]], curves: list[dict[str, Any]], lock_fd: int):
        self.path, self.rows, self.curves, self._lock_fd = path, rows, curves, lock_fd
        self.finished = {row_key(r) for r in rows}

    @classmethod
    def open(cls, path: Path, resume: bool) -> "RunFolder":
        """Make `path` (checked writable), take its lock, and read the rows it holds: refused
        when it holds results and `resume` is False, or when another run holds it."""
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"--out {str(path).encode('utf-8', 'replace').decode()}: the folder name is not "
                              "valid UTF-8, which the results files cannot record; choose another name") from None
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"--out {path}: cannot write there ({e.strerror}); choose another folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"--out {path}: another hgbench run is writing there ({holder}); wait for it "
                              "to finish or choose another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                          f"{datetime.now().isoformat(timespec='seconds')}\n".encode(), 0)
            existing = read_results(path)
            if existing is not None and not resume:
                raise ConfigError(f"--out {path}: already holds results.csv; add --resume to continue "
                                  "that run or choose another folder")
        except BaseException:
            os.close(fd)
            raise
        rows = [] if existing is None else existing.to_dict("records")
        _tidy(path, existing)
        finished = {row_key(r) for r in rows}
        curves = read_curves(path).to_dict("records") if existing is not None else []
        return cls(path, rows, [c for c in curves if row_key(c) in finished], fd)

    def pending(self, cells: Iterable[Any]) -> list[Any]:
        """The cells this folder has no row for yet, in order."""
        return [c for c in cells if c.key() not in self.finished]

    def keep_suite(self, text: str, spec: RunSpec) -> None:
        """The suite as written (`suite.yaml`, for people) and the run's resolved settings
        (`run.json`, what resume and report read back)."""
        atomic_write(self.path / "suite.yaml", lambda p: p.write_text(text, encoding="utf-8"))
        atomic_write(self.path / RECORD_FILE, lambda p: p.write_text(spec.record(), encoding="utf-8"))

    def recorded_spec(self) -> RunSpec | None:
        """The settings of the run held here (None for a folder without `run.json`)."""
        return read_spec(self.path)

    def point_latest(self) -> None:
        """<parent>/latest -> this run (a relative symlink, so the folder can move). Pointed
        at the start, so an interrupted run's rows are found there too. The link is made
        beside it and renamed over it (atomic: a run pointing it at the same moment never
        sees it missing); a real folder named `latest` is left alone."""
        latest = self.path.parent / "latest"
        if latest.exists() and not latest.is_symlink():
            return
        tmp = self.path.parent / f".latest.{os.getpid()}.{self.path.name}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.path.name, target_is_directory=True)
        try:
            os.replace(tmp, latest)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def add(self, result: CellResult) -> None:
        """Keep a finished cell's row (and its training curve) on disk before the next one."""
        self.curves += result.curve_rows()
        row = result.row()
        count_shared_machine(self.rows, row)
        self.rows.append(row)
        self.finished.add(result.key())
        write_curves(self.curves, self.path)
        write_results(self.rows, self.path)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tidy(path: Path, existing: Any) -> None:
    """Under the folder's lock: remove temporary files a killed writer left, and bring
    results.parquet back in line with results.csv (the truth) if a stop left it behind."""
    for name in (*RESULT_FILES, "curves.csv", "suite.yaml", RECORD_FILE, "summary.csv", "frontier.csv",
                 "report.html"):
        for tmp in path.glob(f".{name}.*"):  # (atomic_write's temporary names)
            tmp.unlink(missing_ok=True)
    if existing is not None and parquet_behind(path, len(existing)):
        write_parquet(existing, path)


def bring_in_line(path: Path) -> None:
    """What `report` and `compare` do on opening a run folder: when no run holds its lock,
    rewrite a results.parquet that fell behind results.csv; when the folder is read-only,
    say in one line which file to trust."""
    existing = read_results(path)
    if existing is None or not parquet_behind(path, len(existing)):
        return
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        print(f"hgbench: {path / 'results.parquet'} is behind results.csv and the folder is read-only; "
              "read results.csv, which holds every row", file=sys.stderr)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a run is writing there: it brings the parquet in line itself
        os.close(fd)
        return
    try:
        if parquet_behind(path, len(existing)):
            write_parquet(read_results(path), path)
    except OSError as e:
        print(f"hgbench: {path / 'results.parquet'} is behind results.csv and cannot be rewritten "
              f"({e.strerror}); read results.csv, which holds every row", file=sys.stderr)
    finally:
        os.close(fd)


def read_spec(path: Path) -> RunSpec | None:
    """The `run.json` of the run folder at `path`, checked; None when it has none (a folder
    written before hgbench kept one: it resumes and reports without memory budgets)."""
    record = path / RECORD_FILE
    try:
        text = record.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{record}: not a readable run record ({getattr(e, 'strerror', None) or e}); move the "
                          "folder away or choose another --out") from None
    return RunSpec.from_record(text, str(record))


def check_download_paths(cells: Iterable[Any], out_dir: Path) -> None:
    """The only file a suite can make hgbench write outside --out is a dataset download; it
    is allowed only into a folder inside the output folder."""
    inside = out_dir.resolve()
    for cell in cells:
        p = cell.workload_params
        if p.get("download") and inside not in Path(p.get("data_root") or ".").resolve().parents:
            raise ConfigError(f"{cell.workload} data_root {p.get('data_root')!r}: download: true would write "
                              f"outside the output folder {out_dir}; give a data_root inside it, or "
                              "download the data by hand and set download: false")

