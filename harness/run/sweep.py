"""The sweep side: cells in, one `CellResult` per cell out, as each finishes.

Each cell runs in its own process (`isolation`) on an executor (this machine or Ray); the
result carries the cell's identity from the start, so even a cell whose process died
leaves a row that says which cell it was. The sweep writes nothing: whoever consumes the
results (the run folder, `harness.store`) keeps them.
"""
from __future__ import annotations

import functools
import time
from dataclasses import replace
from typing import Iterable, Iterator

from harness.core.result import CellResult
from harness.plan.cell import Cell
from harness.run.cell_process import execute_cell
from harness.run.executors import Executor, LocalExecutor
from harness.run.isolation import Lost, run_isolated
from harness.run.provenance import machine_provenance, now_iso
from workloads import WORKLOADS

IN_PROCESS_NOTE = ("in-process (--in-process): memory freed by earlier cells stays in this heap and may "
                   "be counted")


def preload_modules(cells: Iterable[Cell]) -> tuple[str, ...]:
    """What the cells' workloads import (`Workload.preload`), for the forkserver."""
    return tuple(dict.fromkeys(m for c in cells for m in WORKLOADS.get(c.workload).preload))


def cell_result(cell: Cell, isolate: bool = True, preload: tuple[str, ...] = ()) -> CellResult:
    """A cell's result, run in its own process unless `isolate` is False. Runs where the
    cell runs (a Ray worker too), so the machine facts and times are that machine's."""
    machine = {**machine_provenance(), "start_time": now_iso()}
    start = time.perf_counter()
    if isolate:
        result = run_isolated(execute_cell, cell, cell.timeout_s, preload)
        if isinstance(result, Lost):
            result = CellResult.failed(cell.identity(), result.status, result.error, machine)
    else:
        result = execute_cell(cell)
        if result.measurements.get("memory_method"):
            note = f"{result.measurements.get('memory_note') or ''} {IN_PROCESS_NOTE}".strip()
            result = replace(result, measurements={**result.measurements, "memory_note": note})
    return result.stamped(machine, time.perf_counter() - start)


def sweep(cells: Iterable[Cell], executor: Executor | None = None, isolate: bool = True) -> Iterator[CellResult]:
    """Every cell's result, in the order cells finish (default: here, one at a time). A
    cell the executor lost (its worker died) is an `error` result of that cell."""
    executor = executor or LocalExecutor()
    cells = list(cells)
    run = functools.partial(cell_result, isolate=isolate, preload=preload_modules(cells))
    for cell, result in executor.run(cells, run):
        yield result if isinstance(result, CellResult) else CellResult.failed(
            cell.identity(), "error", f"the executor lost the cell: {result}")
