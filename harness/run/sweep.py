"""The sweep side: cells in, one results row per cell out, as each finishes.

Each cell runs in its own process (`isolation`) on an executor (this machine or Ray); the
row starts with the cell's identity and the run's provenance, so even a cell whose process
died leaves a row that says which cell it was. The sweep writes nothing: whoever consumes
the rows (the run folder, `harness.store`) keeps them.
"""
from __future__ import annotations

import functools
import socket
import time
from typing import Any, Iterable, Iterator

from harness.plan.cell import Cell
from harness.run.cell import execute_cell
from harness.run.executors import Executor, LocalExecutor
from harness.run.isolation import run_isolated
from harness.run.provenance import now_iso, run_provenance
from workloads import WORKLOADS


def preload_modules(cells: Iterable[Cell]) -> tuple[str, ...]:
    """What the cells' workloads import (`Workload.preload`), for the forkserver."""
    return tuple(dict.fromkeys(m for c in cells for m in WORKLOADS.get(c.workload).preload))


def cell_row(cell: Cell, isolate: bool = True, run_info: dict[str, Any] | None = None,
             preload: tuple[str, ...] = ()) -> dict[str, Any]:
    """One results row for a cell, run in its own process unless `isolate` is False. Runs
    where the cell runs (a Ray worker too), so host and times are that machine's."""
    row: dict[str, Any] = {**cell.identity(), **(run_info or run_provenance()),
                           "hostname": socket.gethostname(), "start_time": now_iso()}
    start = time.perf_counter()
    row.update(run_isolated(execute_cell, cell, cell.timeout_s, preload) if isolate else execute_cell(cell))
    if not isolate and row.get("memory_method"):
        row["memory_note"] = ((row.get("memory_note") or "") + " in-process (--in-process): memory freed by "
                              "earlier cells stays in this heap and may be counted").strip()
    row["wall_s"] = time.perf_counter() - start
    return row


def sweep(cells: Iterable[Cell], executor: Executor | None = None, isolate: bool = True) -> Iterator[dict[str, Any]]:
    """Every cell's row, in the order cells finish (default: here, one at a time). A row the
    executor lost (its worker died) is an `error` row of that cell."""
    info = run_provenance()
    executor = executor or LocalExecutor()
    cells = list(cells)
    run = functools.partial(cell_row, isolate=isolate, run_info=info, preload=preload_modules(cells))
    for cell, result in executor.run(cells, run):
        yield result if isinstance(result, dict) else {
            **cell.identity(), **info, "status": "error", "error": f"the executor lost the cell: {result}"}
