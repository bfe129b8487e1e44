"""Training curves: the validation loss and test accuracy of a cell's model at evenly spaced
steps of meta-training, and its mean training loss in between, for the report's figures.

The evaluations happen outside every timed region (timing runs on a separate copy of the
problem before training) and use no random numbers, so they change no result.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from harness.core.schema import CURVE_POINT_COLUMNS
from harness.train.metaloop import MetaTrainer


def curve_steps(train_steps: int, points: int) -> set[int]:
    """`points` evenly spaced inner steps from 0; the end of training is added by `finish`."""
    if not points or not train_steps:
        return set()
    return {int(i * train_steps / points) for i in range(points)}


def _number(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


class CurveLog:
    """Call before meta-iterations (`MetaTrainer.train(before_step=log)`), then `finish`."""

    def __init__(self, train_steps: int, points: int):
        self.steps = curve_steps(train_steps, points)
        self.rows: list[dict[str, Any]] = []
        self._losses: list[torch.Tensor] = []  # device scalars: no host sync per step

    def __call__(self, trainer: MetaTrainer) -> None:
        if trainer.last_loss is not None:
            self._losses.append(trainer.last_loss)
        if trainer.step in self.steps:
            self._record(trainer.step, trainer.problem.evaluate())

    def finish(self, trainer: MetaTrainer, metrics: dict[str, float]) -> list[dict[str, Any]]:
        """The final point (from the evaluation the cell makes anyway) and all rows."""
        if self.steps:
            if trainer.last_loss is not None:
                self._losses.append(trainer.last_loss)
            self._record(trainer.step, metrics)
        return self.rows

    def _record(self, step: int, metrics: dict[str, float]) -> None:
        train_loss = float(torch.stack(self._losses).mean()) if self._losses else None
        self._losses = []
        point = (step, train_loss, _number(metrics.get("final_val_loss")), _number(metrics.get("test_accuracy")))
        self.rows.append(dict(zip(CURVE_POINT_COLUMNS, point, strict=True)))
