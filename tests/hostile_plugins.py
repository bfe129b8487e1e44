"""Estimators and a workload that attack the gates (`hgbench check`, a run's rows), loaded
through HGBENCH_PLUGINS=tests.hostile_plugins so that every child process has them too."""
from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from fractions import Fraction

import torch

from estimators import ESTIMATORS, Estimator
from workloads import WORKLOADS
from workloads.toy1d import Toy1D


def _zeros(inputs):
    return {k: torch.zeros_like(v) for k, v in inputs.hparams.items()}


def _estimator(name: str, hypergradient, init=None):
    namespace = {"name": name, "doc": f"test: {name}", "hypergradient": lambda self, inputs: hypergradient(inputs)}
    if init is not None:
        namespace["__init__"] = lambda self, params, seed: init()
    if name not in ESTIMATORS.names():
        ESTIMATORS.register(name)(type(f"Hostile_{name}", (Estimator,), namespace))


def _leave_a_thread(inputs):
    threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
    return _zeros(inputs)


def _raise_in_init():
    raise RuntimeError("no constructor for you")


_estimator("exits_zero", lambda inputs: sys.exit(0))
_estimator("hard_exit", lambda inputs: os._exit(3))
_estimator("segfault", lambda inputs: ctypes.string_at(0))
_estimator("sleeps", lambda inputs: time.sleep(3600))
_estimator("leaves_thread", _leave_a_thread)
_estimator("raising_init", _zeros, init=_raise_in_init)
_estimator("mixed_keys", lambda inputs: {1: torch.zeros(1), "lam": torch.zeros(1)})
_estimator("extra_key", lambda inputs: {**_zeros(inputs), "not_a_hyperparameter": torch.zeros(1)})


class _Unstorable(Toy1D):
    """toy1d whose rows carry a value no results column can hold."""
    name = "unstorable"

    def build(self, params, backbone, seed, device):
        problem = super().build(params, backbone, seed, device)
        facts = problem.describe()
        problem.describe = lambda: {**facts, "n_params": 2 ** 64, "synthetic": Fraction(1, 3)}
        return problem


if "unstorable" not in WORKLOADS.names():
    WORKLOADS.register("unstorable")(_Unstorable())
