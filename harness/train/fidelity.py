"""Hypergradient fidelity: how close an estimator's hypergradient is to which true one.

A cosine means nothing without saying against what, so every figure is taken against each
of several references, computed at the same checkpoint on the same weights and batches:

- `1step`: the one-step lookahead, unroll T=1 at the workload's learning rate;
- `long`: a long unroll, T = reference_T;
- `small`: the one-step lookahead to first order in its step, with no step taken,
  gFO(w) - lr * d/dlam <grad_w Ltrain(w, lam), grad_w Lval(w)>: what the lookahead tends to
  as lr -> 0, and the target of EvoGrad's expansion in sigma;
- `exact`: the closed form, where the workload has one (toy1d).

Stochastic estimators are drawn `draws` times per checkpoint, and systematic error is kept
apart from noise: per-draw figures (what one hyper-step gets), the cosine of the mean of
the draws (the bias in direction), the relative variance of the draws, and how many draws
the mean needs to reach cosine FIDELITY_TARGET_COS with the reference it matches best.
The estimator measured is a copy, so the cell's own state and random stream are untouched.
"""
from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from typing import Any, Callable

import torch

from estimators.base import HyperStepInputs
from estimators.neumann import Neumann
from estimators.unroll import Unroll
from harness.core.schema import FIDELITY_METRICS, FIDELITY_REFERENCES, FIDELITY_TARGET_COS
from harness.core.spec import resolve_fidelity
from harness.train.metaloop import MetaTrainer
from workloads.base import TensorDict

def checkpoint_steps(train_steps: int, checkpoints: int) -> set[int]:
    """Inner-step indices at the middles of `checkpoints` equal spans of training."""
    return {int((i + 0.5) * train_steps / checkpoints) for i in range(checkpoints)} if train_steps else set()


# Random orders of the draws averaged for the draws-to-target curve (the cosine of the mean
# of the first n draws depends on which n were drawn first).
ORDERS = 16


@dataclass
class Checkpoint:
    """What every reference sees at one checkpoint: the real weights, buffers and
    hyperparameters (through `problem`), the next training batches and a validation batch."""
    problem: Any
    train_batches: list[Any]
    val_batch: Any
    lr: float
    step: int
    reference_T: int

    def inputs(self, n_batches: int) -> HyperStepInputs:
        return HyperStepInputs(self.problem, self.train_batches[:n_batches], self.val_batch, self.lr, self.step)


def _unroll(T_of: Callable[[Checkpoint], int]) -> Callable[[Checkpoint], TensorDict]:
    def reference(ck: Checkpoint) -> TensorDict:
        T = T_of(ck)
        return Unroll({"T": T, "backend": "func"}).hypergradient(ck.inputs(T))
    return reference


def _small(ck: Checkpoint) -> TensorDict:
    """Neumann with no series terms and the inner learning rate as its step is exactly this
    first-order term: gFO - lr * d/dlam <grad_w Ltrain, grad_w Lval>, at the current weights
    (its training forward first, as the lookahead's, so BatchNorm buffers agree)."""
    return Neumann({"terms": 0, "alpha": 0.0}).hypergradient(ck.inputs(1))


def _exact(ck: Checkpoint) -> TensorDict | None:
    closed_form = getattr(ck.problem, "exact_hypergradient", None)
    return closed_form() if closed_form is not None else None


# Reference name -> its hypergradient at a checkpoint (None: not available on this workload).
REFERENCES: dict[str, Callable[[Checkpoint], TensorDict | None]] = {
    "1step": _unroll(lambda ck: 1),
    "long": _unroll(lambda ck: ck.reference_T),
    "small": _small,
    "exact": _exact,
}
assert tuple(REFERENCES) == tuple(FIDELITY_REFERENCES), "one reference per schema.FIDELITY_REFERENCES"


def flat(g: TensorDict) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in g.values()])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


