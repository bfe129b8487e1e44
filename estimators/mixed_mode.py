"""The mixed-mode unroll (MixFlow-MG): the T-step unrolled hypergradient by an explicit
reverse sweep over stored iterates, each step's Hessian-vector and mixed products taken
forward-over-reverse, so no double-backward graph is ever kept.

Three ways to take a step's products are registered in `SWEEPS` (chosen by the `unroll`
estimator's `backend`: `mixed`, `mixed-jvp`, `mixed-linearize`), because which one is cheapest is a measured question, not a given:

- `fwad`: the sweep recomputes the step's first-order gradient on dual weights
  (`torch.autograd.forward_ad`), one backward carrying the tangents.
- `jvp`: the same product through functorch, `torch.func.jvp` of `torch.func.grad`.
- `linearize`: the forward unroll keeps each step's work instead of recomputing it: the
  step's gradient comes from `torch.func.linearize` of the gradient function, whose primal
  is the inner gradient the step uses and whose linear map (every primal intermediate the
  tangent needs, kept as constants) the sweep applies to a_t. This is what "keep the inner
  gradients from the forward unroll" can mean for plain-SGD steps: the sweep's products
  never use the gradient's value, only the intermediates that produced it, so storing the
  T gradients alone would remove no work; storing their linearisations removes the primal
  recomputation and costs memory that grows with T.

The functorch sweeps run the training loss with BatchNorm's running-statistic updates off
(`frozen_running_stats`): functorch refuses an in-place write into a captured buffer, and a
training-mode loss never reads those statistics. Under `linearize` the scratch statistics
therefore do not advance over the unrolled steps, which no training-mode loss can see.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from estimators.functional import (CommonDraws, _rng_state, _set_rng_state, detached, grads, leaf_copy,
                                   second_order_products, val_grads)
from workloads.base import BilevelProblem, TensorDict


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Training-mode normalisation without its running-statistic updates, then as before."""
    tracking = [m for m in model.modules() if getattr(m, "track_running_stats", False)]
    for m in tracking:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in tracking:
            m.track_running_stats = True


def _gradient_function(problem: BilevelProblem, buffers: TensorDict, batch: Any) -> Callable:
    """(w, lam) -> (grad_w Ltrain, grad_lam Ltrain), as a functorch-transformable function."""
    def loss(w, lam):
        return problem.train_loss(w, buffers, lam, batch)
    return torch.func.grad(loss, argnums=(0, 1))


@dataclass
class _Step:
    """What the forward unroll keeps of one inner step for the sweep."""
    weights: TensorDict    # w_{t-1} (detached)
    buffers: TensorDict    # the buffers step t saw
    draws: CommonDraws     # the random draws step t made
    batch: Any
    linear: Callable | None = None  # linearize: the gradient's linear map at w_{t-1}


def _recomputed_step(problem, w, buffers, hparams, batch) -> tuple[TensorDict, _Step]:
    """The inner gradient by one first-order backward; the sweep recomputes the rest."""
    step = _Step(w, {k: v.clone() for k, v in buffers.items()}, CommonDraws(), batch)
    wl = leaf_copy(w)
    with step.draws.same():
        g = grads(problem.train_loss(wl, buffers, detached(hparams), batch), wl)
    return detached(g), step


def _linearized_step(problem, w, buffers, hparams, batch) -> tuple[TensorDict, _Step]:
    step = _Step(w, buffers, CommonDraws(), batch)
    with step.draws.same(), frozen_running_stats(problem.model), _forward_mode_needed("mixed-linearize"):
        try:
            (g, _), step.linear = torch.func.linearize(_gradient_function(problem, buffers, batch),
                                                       dict(w), detached(hparams))
        except RuntimeError as e:
            if "tracing tensor" not in str(e):
                raise
            raise NotImplementedError(
                f"backend mixed-linearize traces the training loss with make_fx, which cannot follow a "
                f"value-dependent op in {type(problem).__name__}'s loss (a boolean mask, .item(), a "
                f"data-dependent shape): use backend mixed or mixed-jvp for this workload") from None
    if not _same_state(_rng_state(), step.draws.start):
        # linearize evaluated the loss twice (once eagerly, once tracing), so the stream moved
        # two evaluations on: one eager forward from the step's draws puts it one on, as the
        # other sweeps and the `func` backend leave it
        step.draws.after = None
        with step.draws.same(), torch.no_grad(), frozen_running_stats(problem.model):
            problem.train_loss(w, buffers, detached(hparams), batch)
    return detached(g), step


