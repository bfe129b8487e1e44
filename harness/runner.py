"""Runs cells and turns each into exactly one results row, whatever happens inside it."""
from __future__ import annotations

import functools
import json
import math
import socket
import time
from datetime import datetime
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from estimators import make_estimator
from harness.curves import CurveLog
from harness.errors import ConfigError, Diverged
from harness.executors import Executor, LocalExecutor
from harness.fidelity import FidelityProbe
from harness.isolation import run_isolated
from harness.measure import flops_pass, hyper_peak_bytes, memory_pass, time_pass
from harness.metaloop import MetaTrainer
from harness.provenance import now_iso, process_provenance, run_provenance
from harness.results import CURVE_KEY, row_key, write_curves, write_results
from harness.suite import Cell
from workloads import WORKLOADS


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but torch.cuda.is_available() is False "
                          "(use device: cpu or auto)")
    return torch.device(name)


def build_trainer(cell: Cell, device: torch.device, total_steps: int, hyper_every: int) -> MetaTrainer:
    """A freshly built, identically seeded problem and estimator."""
    torch.manual_seed(cell.seed)
    problem = WORKLOADS.get(cell.workload).build(cell.workload_params, cell.backbone, cell.seed, device)
    estimator = make_estimator(cell.estimator, cell.estimator_params, cell.seed)
    return MetaTrainer(problem, estimator, total_steps, hyper_every)


# Measuring runs at the initial learning rate: a horizon no schedule milestone reaches.
_NO_SCHEDULE = 10 ** 9


def _enforce_cuda_budget(cell: Cell, device: torch.device) -> None:
    """On CUDA the caching allocator refuses to go past the budget: out-of-memory is real."""
    if device.type == "cuda" and cell.memory_budget_bytes:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cell.memory_budget_bytes / total), device)


def run_cell(cell: Cell) -> dict[str, Any]:
    """Measure a hyper-step on one copy of the problem (time, memory and FLOPs passes), then
    meta-train and evaluate a fresh copy, so measuring never changes the trained model and
    results repeat for a seed."""
    device = resolve_device(cell.device)
    _enforce_cuda_budget(cell, device)
    out: dict[str, Any] = process_provenance(device)

    probe = build_trainer(cell, device, _NO_SCHEDULE, hyper_every=1)
    for _ in range(cell.warmup_steps):
        probe.iteration(hyper=True)
    out.update(time_pass(probe, device, cell.timed_steps))
    out.update(memory_pass(probe, device))
    out.update(flops_pass(probe))
    probe.check_finite()
    out.update(probe.problem.describe(), batch_size=probe.batch_samples())
    del probe

    peak = hyper_peak_bytes(out)
    if cell.memory_budget_bytes and peak is not None and peak > cell.memory_budget_bytes:
        out.update(status="oom", error=f"hyper-step peak {peak} bytes is over "
                                       f"memory_budget_bytes={cell.memory_budget_bytes}")
        return out

    trainer = build_trainer(cell, device, cell.train_steps, cell.hyper_every)
    fidelity = FidelityProbe(cell.fidelity, cell.train_steps) if cell.fidelity["checkpoints"] else None
    curve = CurveLog(cell.train_steps, cell.curve_points)
    probes = [p for p in (fidelity, curve) if p is not None]
    trainer.train(cell.train_steps, before_step=lambda t: [probe(t) for probe in probes])
    if fidelity is not None:
        out.update(fidelity.columns())
    metrics = trainer.problem.evaluate()
    out["curve"] = curve.finish(trainer, metrics)
    if not math.isfinite(metrics["final_val_loss"]):
        raise Diverged(f"final validation loss is {metrics['final_val_loss']}")
    columns = ("test_accuracy", "test_accuracy_ci95", "final_val_loss")
    extra = {k: v for k, v in metrics.items() if k not in columns}
    out.update({k: metrics.get(k) for k in columns}, metrics=json.dumps(extra, sort_keys=True),
               status="ok", error="")
    return out


def _status(exc: BaseException) -> str:
    if isinstance(exc, Diverged):
        return "diverged"
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return "oom"
    return "error"


def execute_cell(cell: Cell) -> dict[str, Any]:
    """run_cell with every failure turned into a status and a one-line message."""
    try:
        return run_cell(cell)
    except Exception as exc:  # one failing cell must not stop the sweep
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
        return {"status": _status(exc), "error": f"{type(exc).__name__}: {exc}{where}"}


def identity(cell: Cell) -> dict[str, Any]:
    """The columns that say which cell a row is, and its settings."""
    return {"suite": cell.suite, "workload": cell.workload, "backbone": cell.backbone,
            "estimator": cell.estimator, "params": cell.params_json, "seed": cell.seed,
            "device": cell.device, "warmup_steps": cell.warmup_steps, "timed_steps": cell.timed_steps,
            "train_steps": cell.train_steps, "hyper_every": cell.hyper_every, "curve_points": cell.curve_points,
            "timeout_s": cell.timeout_s, "memory_budget_bytes": cell.memory_budget_bytes or None}


def cell_row(cell: Cell, isolate: bool = True, run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """One results row for a cell, run in its own process unless `isolate` is False. Runs
    where the cell runs (a Ray worker too), so host and times are that machine's."""
    row: dict[str, Any] = {**identity(cell), **(run_info or run_provenance()),
                           "hostname": socket.gethostname(), "start_time": now_iso()}
    start = time.perf_counter()
    row.update(run_isolated(execute_cell, cell, cell.timeout_s) if isolate else execute_cell(cell))
    row["wall_s"] = time.perf_counter() - start
    return row


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


def run_cells(cells: Iterable[Cell], out_dir: Path, done: list[dict[str, Any]] | None = None,
              isolate: bool = True,
              on_row: Callable[[dict[str, Any]], None] | None = None,
              done_curves: list[dict[str, Any]] | None = None,
              executor: Executor | None = None) -> list[dict[str, Any]]:
    """Run every cell after the rows in `done` on `executor` (default: here, one at a time),
    rewriting the results (and the training curves) as each cell finishes, so a killed run
    keeps every finished cell."""
    rows, curves = list(done or []), list(done_curves or [])
    info = run_provenance()
    executor = executor or LocalExecutor()
    for cell, result in executor.run(cells, functools.partial(cell_row, isolate=isolate, run_info=info)):
        row = result if isinstance(result, dict) else {
            **identity(cell), **info, "status": "error", "error": f"the executor lost the cell: {result}"}
        key = dict(zip(CURVE_KEY, row_key(row)))
        curves += [{**key, **point} for point in row.pop("curve", None) or []]
        count_shared_machine(rows, row)
        rows.append(row)
        write_curves(curves, out_dir)
        write_results(rows, out_dir)
        if on_row:
            on_row(row)
    return rows
