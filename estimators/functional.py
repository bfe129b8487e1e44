"""Small pure helpers shared by estimators: functional copies, lookahead steps, safe grads."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from workloads.base import BilevelProblem, TensorDict


def leaf_copy(weights: Mapping[str, Tensor], requires_grad: bool = True) -> TensorDict:
    """Detached views that start a new graph; the real tensors are never written."""
    return {k: v.detach().requires_grad_(requires_grad) for k, v in weights.items()}


def scratch_buffers(buffers: Mapping[str, Tensor]) -> TensorDict:
    """Clones of the buffers, so training-mode forwards cannot move the real BN statistics."""
    return {k: v.clone() for k, v in buffers.items()}


def grads(output: Tensor, inputs: Mapping[Any, Tensor], **kwargs) -> dict[Any, Tensor]:
    """`torch.autograd.grad` keyed by name; inputs the output does not reach get zeros."""
    keys = list(inputs)
    got = torch.autograd.grad(output, [inputs[k] for k in keys], allow_unused=True, **kwargs)
    return {k: torch.zeros_like(inputs[k]) if g is None else g for k, g in zip(keys, got)}


def vjp_grads(outputs: Mapping[str, Tensor], inputs: Mapping[Any, Tensor],
              vectors: Mapping[str, Tensor], **kwargs) -> dict[Any, Tensor]:
    """sum_k <outputs[k], vectors[k]> differentiated w.r.t. `inputs` (one backward pass)."""
    keys = [k for k in outputs if outputs[k].requires_grad]  # (a zero gradient has no graph)
    names = list(inputs)
    if not keys:
        return {n: torch.zeros_like(inputs[n]) for n in names}
    got = torch.autograd.grad([outputs[k] for k in keys], [inputs[n] for n in names],
                              grad_outputs=[vectors[k] for k in keys], allow_unused=True, **kwargs)
    return {n: torch.zeros_like(inputs[n]) if g is None else g for n, g in zip(names, got)}


def sgd_step(weights: Mapping[str, Tensor], grad: Mapping[str, Tensor], lr: float) -> TensorDict:
    """Phi(w) = w - lr * g: the plain-SGD lookahead every estimator differentiates."""
    return {k: w - lr * grad[k] for k, w in weights.items()}


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor], scale: float = 1.0) -> TensorDict:
    return {k: a[k] + scale * b[k] for k in a}


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def norm(a: Mapping[str, Tensor]) -> Tensor:
    return torch.sqrt(dot(a, a))


def unroll_val_loss(problem: BilevelProblem, weights: Mapping[str, Tensor], buffers: TensorDict,
                    hparams: Mapping[str, Tensor], train_batches: Sequence[Any], val_batch: Any,
                    lr: float) -> Tensor:
    """Lval after len(train_batches) differentiable SGD steps from `weights`."""
    w = dict(weights)
    for batch in train_batches:
        loss = problem.train_loss(w, buffers, hparams, batch)
        w = sgd_step(w, grads(loss, w, create_graph=True), lr)
    return problem.val_loss(w, buffers, hparams, val_batch)


def val_grads(problem: BilevelProblem, weights: Mapping[str, Tensor], buffers: TensorDict,
              hparams: Mapping[str, Tensor], val_batch: Any) -> tuple[TensorDict, TensorDict]:
    """(alpha, gFO): first-order gradients of Lval w.r.t. the weights and the hyperparameters,
    from one backward pass."""
    loss = problem.val_loss(weights, buffers, hparams, val_batch)
    both = grads(loss, {**{("w", k): v for k, v in weights.items()},
                        **{("h", k): v for k, v in hparams.items()}})
    return {k: both[("w", k)] for k in weights}, {k: both[("h", k)] for k in hparams}


def train_grad_graph(problem: BilevelProblem, weights: Mapping[str, Tensor], buffers: TensorDict,
                     hparams: Mapping[str, Tensor], batch: Any) -> TensorDict:
    """grad_w Ltrain(w, lam; D) with its graph kept, for a mixed product taken later: building
    it before a vector is known lets a caller order its passes (see HyperDistill)."""
    w = leaf_copy(weights)
    return grads(problem.train_loss(w, buffers, hparams, batch), w, create_graph=True)


def mixed_product(train_grad: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                  vector: Mapping[str, Tensor], lr: float) -> TensorDict:
    """vector . dPhi/dlam = -lr * grad_lam <grad_w Ltrain, vector>, from `train_grad_graph`:
    one double backward through the training loss only."""
    return {k: -lr * t for k, t in vjp_grads(train_grad, hparams, vector).items()}


def mixed_vjp(problem: BilevelProblem, weights: Mapping[str, Tensor], buffers: TensorDict,
              hparams: Mapping[str, Tensor], batch: Any, vector: Mapping[str, Tensor],
              lr: float) -> TensorDict:
    """vector . dPhi(w, lam; D)/dlam at `weights`, when the vector is already known."""
    return mixed_product(train_grad_graph(problem, weights, buffers, hparams, batch), hparams, vector, lr)


def detached(tensors: Mapping[str, Tensor]) -> TensorDict:
    return {k: v.detach() for k, v in tensors.items()}


def second_order_products(problem: BilevelProblem, weights: Mapping[str, Tensor], buffers: TensorDict,
                          hparams: Mapping[str, Tensor], batch: Any,
                          vector: Mapping[str, Tensor]) -> tuple[TensorDict, TensorDict]:
    """(Hess_w Ltrain . v, d/dlam <grad_w Ltrain, v>) at `weights`, forward-over-reverse: the
    training loss is run on dual weights (tangent v) and ONE first-order backward carries
    the tangents, so each gradient's tangent is its directional derivative along v. No
    double-backward graph is built (`create_graph` stays off); the backward's saved tensors
    of this one step are all that lives, and they are freed on return."""
    keys, names = list(weights), list(hparams)
    with fwAD.dual_level():
        w = {k: fwAD.make_dual(weights[k].detach().requires_grad_(), vector[k].detach()) for k in keys}
        lam = {n: hparams[n].detach().requires_grad_() for n in names}  # (no tangent: along w only)
        try:
            loss = problem.train_loss(w, buffers, lam, batch)
            got = torch.autograd.grad(loss, [w[k] for k in keys] + [lam[n] for n in names], allow_unused=True)
        except NotImplementedError as e:  # an op without a forward-mode formula in this torch
            op = str(e).split(" with ")[-1].split(" that ")[0] if " with " in str(e) else "an op"
            raise NotImplementedError(f"forward-over-reverse needs forward-mode AD through every op of the "
                                      f"training loss and its backward; torch {torch.__version__} has none "
                                      f"for {op}: use backend func for this workload") from None
        tangents = [None if g is None else fwAD.unpack_dual(g).tangent for g in got]
    like = [weights[k] for k in keys] + [hparams[n] for n in names]
    out = [torch.zeros_like(x) if t is None else t.detach() for t, x in zip(tangents, like)]
    return dict(zip(keys, out[:len(keys)])), dict(zip(names, out[len(keys):]))


class CommonDraws:
    """Common random numbers: evaluations of a workload's losses under the SAME random draws
    (LFT's feature-wise noise, any dropout), so that a difference of two losses or gradients
    is the difference of one function at two points, not of two functions.

        with CommonDraws() as draws:
            with draws.same():
                plus = ...      # draws from the state at entry
            with draws.same():
                minus = ...     # the same draws again

    The draws are those of torch's global generators (CPU, and CUDA where initialised), which
    is where module-level randomness (`torch.randn`, dropout) comes from. On exit the stream
    goes on as after ONE evaluation, so an estimator that evaluates twice leaves the run's
    random stream where an estimator that evaluates once would."""

    def __init__(self):
        self.start = _rng_state()
        self.after: tuple | None = None

    @contextmanager
    def same(self) -> Iterator[None]:
        _set_rng_state(self.start)
        try:
            yield
        finally:
            if self.after is None:
                self.after = _rng_state()

    def restart(self) -> None:
        """Put the generators back where they were at construction (a measurement that must
        leave the run's stream untouched)."""
        _set_rng_state(self.start)

    def __enter__(self) -> "CommonDraws":
        return self

    def __exit__(self, *exc) -> None:
        if self.after is not None:
            _set_rng_state(self.after)


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
