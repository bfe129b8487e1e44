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
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from harness.core.errors import ConfigError
from harness.core.result import CellResult
from harness.core.schema import row_key
from harness.core.spec import RECORD_FILE, RunSpec
from harness.store.results import atomic_write, read_curves, read_results, write_curves, write_results

LOCK_FILE = ".hgbench.lock"


def default_out() -> Path:
    return Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")


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
        at the start, so an interrupted run's rows are found there too."""
        latest = self.path.parent / "latest"
        if latest.is_symlink() or not latest.exists():
            latest.unlink(missing_ok=True)
            latest.symlink_to(self.path.name, target_is_directory=True)

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

