"""Estimators: registered hypergradient methods. Import a class here to register it."""
from typing import Any, Mapping

from estimators.base import Estimator, HyperStepInputs
from estimators.evograd import EvoGrad
from estimators.hyperdistill import HyperDistill
from estimators.neumann import Neumann
from estimators.plain import Plain
from estimators.sama import SAMA
from estimators.t1t2 import T1T2
from estimators.unroll import Unroll
from harness.core.registry import Registry

ESTIMATORS: Registry[type[Estimator]] = Registry("estimator")
for _cls in (Plain, Unroll, T1T2, EvoGrad, HyperDistill, Neumann, SAMA):
    ESTIMATORS.register(_cls.name)(_cls)


def make_estimator(name: str, params: Mapping[str, Any], seed: int) -> Estimator:
    return ESTIMATORS.get(name)(params, seed)


__all__ = ["ESTIMATORS", "Estimator", "HyperStepInputs", "make_estimator"]
