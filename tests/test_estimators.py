"""Estimators compute what the reference document says they compute."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from estimators import ESTIMATORS
from estimators.evograd import evograd_hypergradient
from estimators.functional import grads, leaf_copy, scratch_buffers
from harness.train.contract import check_estimator
from tests.helpers import build, cosine, estimator, flat, inputs_for, rel_err, small_mwn
from workloads.mwn import MWNProblem
from workloads.toy1d import exact_hypergradient


def to_double(problem, inputs):
    """float64 copies of model, weighting net and batches, for closed-form comparisons."""
    problem.model.double()
    for m in (getattr(problem, "vnet", None),):
        if m is not None:
            m.double()
    dbl = lambda b: (b[0].double(), b[1])
    inputs.train_batches = [dbl(b) for b in inputs.train_batches]
    inputs.val_batch = dbl(inputs.val_batch)
    return inputs


def test_unroll_backends_agree_on_mwn():
    problem, trainer = small_mwn(width=8)
    inputs = inputs_for(trainer)
    g_func = estimator("unroll", T=1, backend="func").hypergradient(inputs)
    g_higher = estimator("unroll", T=1, backend="higher").hypergradient(inputs)
    assert flat(g_func).abs().sum() > 0
    assert rel_err(g_higher, g_func) < 1e-6


def test_unroll_backends_agree_for_several_steps():
    problem, trainer = small_mwn(width=4)
    inputs = inputs_for(trainer, n_batches=3)
    g_func = estimator("unroll", T=3, backend="func").hypergradient(inputs)
    g_higher = estimator("unroll", T=3, backend="higher").hypergradient(inputs)
    assert rel_err(g_higher, g_func) < 1e-5


def test_t1t2_exact_equals_one_step_unroll():
    problem, trainer = small_mwn(width=8)
    inputs = inputs_for(trainer)
    g_unroll = estimator("unroll", T=1).hypergradient(inputs)
    g_t1t2 = estimator("t1t2", mode="exact").hypergradient(inputs)
    assert rel_err(g_t1t2, g_unroll) < 1e-5


class _FixedInputMWN(MWNProblem):
    """MW-Net whose weighting net sees the losses of the real weights as constants.

    In MW-Net proper the weighting net's input is the detached loss of the *current*
    weights, so a finite difference in w also moves that input, a path the exact mixed
    derivative (through the detach) does not have. Holding the input fixed makes the
    training loss smooth in (w, lam), the setting in which DARTS's difference must agree.
    """

    def train_loss(self, weights, buffers, hparams, batch):
        x, y = batch
        with torch.no_grad():
            fixed = F.cross_entropy(self.logits(self.weights, scratch_buffers(self.buffers), x), y,
                                    reduction="none")
        losses = F.cross_entropy(self.logits(weights, buffers, x), y, reduction="none")
        return (self.sample_weights(hparams, fixed) * losses).sum()


def test_t1t2_fd_agrees_with_exact_on_a_smooth_problem():
    problem, trainer = small_mwn(width=8)
    problem.__class__ = _FixedInputMWN
    inputs = inputs_for(trainer)
    exact = estimator("t1t2", mode="exact").hypergradient(inputs)
    fd = estimator("t1t2", mode="fd").hypergradient(inputs)
    assert cosine(fd, exact) > 0.99


def test_t1t2_fd_agrees_with_exact_on_toy1d():
    problem = build("toy1d", lam0=0.3, x0=0.2)
    from harness.train.metaloop import MetaTrainer
    trainer = MetaTrainer(problem, estimator("plain"), 10)
    inputs = inputs_for(trainer)
    exact = estimator("t1t2", mode="exact").hypergradient(inputs)
    fd = estimator("t1t2", mode="fd").hypergradient(inputs)
    assert rel_err(fd, exact) < 1e-3


def evograd_closed_form(problem, inputs, noises, sigma, tau):
    """g = -(1/tau) sum_k a_k <G, w_k - w*> (grad_lam l_k - sum_j a_j grad_lam l_j)."""
    lam = inputs.hparams
    base = {k: v.detach() for k, v in inputs.weights.items()}
    buffers = scratch_buffers(inputs.buffers)
    cands = [{k: base[k] + sigma * e[k] for k in base} for e in noises]
    losses, dl = [], []
    for w in cands:
        l = problem.train_loss(w, buffers, lam, inputs.train_batches[0])
        losses.append(l.detach())
        dl.append(flat(grads(l, lam)))
    a = torch.softmax(-torch.stack(losses) / tau, 0)
    w_star = leaf_copy({k: sum(a[i] * c[k] for i, c in enumerate(cands)) for k in base})
    G = grads(problem.val_loss(w_star, buffers, lam, inputs.val_batch), w_star)
    mean_dl = sum(a[j] * dl[j] for j in range(len(cands)))
    g = sum(a[k] * sum((G[n] * (cands[k][n] - w_star[n])).sum() for n in base) * (dl[k] - mean_dl)
            for k in range(len(cands)))
    return -g / tau


@pytest.mark.parametrize("K", [2, 5])
def test_evograd_equals_its_closed_form(K):
    problem, trainer = small_mwn(width=4)
    inputs = to_double(problem, inputs_for(trainer))
    est = estimator("evograd", K=K, sigma=0.01, tau=0.05)
    noises = est.draw_noises(inputs.weights)
    g = evograd_hypergradient(problem, inputs.weights, inputs.buffers, inputs.hparams,
                              inputs.train_batches[0], inputs.val_batch, noises, 0.01, 0.05)
    expected = evograd_closed_form(problem, inputs, noises, 0.01, 0.05)
    assert expected.abs().sum() > 0
    assert float((flat(g) - expected).detach().norm() / expected.detach().norm()) < 1e-6


def test_evograd_k2_closed_form_is_the_pairwise_formula():
    """K=2: g = -(a1 a2 / tau) <G, w1 - w2> (grad l1 - grad l2), the reference's special case."""
    problem, trainer = small_mwn(width=4)
    inputs = to_double(problem, inputs_for(trainer))
    est = estimator("evograd", K=2, sigma=0.01, tau=0.05)
    noises = est.draw_noises(inputs.weights)
    general = evograd_closed_form(problem, inputs, noises, 0.01, 0.05)
    lam, base = inputs.hparams, {k: v.detach() for k, v in inputs.weights.items()}
    buffers = scratch_buffers(inputs.buffers)
    w1, w2 = ({k: base[k] + 0.01 * e[k] for k in base} for e in noises)
    l1, l2 = (problem.train_loss(w, buffers, lam, inputs.train_batches[0]) for w in (w1, w2))
    a = torch.softmax(-torch.stack([l1.detach(), l2.detach()]) / 0.05, 0)
    w_star = leaf_copy({k: a[0] * w1[k] + a[1] * w2[k] for k in base})
    G = grads(problem.val_loss(w_star, buffers, lam, inputs.val_batch), w_star)
    inner = sum((G[n] * (w1[n] - w2[n])).sum() for n in base)
    pairwise = -(a[0] * a[1] / 0.05) * inner * (flat(grads(l1, lam)) - flat(grads(l2, lam)))
    assert float((general - pairwise).detach().norm() / pairwise.detach().norm()) < 1e-8


