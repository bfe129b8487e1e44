"""The 1-D bilevel problem with a closed-form hypergradient, for checking estimators exactly.

Ltrain(x, lam) = (x - 1)^2 + lam x^2, Lval(x) = (x - 0.5)^2, so x*(lam) = 1 / (1 + lam) and
dLval(x*(lam))/dlam = (lam - 1) / (lam + 1)^3; the best lam is 1.
"""
from __future__ import annotations

import itertools
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from harness.core.params import Param, positive
from workloads.base import HYPER_OPTIMISER_NAMES, BilevelProblem, HyperOptim, InnerOptim, Workload


def exact_hypergradient(lam: float) -> float:
    return (lam - 1.0) / (lam + 1.0) ** 3


class _Scalar(nn.Module):
    def __init__(self, x0: float):
        super().__init__()
        self.x = nn.Parameter(torch.tensor(float(x0)))


class Toy1DProblem(BilevelProblem):
    def __init__(self, p: Mapping[str, Any], device: torch.device):
        self.model = _Scalar(p["x0"]).to(device)
        self.hparams = {"lam": torch.tensor(float(p["lam0"]), device=device, requires_grad=True)}
        self.inner = InnerOptim(lr=p["lr"])
        self.hyper = HyperOptim(p["hyper_optimizer"], p["hyper_lr"])
        self.train_stream = itertools.repeat(None)  # deterministic: no data
        self.val_stream = itertools.repeat(None)

    def train_loss(self, weights, buffers, hparams, batch) -> Tensor:
        x = weights["x"]
        return (x - 1.0) ** 2 + hparams["lam"] * x ** 2

    def val_loss(self, weights, buffers, hparams, batch) -> Tensor:
        return (weights["x"] - 0.5) ** 2

    def exact_hypergradient(self) -> dict[str, Tensor]:
        """The closed-form hypergradient at the current lam (at x*(lam)), for fidelity."""
        lam = self.hparams["lam"].detach()
        return {"lam": (lam - 1.0) / (lam + 1.0) ** 3}

    def evaluate(self) -> dict[str, float]:
        lam = float(self.hparams["lam"].detach())
        return {"final_val_loss": float(self.val_loss(self.weights, {}, self.hparams, None).detach()),
                "test_accuracy": float("nan"), "lam": lam, "x": float(self.model.x.detach()),
                "exact_hypergradient": exact_hypergradient(lam)}


class Toy1D(Workload):
    name = "toy1d"
    doc = "Ltrain=(x-1)^2+lam*x^2, Lval=(x-0.5)^2; exact hypergradient (lam-1)/(lam+1)^3"
    params = (
        Param("lam0", float, 0.2, "initial hyperparameter lam", check=lambda v: v > -1, check_doc="> -1"),
        Param("x0", float, 0.0, "initial weight x"),
        positive("lr", float, 0.1, "inner SGD learning rate"),
        positive("hyper_lr", float, 0.5, "hyper learning rate"),
        Param("hyper_optimizer", str, "sgd", "hyper-optimiser", choices=HYPER_OPTIMISER_NAMES),
    )

    def build(self, params, backbone, seed, device) -> BilevelProblem:
        return Toy1DProblem(params, device)
