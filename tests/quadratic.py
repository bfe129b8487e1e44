"""A strongly convex quadratic bilevel problem with closed forms, in float64.

Ltrain(w, lam) = 1/2 (w - c)^T A (w - c) + 1/2 sum_i lam_i w_i^2,  Lval(w) = 1/2 ||w - d||^2
Hessian K = A + diag(lam), w*(lam) = K^-1 A c, d grad_w Ltrain / d lam = diag(w),
exact implicit hypergradient at w*: -diag(w*) K^-1 (w* - d).
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from workloads.base import BilevelProblem, HyperOptim, InnerOptim


class _Vector(nn.Module):
    def __init__(self, w0: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w0.clone())


class Quadratic(BilevelProblem):
    def __init__(self, n: int = 5, seed: int = 0, lr: float = 0.05, at_optimum: bool = False):
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(n, n, generator=g, dtype=torch.float64)
        self.A = m @ m.T / n + torch.eye(n, dtype=torch.float64)
        self.c = torch.randn(n, generator=g, dtype=torch.float64)
        self.d = torch.randn(n, generator=g, dtype=torch.float64)
        lam = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
        self.hparams = {"lam": lam.requires_grad_()}
        w0 = self.w_opt() if at_optimum else torch.randn(n, generator=g, dtype=torch.float64)
        self.model = _Vector(w0)
        self.inner = InnerOptim(lr=lr)
        self.hyper = HyperOptim("sgd", 0.01)
        self.train_stream = itertools.repeat(None)
        self.val_stream = itertools.repeat(None)

    def K(self) -> torch.Tensor:
        return self.A + torch.diag(self.hparams["lam"].detach())

    def w_opt(self) -> torch.Tensor:
        return torch.linalg.solve(self.K(), self.A @ self.c)

    def implicit_hypergradient(self) -> torch.Tensor:
        w = self.w_opt()
        return -w * torch.linalg.solve(self.K(), w - self.d)

    def train_loss(self, weights, buffers, hparams, batch):
        w = weights["w"]
        r = w - self.c
        return 0.5 * r @ self.A @ r + 0.5 * (hparams["lam"] * w ** 2).sum()

    def val_loss(self, weights, buffers, hparams, batch):
        return 0.5 * ((weights["w"] - self.d) ** 2).sum()

    def evaluate(self):
        return {"final_val_loss": float(self.val_loss(self.weights, {}, self.hparams, None).detach()),
                "test_accuracy": float("nan")}
