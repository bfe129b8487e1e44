"""The fidelity settings of a suite (`fidelity:`): how often, against how long an unroll, and
with how many draws the fidelity probe (`harness.train.fidelity`) measures."""
from __future__ import annotations

from typing import Any

from harness.core.errors import ConfigError
from harness.core.params import Param, resolve

PARAMS = (
    Param("checkpoints", int, 0, "checkpoints over meta-training (0: no fidelity)",
          check=lambda v: v >= 0, check_doc=">= 0"),
    Param("reference_T", int, 20, "inner steps of the long-unroll reference",
          check=lambda v: v >= 1, check_doc=">= 1"),
    Param("draws", int, 3, "draws per checkpoint for stochastic estimators",
          check=lambda v: v >= 1, check_doc=">= 1"),
    Param("trajectory", str, "own", "own: checkpoints on the cell's meta-training; shared: on a "
          "copy trained without hyper-steps (hyperparameters at their initial values), so every "
          "estimator of a workload and seed is measured at the same weights and batches",
          choices=("own", "shared")),
)


def resolve_spec(raw: Any, where: str = "suite.fidelity") -> dict[str, Any]:
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{checkpoints: 3, reference_T: 20}}")
    return resolve(PARAMS, raw, where)


def checkpoint_steps(train_steps: int, checkpoints: int) -> set[int]:
    """Inner-step indices at the middles of `checkpoints` equal spans of training."""
    return {int((i + 0.5) * train_steps / checkpoints) for i in range(checkpoints)} if train_steps else set()