def compare(g: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Per-draw figures against a reference: cosine, relative error, sign agreement."""
    return {"cos": cosine(g, ref), "sign": float((torch.sign(g) == torch.sign(ref)).double().mean()),
            "relerr": float((g - ref).norm() / ref.norm().clamp_min(1e-30))}


def relative_variance(draws: torch.Tensor) -> float:
    """Unbiased variance of the draws (rows), summed over coordinates, over the squared norm
    of their mean: 1/n is the relative variance of a mean of n draws."""
    mean = draws.mean(0)
    spread = ((draws - mean) ** 2).sum() / (len(draws) - 1)
    return float(spread / (mean @ mean).clamp_min(1e-300))


def prefix_mean_cosines(draws: torch.Tensor, ref: torch.Tensor, orders: int = ORDERS,
                        seed: int = 0) -> torch.Tensor:
    """[n-1]: the cosine with `ref` of the mean of n draws, for n = 1..N, averaged over
    `orders` random orders of the draws (the first is the order drawn)."""
    gen = torch.Generator().manual_seed(seed)
    n = torch.arange(1, len(draws) + 1, dtype=draws.dtype).unsqueeze(1)
    curves = []
    for i in range(orders):
        order = torch.arange(len(draws)) if i == 0 else torch.randperm(len(draws), generator=gen)
        means = draws[order].cumsum(0) / n
        curves.append(torch.nn.functional.cosine_similarity(means, ref.unsqueeze(0), dim=1))
    return torch.stack(curves).mean(0)


def draws_to_target(curve: list[float], target: float = FIDELITY_TARGET_COS) -> int | None:
    """The fewest draws whose mean reaches cosine `target` (None: not within len(curve))."""
    return next((n for n, c in enumerate(curve, start=1) if c >= target), None)


class FidelityProbe:
    """Call before meta-iterations (`MetaTrainer.train(before_step=probe)`)."""

    def __init__(self, spec: dict[str, Any], train_steps: int):
        self.spec = resolve_fidelity(spec)  # (defaults filled in)
        self.steps = checkpoint_steps(train_steps, spec["checkpoints"])
        self.samples: dict[str, list[float]] = {m: [] for m in FIDELITY_METRICS}
        self.curves: dict[str, list[torch.Tensor]] = {r: [] for r in FIDELITY_REFERENCES}
        self.draws = 0

    def __call__(self, trainer: MetaTrainer) -> None:
        if trainer.step in self.steps:
            self.measure(trainer)

    def measure(self, trainer: MetaTrainer) -> None:
        estimator = copy.deepcopy(trainer.estimator)
        ck = Checkpoint(trainer.problem, trainer.train_stream.peek(max(self.spec["reference_T"],
                                                                         estimator.n_train_batches)),
                        trainer.val_stream.peek(1)[0], trainer.lr, trainer.step, self.spec["reference_T"])
        n_draws = self.spec["draws"] if estimator.stochastic else 1
        gs = [estimator.hypergradient(ck.inputs(estimator.n_train_batches)) for _ in range(n_draws)]
        if gs[0] is None:  # `plain` has no hypergradient
            return
        self.record(torch.stack([flat(g) for g in gs]),
                    {name: flat(g) for name, ref in REFERENCES.items() if (g := ref(ck)) is not None})

    def record(self, draws: torch.Tensor, refs: dict[str, torch.Tensor]) -> None:
        """One checkpoint's draws (rows) against its references."""
        self.draws = len(draws)
        for name, ref in refs.items():
            for g in draws:
                for measure, value in compare(g, ref).items():
                    self.samples[f"fid_{measure}_{name}"].append(value)
            if len(draws) > 1:
                self.samples[f"fid_meancos_{name}"].append(cosine(draws.mean(0), ref))
                self.curves[name].append(prefix_mean_cosines(draws, ref))
        if len(draws) > 1:
            self.samples["fid_relvar"].append(relative_variance(draws))

    def columns(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m, xs in self.samples.items():
            out[m] = statistics.fmean(xs) if xs else None
            out[m + "_std"] = statistics.pstdev(xs) if xs else None
        out["fid_trajectory"] = self.spec["trajectory"] if self.draws else None
        out["fid_reference_T"] = self.spec["reference_T"] if self.draws else None
        out["fid_draws"] = self.draws or None
        out["fid_best_ref"] = out["fid_draws_to_target"] = None
        measured = [r for r in FIDELITY_REFERENCES if out[f"fid_meancos_{r}"] is not None]
        if measured:
            best = max(measured, key=lambda r: out[f"fid_meancos_{r}"])
            curve = torch.stack(self.curves[best]).mean(0).tolist()  # (over checkpoints)
            out["fid_best_ref"], out["fid_draws_to_target"] = best, draws_to_target(curve)
        return out