@contextmanager
def _forward_mode_needed(backend: str) -> Iterator[None]:
    """An op without a forward-mode formula (the rotation's grid_sampler_2d) as one line."""
    try:
        yield
    except NotImplementedError as e:
        first = str(e).splitlines()[0] if str(e) else "an op has no forward-mode formula"
        raise NotImplementedError(f"backend {backend} needs forward-mode AD through the training loss and "
                                  f"its backward ({first}): use backend func for this workload") from None


def _fwad_products(problem, step: _Step, hparams, a) -> tuple[TensorDict, TensorDict]:
    with step.draws.same():
        return second_order_products(problem, step.weights, step.buffers, hparams, step.batch, a)


def _jvp_products(problem, step: _Step, hparams, a) -> tuple[TensorDict, TensorDict]:
    lam = detached(hparams)
    no_tangent = {k: torch.zeros_like(v) for k, v in lam.items()}  # along w only
    with step.draws.same(), frozen_running_stats(problem.model), _forward_mode_needed("mixed-jvp"):
        _, (hv, mixed) = torch.func.jvp(_gradient_function(problem, step.buffers, step.batch),
                                        (dict(step.weights), lam), (dict(a), no_tangent))
    return detached(hv), detached(mixed)


def _linear_products(problem, step: _Step, hparams, a) -> tuple[TensorDict, TensorDict]:
    no_tangent = {k: torch.zeros_like(v) for k, v in hparams.items()}
    with step.draws.same(), frozen_running_stats(problem.model):
        hv, mixed = step.linear(dict(a), no_tangent)  # (a traced random op draws as the step did)
    step.linear = None  # each linearisation is applied once: free it as the sweep passes
    return detached(hv), detached(mixed)


@dataclass(frozen=True)
class Sweep:
    forward_step: Callable  # (problem, w, buffers, hparams, batch) -> (inner gradient, _Step)
    products: Callable      # (problem, _Step, hparams, a_t) -> (Hess_w Ltrain a_t, d/dlam <grad_w Ltrain, a_t>)
    # whether `hgbench predict`'s fake-tensor count holds: under fake tensors torch.func's
    # wrapped tensors and make_fx's traced constants are not counted as they allocate
    # (measured at MW-Net ResNet10 width 4, T=2: jvp 3.2 MB predicted against 1.1 MiB live,
    # linearize 1.6 MB against 32.4 MiB)
    fake_count_holds: bool


SWEEPS: dict[str, Sweep] = {
    "fwad": Sweep(_recomputed_step, _fwad_products, fake_count_holds=True),
    "jvp": Sweep(_recomputed_step, _jvp_products, fake_count_holds=False),
    "linearize": Sweep(_linearized_step, _linear_products, fake_count_holds=False),
}


def mixed_mode_unroll(problem: BilevelProblem, weights: Mapping[str, Tensor], buffers: TensorDict,
                      hparams: Mapping[str, Tensor], train_batches: Sequence[Any], val_batch: Any,
                      lr: float, sweep: str = "fwad") -> TensorDict:
    """From a_T = dLval/dw_T, over the stored steps in reverse:

        g_lam += a_t . dPhi_t/dlam = -lr * d/dlam <grad_w Ltrain(w_{t-1}), a_t>
        a_{t-1} = a_t . dPhi_t/dw  = a_t - lr * Hess_w Ltrain(w_{t-1}) a_t

    Memory: the iterates and one step's first-order work (all T steps' under `linearize`),
    whatever T is. Each recomputed step draws what the step drew (LFT's FT noise)."""
    how = SWEEPS[sweep]
    w = detached(weights)
    steps = []
    for batch in train_batches:
        g, step = how.forward_step(problem, w, buffers, hparams, batch)
        steps.append(step)
        w = {k: w[k] - lr * g[k] for k in w}
    a, total = val_grads(problem, leaf_copy(w), buffers, hparams, val_batch)
    after = _rng_state()
    for step in reversed(steps):
        hv, mixed = how.products(problem, step, hparams, a)
        total = {k: total[k] - lr * mixed[k] for k in total}
        a = {k: a[k] - lr * hv[k] for k in a}
    _set_rng_state(after)  # the random stream goes on as after the unrolled steps
    return total


def _same_state(x: tuple, y: tuple) -> bool:
    (cpu_x, cuda_x), (cpu_y, cuda_y) = x, y
    if not torch.equal(cpu_x, cpu_y):
        return False
    return cuda_x is None or cuda_y is None or all(torch.equal(p, q) for p, q in zip(cuda_x, cuda_y))
