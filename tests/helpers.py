"""Small builders shared by the tests: tiny problems, real batches, flattening."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from estimators import make_estimator
from estimators.base import HyperStepInputs
from harness.train.metaloop import MetaTrainer
from harness.core.params import resolve
from workloads import WORKLOADS

CPU = torch.device("cpu")


def build(workload: str, backbone: str = "none", seed: int = 0, **params: Any):
    torch.manual_seed(seed)
    w = WORKLOADS.get(workload)
    if backbone == "none":
        backbone = w.backbones[0]
    return w.build(resolve(w.params, params, workload), backbone, seed, CPU)


def small_mwn(seed: int = 0, width: int = 4, batch_size: int = 16, steps: int = 3, **params):
    """A tiny MW-Net problem after a few real (momentum) steps, so optimiser state exists."""
    problem = build("mwn", "resnet10", seed, width=width, batch_size=batch_size, **params)
    trainer = MetaTrainer(problem, make_estimator("plain", {}, seed), total_steps=100)
    for _ in range(steps):
        trainer.iteration()
    return problem, trainer


def inputs_for(trainer: MetaTrainer, n_batches: int = 1) -> HyperStepInputs:
    return HyperStepInputs(trainer.problem, trainer.train_stream.peek(n_batches),
                           next(trainer.problem.val_stream), trainer.lr, trainer.step, trainer.update_derivative)


def estimator(name: str, seed: int = 0, **params):
    from estimators import ESTIMATORS
    cls = ESTIMATORS.get(name)
    return make_estimator(name, resolve(cls.params, params, name), seed)


def flat(d: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in d.values()])


def rel_err(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    fa, fb = flat(a).double(), flat(b).double()
    return float((fa - fb).norm() / fb.norm())


def cosine(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    return float(torch.nn.functional.cosine_similarity(flat(a).double(), flat(b).double(), dim=0))
