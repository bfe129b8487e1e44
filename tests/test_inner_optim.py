"""The real inner optimiser: SGD, Adam and AdamW with warm-up and step or linear decay, and the
slope of its update that SAMA adapts to, checked against hand-written recurrences."""
from __future__ import annotations

import math

import pytest
import torch

from estimators.base import HyperStepInputs
from harness.train.metaloop import MetaTrainer
from tests.helpers import build, estimator, inputs_for
from workloads.base import InnerOptim


def lrs(inner: InnerOptim, total: int) -> list[float]:
    w = torch.zeros(1, requires_grad=True)
    opt, sched = inner.build([w], total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        w.grad = torch.ones(1)
        opt.step()
        sched.step()
    return out


def test_step_decay_matches_multisteplr():
    inner = InnerOptim(lr=0.1, momentum=0.9, milestones=(0.5, 0.75))
    w = torch.zeros(1, requires_grad=True)
    ref_opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, milestones=[10, 15], gamma=0.1)
    want = []
    for _ in range(20):
        want.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert lrs(inner, 20) == pytest.approx(want)


def test_linear_warmup_then_linear_decay():
    got = lrs(InnerOptim(lr=1.0, kind="adamw", warmup=0.2, schedule="linear"), 10)
    assert got == pytest.approx([0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])


@pytest.mark.parametrize("kind,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW)])
def test_each_kind_builds_its_torch_optimiser(kind, cls):
    opt, _ = InnerOptim(lr=1e-3, kind=kind, weight_decay=0.01).build([torch.zeros(2, requires_grad=True)], 5)
    assert type(opt) is cls and opt.param_groups[0]["weight_decay"] == 0.01


def test_adam_update_derivative_is_the_hand_written_slope():
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.01
    inner = InnerOptim(lr=lr, kind="adam", betas=(b1, b2), eps=eps)
    w = torch.zeros(3, requires_grad=True)
    opt, _ = inner.build([w], 100)
    assert inner.update_derivative(opt) == [lr]          # no state yet: the learning rate
    grads = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 1.0, -1.0]), torch.tensor([2.0, 0.0, 1.0])]
    v = torch.zeros(3)
    for g in grads:
        w.grad = g.clone()
        opt.step()
        v = b2 * v + (1 - b2) * g * g
    t = len(grads) + 1
    want = lr * (1 - b1) / (1 - b1 ** t) / ((v / (1 - b2 ** (t - 1))).sqrt() + eps)
    (got,) = inner.update_derivative(opt)
    assert torch.allclose(got, want, rtol=1e-5)


def test_sgd_update_derivative_is_the_learning_rate():
    inner = InnerOptim(lr=0.05, momentum=0.9)
    opt, _ = inner.build([torch.zeros(2, requires_grad=True)], 10)
    assert inner.update_derivative(opt) == [0.05]


def test_sama_adapts_to_adam_per_coordinate():
    """SAMA's v under an Adam inner optimiser is alpha times Adam's slope, elementwise: with
    adapt on, its hypergradient equals the one computed here by hand from that v."""
    problem = build("rotation", "lenet", 0, width=2, batch_size=16)
    trainer = MetaTrainer(problem, estimator("plain"), total_steps=50)
    for _ in range(3):
        trainer.iteration()
    slope = trainer.update_derivative()
    assert any(isinstance(s, torch.Tensor) and s.std() > 0 for s in slope.values())
    # in float64, so that the finite difference is exact to its truncation error
    problem.model.double()
    problem.hparams = {"angle": problem.hparams["angle"].detach().double().requires_grad_()}
    base = inputs_for(trainer)
    inputs = HyperStepInputs(problem, [tuple(t.double() if t.is_floating_point() else t for t in b)
                                       for b in base.train_batches],
                             tuple(t.double() if t.is_floating_point() else t for t in base.val_batch),
                             base.lr, base.step, trainer.update_derivative)
    got = estimator("sama", fd_scale=1e-3).hypergradient(inputs)
    # by hand: alpha by one backward, then the exact mixed derivative by double backward
    lam, batch = inputs.hparams, inputs.train_batches[0]
    buffers = {k: b.clone() for k, b in inputs.buffers.items()}
    w = {k: t.detach().clone().requires_grad_() for k, t in inputs.weights.items()}
    alpha = torch.autograd.grad(problem.val_loss(w, buffers, lam, inputs.val_batch), list(w.values()))
    g = torch.autograd.grad(problem.train_loss(w, buffers, lam, batch), list(w.values()), create_graph=True)
    inner = sum((gi * (slope[k] * a)).sum() for (k, gi, a) in zip(w, g, alpha))
    want = -torch.autograd.grad(inner, lam["angle"])[0]
    assert math.isclose(float(got["angle"]), float(want), rel_tol=1e-4)
