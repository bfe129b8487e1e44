"""Small pure helpers shared by estimators: functional copies, lookahead steps, safe grads."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
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
    keys = list(outputs)
    names = list(inputs)
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


def mixed_vjp(problem: BilevelProblem, weights: Mapping[str, Tensor], buffers: TensorDict,
              hparams: Mapping[str, Tensor], batch: Any, vector: Mapping[str, Tensor],
              lr: float) -> TensorDict:
    """vector . dPhi(w, lam; D)/dlam = -lr * grad_lam <grad_w Ltrain(w, lam; D), vector>:
    one double backward through the training loss only."""
    w = leaf_copy(weights)
    g = grads(problem.train_loss(w, buffers, hparams, batch), w, create_graph=True)
    return {k: -lr * t for k, t in vjp_grads(g, hparams, vector).items()}
