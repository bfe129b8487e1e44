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
from estimators.functional import CommonDraws
from estimators.neumann import Neumann
from estimators.unroll import Unroll
from harness.core.schema import FIDELITY_METRICS, FIDELITY_REFERENCES, FIDELITY_TARGET_COS
from harness.core.spec import resolve_fidelity
from harness.train.metaloop import MetaTrainer
from workloads.base import TensorDict

def checkpoint_steps(train_steps: int, checkpoints: int) -> set[int]:
    """Inner-step indices at the middles of `checkpoints` equal spans of training; without
    meta-training (a cost-only cell, train_steps 0), the initial weights, once."""
    if not checkpoints:
        return set()
    return {int((i + 0.5) * train_steps / checkpoints) for i in range(checkpoints)} if train_steps else {0}


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
    """NaN when either vector is zero: it has no direction (HyperDistill's first step on a
    workload whose gFO is 0, any lookahead at toy1d's x = 0), so no cosine, rather than 0.
    Written out, not `F.cosine_similarity`, whose eps of 1e-8 on the product of the norms
    shrinks the cosine of a small vector (EvoGrad's sigma^2-sized estimate on toy1d read 0.06
    for a 1-D vector that has the reference's sign)."""
    if not bool(a.any()) or not bool(b.any()):
        return float("nan")
    a, b = a.double(), b.double()
    return float((a @ b) / (a.norm() * b.norm()))


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
        curves.append((means @ ref) / (means.norm(dim=1) * ref.norm()).clamp_min(1e-300))  # (as `cosine`)
    return torch.stack(curves).mean(0)


def draws_to_target(curve: list[float], target: float = FIDELITY_TARGET_COS) -> int | None:
    """The fewest draws whose mean reaches cosine `target` (None: not within len(curve))."""
    return next((n for n, c in enumerate(curve, start=1) if c >= target), None)


class FidelityProbe:
    """Call before meta-iterations (`MetaTrainer.train(before_step=probe)`)."""

    def __init__(self, spec: dict[str, Any], train_steps: int):
        self.spec = resolve_fidelity(spec)  # (defaults filled in)
        self.steps = ({0} if self.spec["trajectory"] == "start" and self.spec["checkpoints"] else
                      checkpoint_steps(train_steps, spec["checkpoints"]))
        self.samples: dict[str, list[float]] = {m: [] for m in FIDELITY_METRICS}
        self.curves: dict[str, list[torch.Tensor]] = {r: [] for r in FIDELITY_REFERENCES}
        self.draws = 0
        self.measured: set[int] = set()

    def __call__(self, trainer: MetaTrainer) -> None:
        if trainer.step in self.steps and trainer.step not in self.measured:
            self.measure(trainer)

    def finish(self, trainer: MetaTrainer) -> None:
        """After training: a checkpoint at the last step (train_steps 0: step 0) is taken here."""
        self(trainer)

    def measure(self, trainer: MetaTrainer) -> None:
        """The estimator's draws and every reference at this checkpoint, under common random
        numbers: the first draw and each reference start from the same state of torch's
        generators, so the workload's own noise (LFT's feature-wise transformations, dropout)
        is the same noise in each, and unroll T=1 against `1step` is one computation twice.
        Later draws of a stochastic estimator go on from there (they must differ). The
        generators are put back afterwards: the cell's run is as it would be unmeasured."""
        self.measured.add(trainer.step)
        estimator = copy.deepcopy(trainer.estimator)
        ck = Checkpoint(trainer.problem, trainer.train_stream.peek(max(self.spec["reference_T"],
                                                                         estimator.n_train_batches)),
                        trainer.val_stream.peek(1)[0], trainer.lr, trainer.step, self.spec["reference_T"])
        n_draws = self.spec["draws"] if estimator.stochastic else 1
        common = CommonDraws()
        try:
            with common.same():
                gs = [estimator.hypergradient(ck.inputs(estimator.n_train_batches)) for _ in range(n_draws)]
            if gs[0] is None:  # `plain` has no hypergradient
                return
            refs = {}
            for name, reference in REFERENCES.items():
                with common.same():
                    g = reference(ck)
                if g is not None:
                    refs[name] = flat(g)
        finally:
            common.restart()
        self.record(torch.stack([flat(g) for g in gs]), refs)

    def record(self, draws: torch.Tensor, refs: dict[str, torch.Tensor]) -> None:
        """One checkpoint's draws (rows) against its references; an undefined cosine (a zero
        vector) is left out, so a column is empty when no checkpoint defined it."""
        self.draws = len(draws)
        for name, ref in refs.items():
            for g in draws:
                for measure, value in compare(g, ref).items():
                    if value == value:  # (not NaN)
                        self.samples[f"fid_{measure}_{name}"].append(value)
            if len(draws) > 1:
                mean_cos = cosine(draws.mean(0), ref)
                if mean_cos == mean_cos:
                    self.samples[f"fid_meancos_{name}"].append(mean_cos)
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
