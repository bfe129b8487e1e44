"""The cell's own process: decide its device, build its problem and estimator, profile a
hyper-step, meta-train, evaluate, and return exactly one `CellResult`, whatever happens
inside.

The device is decided here and only here (`device: auto` becomes CUDA where this process
finds it), so a cell on a Ray worker uses the worker's GPU, not what the driver has, and
every tensor of the cell is placed on the one device its row names (`device_type`)."""
from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any

import torch

from estimators import make_estimator
from harness.core.errors import ConfigError, Diverged
from harness.core.result import CellResult
from harness.core.schema import hyper_peak_bytes
from harness.measure.memory import AllocatorMode
from harness.measure.passes import profile
from harness.plan.cell import Cell
from harness.run.provenance import machine_provenance, process_provenance
from harness.train.curves import CurveLog
from harness.train.fidelity import FidelityProbe
from harness.train.metaloop import MetaTrainer
from workloads import WORKLOADS


def resolve_device(name: str) -> torch.device:
    """The device a cell's `device` setting names, on this machine."""
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


def probe_trainer(cell: Cell, device: torch.device, warmup_steps: int | None = None) -> MetaTrainer:
    """The copy of a cell's problem that is measured, never trained: built at the initial
    learning rate, warmed up by `warmup_steps` meta-iterations (default: the cell's)."""
    trainer = build_trainer(cell, device, _NO_SCHEDULE, hyper_every=1)
    for _ in range(cell.warmup_steps if warmup_steps is None else warmup_steps):
        trainer.iteration(hyper=True)
    return trainer


def _enforce_cuda_budget(cell: Cell, device: torch.device) -> None:
    """On CUDA the caching allocator refuses to go past the budget: out-of-memory is real."""
    if device.type == "cuda" and cell.memory_budget_bytes:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cell.memory_budget_bytes / total), device)


def run_cell(cell: Cell) -> CellResult:
    """Measure a hyper-step on one copy of the problem (time, memory and FLOPs passes), then
    meta-train and evaluate a fresh copy, so measuring never changes the trained model and
    results repeat for a seed."""
    device = resolve_device(cell.device)
    if device.type == "cpu":
        AllocatorMode.for_live_bytes()  # before any tensor of the cell exists
    _enforce_cuda_budget(cell, device)
    facts = {**machine_provenance(), **process_provenance(device)}
    done = lambda status, error="", curve=(): CellResult(cell.identity(), status, error, out, facts, tuple(curve))

    probe = probe_trainer(cell, device)
    out: dict[str, Any] = profile(probe, device, cell.timed_steps)
    del probe

    peak = hyper_peak_bytes({**out, "device_type": device.type})
    if cell.memory_budget_bytes and peak is not None and peak > cell.memory_budget_bytes:
        return done("oom", f"hyper-step peak {peak} bytes is over memory_budget_bytes={cell.memory_budget_bytes}")

    fidelity = FidelityProbe(cell.fidelity, cell.train_steps) if cell.fidelity["checkpoints"] else None
    if fidelity is not None and cell.fidelity["trajectory"] == "shared":
        shared = build_trainer(cell, device, cell.train_steps, cell.hyper_every)
        shared.train(cell.train_steps, before_step=fidelity, hyper=False)
        fidelity.finish(shared)
        out.update(fidelity.columns())
        del shared
        fidelity = None
    trainer = build_trainer(cell, device, cell.train_steps, cell.hyper_every)
    curve = CurveLog(cell.train_steps, cell.curve_points)
    probes = [p for p in (fidelity, curve) if p is not None]
    trainer.train(cell.train_steps, before_step=lambda t: [probe(t) for probe in probes])
    if fidelity is not None:
        fidelity.finish(trainer)
        out.update(fidelity.columns())
    metrics = trainer.problem.evaluate()
    points = curve.finish(trainer, metrics)
    if not math.isfinite(metrics["final_val_loss"]):
        raise Diverged(f"final validation loss is {metrics['final_val_loss']}")
    columns = ("test_accuracy", "test_accuracy_ci95", "final_val_loss")
    extra = {k: v for k, v in metrics.items() if k not in columns}
    out.update({k: metrics.get(k) for k in columns}, metrics=json.dumps(extra, sort_keys=True))
    return done("ok", curve=points)


# What an allocation failure says when it is not a torch.OutOfMemoryError: torch's CPU
# allocator ("DefaultCPUAllocator: can't allocate memory"), C++'s std::bad_alloc, mmap.
_OUT_OF_MEMORY = ("can't allocate memory", "bad_alloc", "cannot allocate memory", "not enough memory",
                  "out of memory")


def _status(exc: BaseException) -> str:
    if isinstance(exc, Diverged):
        return "diverged"
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return "oom"
    if isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _OUT_OF_MEMORY):
        return "oom"
    return "error"


def execute_cell(cell: Cell) -> CellResult:
    """run_cell with every failure turned into a status and a one-line message."""
    try:
        return run_cell(cell)
    except Exception as exc:  # one failing cell must not stop the sweep
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
        return CellResult.failed(cell.identity(), _status(exc), f"{type(exc).__name__}: {exc}{where}",
                                 machine_provenance())
