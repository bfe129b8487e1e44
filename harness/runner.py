"""Runs cells and turns each into exactly one results row, whatever happens inside it."""
from __future__ import annotations

import json
import math
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from estimators import make_estimator
from harness.errors import ConfigError, Diverged
from harness.metaloop import MetaTrainer
from harness.provenance import provenance
from harness.results import write_results
from harness.suite import Cell
from harness.timing import measure
from workloads import WORKLOADS


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but torch.cuda.is_available() is False "
                          "(use device: cpu or auto)")
    return torch.device(name)


def _trainer(cell: Cell, device: torch.device, total_steps: int, hyper_every: int) -> MetaTrainer:
    """A freshly built, identically seeded problem and estimator."""
    torch.manual_seed(cell.seed)
    problem = WORKLOADS.get(cell.workload).build(cell.workload_params, cell.backbone, cell.seed, device)
    estimator = make_estimator(cell.estimator, cell.estimator_params, cell.seed)
    return MetaTrainer(problem, estimator, total_steps, hyper_every)


def run_cell(cell: Cell) -> dict[str, Any]:
    """Time meta-iterations on one copy of the problem, then meta-train and evaluate a fresh
    copy, so timing never changes the trained model and results repeat for a seed."""
    device = resolve_device(cell.device)
    timing = _trainer(cell, device, cell.warmup_steps + cell.timed_steps, hyper_every=1)
    m = measure(timing.iteration, device, cell.warmup_steps, cell.timed_steps)
    timing.check_finite()
    del timing

    trainer = _trainer(cell, device, cell.train_steps, cell.hyper_every)
    trainer.train(cell.train_steps)
    metrics = trainer.problem.evaluate()
    if not math.isfinite(metrics["final_val_loss"]):
        raise Diverged(f"final validation loss is {metrics['final_val_loss']}")
    extra = {k: v for k, v in metrics.items() if k not in ("test_accuracy", "final_val_loss")}
    return {"step_time_s": m.median, "step_time_iqr_s": m.iqr, "step_time_min_s": m.min,
            "test_accuracy": metrics["test_accuracy"], "final_val_loss": metrics["final_val_loss"],
            "metrics": json.dumps(extra, sort_keys=True), **trainer.problem.describe()}


def _status(exc: BaseException) -> str:
    if isinstance(exc, Diverged):
        return "diverged"
    if isinstance(exc, torch.OutOfMemoryError) or isinstance(exc, MemoryError):
        return "oom"
    return "error"


def cell_row(cell: Cell) -> dict[str, Any]:
    """Never raises for a failing cell: the failure becomes the row's status and message."""
    row: dict[str, Any] = {
        "suite": cell.suite, "workload": cell.workload, "backbone": cell.backbone,
        "estimator": cell.estimator, "params": cell.params_json, "seed": cell.seed,
        "device": cell.device, "train_steps": cell.train_steps, "hyper_every": cell.hyper_every,
        **provenance()}
    start = time.perf_counter()
    try:
        row.update(run_cell(cell))
        row["status"], row["error"] = "ok", ""
    except ConfigError:
        raise
    except Exception as exc:  # one failing cell must not stop the sweep
        row["status"] = _status(exc)
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
        row["error"] = f"{type(exc).__name__}: {exc}{where}"
    row["wall_s"] = time.perf_counter() - start
    return row


def run_cells(cells: Iterable[Cell], out_dir: Path,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run every cell, rewriting results.csv after each so a killed run keeps what finished."""
    rows: list[dict[str, Any]] = []
    for cell in cells:
        rows.append(cell_row(cell))
        write_results(rows, out_dir)
        if on_row:
            on_row(rows[-1])
    return rows
