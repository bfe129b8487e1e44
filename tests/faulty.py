"""Estimators that fail on purpose, registered through HGBENCH_PLUGINS=tests.faulty so that
spawned cell processes have them too."""
from __future__ import annotations

import os
import signal
import time

import torch

from estimators import ESTIMATORS, Estimator


class _Faulty(Estimator):
    def hypergradient(self, inputs):
        self.fail()
        return {k: torch.zeros_like(v) for k, v in inputs.hparams.items()}


def _register(name: str, fail):
    cls = type(f"Faulty_{name}", (_Faulty,), {"name": name, "doc": f"test: {name}",
                                               "fail": lambda self: fail()})
    if name not in ESTIMATORS.names():
        ESTIMATORS.register(name)(cls)


def _raise():
    raise RuntimeError("boom")


def _hog():
    x = torch.ones(75_000_000)  # 300 MB held during the hyper-step
    x += 1


class _NaN(Estimator):
    name = "nan_grad"

    def hypergradient(self, inputs):
        return {k: torch.full_like(v, float("nan")) for k, v in inputs.hparams.items()}


def _cpu_oom():
    torch.empty(2 ** 46, dtype=torch.uint8)  # 64 TiB: the allocator refuses at once


_register("exploding", _raise)
_register("cpu_oom", _cpu_oom)
_register("self_kill", lambda: os.kill(os.getpid(), signal.SIGKILL))
_register("hang", lambda: time.sleep(3600))
_register("hog", _hog)
if "nan_grad" not in ESTIMATORS.names():
    ESTIMATORS.register("nan_grad")(_NaN)
