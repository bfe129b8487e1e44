"""`hgbench predict`: every cell of a suite predicted, none run (see harness.measure.predict).

One row per cell: the cell's key columns, then the predictions and a status. A cell whose
prediction fails (an op without a fake implementation, a workload that cannot be built)
says so in its `status` and `error`; its numbers stay empty, never zero.
"""
from __future__ import annotations

import gc
import traceback
from pathlib import Path
from typing import Any, Iterable

from harness.core.schema import PASS_COLUMNS
from harness.core.errors import ConfigError
from harness.measure.predict import EXCLUDED, PLACEMENT_DEVICE, TIME_MODELS, DevicePlacements, predict_trainer
from harness.plan.cell import Cell
from harness.run.cell_process import probe_trainer

KEY_COLUMNS = ("workload", "backbone", "estimator", "params", "seed")
PREDICTED_COLUMNS = (*KEY_COLUMNS, "predicted_peak_bytes", "predicted_iter_peak_bytes", "predicted_time_s",
                     "status", "error", "predicted_device", "predicted_resident_bytes", "predicted_iter_time_s",
                     "scalar_reads",
                     "n_params", "batch_size", *PASS_COLUMNS, "predicted_note")


def predict_cell(cell: Cell, device_type: str, time_model) -> dict[str, Any]:
    """One cell's row. The problem is built on the CPU (real weights and data, the part a
    measured peak sits above), noting what the build places on the device; the step's
    tensors are fake. Time is predicted only where there is a `time_model` (one of
    TIME_MODELS, for the CPU this runs on)."""
    row: dict[str, Any] = {k: cell.identity()[k] for k in KEY_COLUMNS}
    row.update(predicted_device=device_type, predicted_note=EXCLUDED[device_type]
               + (f"; time: {time_model.note}" if time_model is not None
                  else "; time not predicted (no calibration for this device here)"))
    try:
        with DevicePlacements() as placed:  # (what the build puts on the device)
            trainer = probe_trainer(cell, PLACEMENT_DEVICE, warmup_steps=0)
        if trainer.estimator.fake_step_refusal:
            raise NotImplementedError(trainer.estimator.fake_step_refusal)
        row.update(trainer.problem.describe(), batch_size=trainer.batch_samples())
        row.update(predict_trainer(trainer, cell.warmup_steps, device_type, time_model, placed))
        row.update(status="ok", error="")
    except Exception as exc:  # one cell's failure is its row, never the end of the table
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
        row.update(status="failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}")
    finally:
        trainer = None
        gc.collect()
    return {c: row.get(c) for c in PREDICTED_COLUMNS}


def time_model_class(name: str):
    if name not in TIME_MODELS:
        raise ConfigError(f"unknown time model {name!r}: choose one of {', '.join(TIME_MODELS)} (--time-model)")
    return TIME_MODELS[name]


def time_model_for(device_type: str, name: str):
    """The named time model, calibrated on this CPU; none for another device (a CPU's kernels
    say nothing of a GPU's)."""
    model = time_model_class(name)
    return model.calibrate() if device_type == "cpu" else None


def predict_cells(cells: Iterable[Cell], device_type: str, on_row=lambda row: None,
                  time_model: str = "roofline") -> list[dict[str, Any]]:
    model = time_model_for(device_type, time_model)  # one for the suite: its cache is shared
    rows = []
    for cell in cells:
        rows.append(predict_cell(cell, device_type, model))
        on_row(rows[-1])
    return rows