@pytest.mark.parametrize("lam", [0.1, 0.3, 0.5, 0.7, 1.4, 1.7, 2.0])
def test_evograd_has_the_sign_of_the_exact_hypergradient_on_toy1d(lam):
    """The paper's 1-D illustration: Gaussian noise, sigma=1, tau=0.5, K=100, at x*(lam)."""
    problem = build("toy1d", lam0=lam, x0=1 / (1 + lam))
    from harness.train.metaloop import MetaTrainer
    trainer = MetaTrainer(problem, estimator("plain"), 10)
    inputs = inputs_for(trainer)
    for seed in range(5):
        g = estimator("evograd", seed=seed, K=100, sigma=1.0, tau=0.5, noise="gaussian").hypergradient(inputs)
        assert torch.sign(g["lam"]) == torch.sign(torch.tensor(exact_hypergradient(lam)))


@pytest.mark.parametrize("lam", [0.2, 0.5, 1.0, 1.5, 2.0])
def test_long_unroll_converges_to_the_closed_form_on_toy1d(lam):
    problem = build("toy1d", lam0=lam, x0=0.0)
    from harness.train.metaloop import MetaTrainer
    trainer = MetaTrainer(problem, estimator("plain"), 10)
    inputs = inputs_for(trainer, n_batches=400)
    g = estimator("unroll", T=400).hypergradient(inputs)["lam"]
    assert abs(float(g) - exact_hypergradient(lam)) < 1e-3


# Every registered estimator, plus each non-default mode, must leave the real state alone.
OWN = [name for name, cls in ESTIMATORS if cls.__module__.startswith("estimators.")]
VARIANTS = [(name, {}) for name in OWN] + [
    ("unroll", {"backend": "higher"}), ("unroll", {"T": 2}), ("t1t2", {"mode": "fd"}),
    ("evograd", {"K": 3, "noise": "gaussian"}), ("neumann", {"terms": 2}),
    ("hyperdistill", {"unit_direction": True})]


def test_every_registered_estimator_is_covered():
    own_now = {name for name, cls in ESTIMATORS if cls.__module__.startswith("estimators.")}
    assert {n for n, _ in VARIANTS} == own_now and {"hyperdistill", "neumann"} <= own_now


@pytest.mark.parametrize("name,params", VARIANTS, ids=lambda v: str(v))
def test_no_estimator_changes_real_state_and_gradients_have_the_hyperparameters_structure(name, params):
    """The public contract check (harness.train.contract; tests/test_layout.py shows it fails
    on each kind of breach) on every mode of every estimator of hgbench's own."""
    check_estimator(name, params)
