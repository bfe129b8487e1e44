"""A cell: one workload x backbone x parameters x estimator x seed, with the suite's settings.

Its fields are derived from `schema.SETTINGS`, so a new suite setting reaches every cell,
its results column and its row identity without being written down again.
"""
from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Any, Mapping

from harness.core import schema
from harness.core.spec import RunSpec


def _params_json(self) -> str:
    return schema.params_json(self.estimator_params, self.workload_params)


def _identity(self) -> dict[str, Any]:
    """The columns that say which cell a row is, and its settings."""
    settings = {col: schema.setting_value(name, getattr(self, col))
                for name, col in schema.SETTING_COLUMN.items()}
    return {**settings, "workload": self.workload, "backbone": self.backbone,
            "estimator": self.estimator, "params": self.params_json, "seed": self.seed}


def _key(self) -> tuple:
    return schema.row_key(self.identity())


def _label(self) -> str:
    est = ",".join(f"{k}={v}" for k, v in self.estimator_params.items())
    return f"{self.workload}/{self.backbone}/{self.estimator}({est})/seed{self.seed}"


Cell = make_dataclass(
    "Cell",
    [("workload", str), ("backbone", str), ("workload_params", Mapping[str, Any]), ("estimator", str),
     ("estimator_params", Mapping[str, Any]), ("seed", int),
     *((col, schema.SETTINGS[name].type) for name, col in schema.SETTING_COLUMN.items()),
     ("fidelity", Mapping[str, Any], field(default_factory=dict))],  # schema.FIDELITY_SETTINGS
    namespace={"params_json": property(_params_json), "identity": _identity, "key": _key,
               "label": _label},
    frozen=True)
Cell.__module__, Cell.__qualname__ = __name__, "Cell"  # picklable by reference (forkserver, Ray)
Cell.__doc__ = __doc__.splitlines()[0]


def make_cell(workload: str, backbone: str, workload_params: Mapping[str, Any], estimator: str,
              estimator_params: Mapping[str, Any], seed: int, spec: RunSpec,
              settings: Mapping[str, Any] | None = None) -> "Cell":
    """A cell of a run: its fidelity is the run's `spec`'s, its settings the spec's or, for a
    workload entry with its own `settings:`, those (`settings`, every setting by name)."""
    settings = spec.settings if settings is None else settings
    return Cell(workload=workload, backbone=backbone, workload_params=workload_params, estimator=estimator,
                estimator_params=estimator_params, seed=seed, fidelity=dict(spec.fidelity),
                **{col: settings[name] for name, col in schema.SETTING_COLUMN.items()})
