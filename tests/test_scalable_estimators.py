"""SAMA and the mixed-mode (forward-over-reverse) unroll compute what their papers define,
checked against computations written here (double backward, closed forms)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.train.metaloop import MetaTrainer
from tests.helpers import build, cosine, estimator, inputs_for, rel_err
from tests.quadratic import Quadratic
from tests.test_metaxl import TINY as METAXL_TINY
from tests.test_estimators import _FixedInputMWN

REPO = Path(__file__).resolve().parent.parent


def _trained(workload: str, steps: int = 2, **params):
    problem = build(workload, **params)
    trainer = MetaTrainer(problem, estimator("plain"), 100)
    for _ in range(steps):
        trainer.iteration()
    return problem, trainer


def _seeded(est, inputs, seed: int = 7):
    """A hypergradient drawn from a fixed random state (LFT's FT layers draw noise)."""
    torch.manual_seed(seed)
    return est.hypergradient(inputs)




@pytest.mark.parametrize("workload,params", [("mwn", {"width": 4, "batch_size": 16}), ("lft", {"width": 4}),
                                             ("metaxl", METAXL_TINY)])
@pytest.mark.parametrize("backend,T", [("mixed", 1), ("mixed", 3), ("mixed-jvp", 1), ("mixed-jvp", 3),
                                       ("mixed-linearize", 2)])  # (linearize: ~4 s a step to trace)
def test_mixed_mode_unroll_equals_reverse_over_reverse(workload, params, T, backend):
    problem, trainer = _trained(workload, **params)
    inputs = inputs_for(trainer, T)
    buffers = {k: v.clone() for k, v in problem.buffers.items()}
    tracking = [getattr(m, "track_running_stats", None) for m in problem.model.modules()]
    func = _seeded(estimator("unroll", T=T), inputs)
    after_func = torch.get_rng_state()
    if backend == "mixed-linearize" and workload != "mwn":  # (LFT: episodes split by a mask; MetaXL: token masks)
        with pytest.raises(NotImplementedError, match="cannot follow a value-dependent op.*use backend mixed"):
            _seeded(estimator("unroll", T=T, backend=backend), inputs)
        return
    mixed = _seeded(estimator("unroll", T=T, backend=backend), inputs)
    assert rel_err(mixed, func) < 1e-5
    assert torch.equal(torch.get_rng_state(), after_func)  # the random stream goes on alike
    assert all(torch.equal(v, buffers[k]) for k, v in problem.buffers.items())  # BN statistics untouched
    # (the functorch sweeps switch the statistics' updates off and back on)
    assert [getattr(m, "track_running_stats", None) for m in problem.model.modules()] == tracking


class _NoisyQuadratic(Quadratic):
    """The quadratic with a fresh random weighting of its penalty at every training-loss call
    (as LFT's FT noise or dropout draw): a sweep that recomputed a step under other draws, or
    left the random stream elsewhere than the unrolled steps did, would differ from `func`."""

    def train_loss(self, weights, buffers, hparams, batch):
        w = weights["w"]
        r = w - self.c
        noise = 1 + 0.5 * torch.rand(w.shape, dtype=w.dtype)
        return 0.5 * r @ self.A @ r + 0.5 * (hparams["lam"] * noise * w ** 2).sum()


@pytest.mark.parametrize("backend", ["mixed", "mixed-jvp", "mixed-linearize"])
def test_every_sweep_recomputes_a_step_under_its_own_draws(backend):
    trainer = MetaTrainer(_NoisyQuadratic(lr=0.3), estimator("plain"), 100)
    inputs = inputs_for(trainer, 4)
    func = _seeded(estimator("unroll", T=4), inputs)["lam"]
    after_func = torch.get_rng_state()
    other_draws = _seeded(estimator("unroll", T=4), inputs, seed=8)["lam"]
    assert float((other_draws - func).abs().max()) > 1e-3 * float(func.abs().max())  # the draws matter
    mixed = _seeded(estimator("unroll", T=4, backend=backend), inputs)["lam"]
    assert torch.allclose(mixed, func, rtol=1e-10, atol=1e-14)
    assert torch.equal(torch.get_rng_state(), after_func)


@pytest.mark.parametrize("T", [1, 3])
def test_mixed_mode_unroll_is_exact_on_toy1d(T):
    problem, trainer = _trained("toy1d", lam0=0.3, x0=0.2)
    inputs = inputs_for(trainer, T)
    func = estimator("unroll", T=T).hypergradient(inputs)["lam"]
    mixed = estimator("unroll", T=T, backend="mixed").hypergradient(inputs)["lam"]
    assert torch.equal(mixed, func) or float((mixed - func).abs()) <= 2 * torch.finfo(func.dtype).eps * float(func.abs())


MEMORY_IN_T = textwrap.dedent("""
    from harness.measure.memory import AllocatorMode, PeakRSS
    assert AllocatorMode.for_live_bytes()
    import gc, json
    from tests.test_scalable_estimators import _trained
    from tests.helpers import estimator, inputs_for
    problem, trainer = _trained("mwn", width=16, batch_size=32)
    peaks = {}
    for backend in ("func", "mixed"):
        for T in (1, 4):
            est, inputs = estimator("unroll", T=T, backend=backend), inputs_for(trainer, T)
            est.hypergradient(inputs)
            gc.collect()
            with PeakRSS() as probe:
                est.hypergradient(inputs)
            peaks[f"{backend}{T}"] = probe.delta_bytes
    print(json.dumps(peaks))
""")


def test_mixed_mode_memory_is_flat_in_the_horizon():
    """Reverse-over-reverse keeps every step's graph, of its backward too, until the end; the
    sweep keeps the iterates and one step's first-order graph (with its tangents) at a time.
    Live bytes, in a fresh process (the saved-tensor probe cannot follow forward-mode AD)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", MEMORY_IN_T], env=env, cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=300).stdout
    peak = json.loads(out)
    assert peak["func4"] > 2 * peak["func1"]
    assert peak["mixed4"] < 1.2 * peak["mixed1"]
    assert peak["mixed4"] < peak["func4"] / 1.5


@pytest.mark.parametrize("backend", ["mixed", "mixed-jvp", "mixed-linearize"])
def test_mixed_mode_names_the_op_torch_cannot_differentiate_forward(backend):
    problem, trainer = _trained("rotation", steps=1)
    with pytest.raises(NotImplementedError, match="grid_sampler_2d.*use backend func") as got:
        estimator("unroll", backend=backend).hypergradient(inputs_for(trainer))
    assert "\n" not in str(got.value)


def test_sama_without_adaptation_is_the_first_order_implicit_estimate_on_the_quadratic():
    """Identity base Jacobian: g = -d/dlam <grad_w Ltrain(w), grad_w Lval(w)> = -w * (w - d)
    (d grad_w Ltrain / d lam = diag(w)); the central difference is exact on a quadratic."""
    q = Quadratic(lr=0.05)
    trainer = MetaTrainer(q, estimator("plain"), 100)
    w = q.weights["w"].detach()
    g = estimator("sama", adapt=False).hypergradient(inputs_for(trainer))["lam"]
    assert torch.allclose(g, -w * (w - q.d), rtol=1e-9)
    adapted = estimator("sama").hypergradient(inputs_for(trainer))["lam"]  # SGD: times the lr
    assert torch.allclose(adapted, -0.05 * w * (w - q.d), rtol=1e-9)


def test_sama_on_mwn_matches_the_double_backward_estimate_up_to_the_finite_difference():
    problem, trainer = _trained("mwn", width=8, batch_size=16)
    problem.__class__ = _FixedInputMWN  # training loss smooth in (w, lam)
    inputs = inputs_for(trainer)
    lam, batch = inputs.hparams, inputs.train_batches[0]
    w = {k: v.detach().requires_grad_() for k, v in inputs.weights.items()}
    buffers = {k: v.clone() for k, v in inputs.buffers.items()}
    v = torch.autograd.grad(problem.val_loss(w, buffers, lam, inputs.val_batch), list(w.values()))
    g_w = torch.autograd.grad(problem.train_loss(w, buffers, lam, batch), list(w.values()), create_graph=True)
    mixed = torch.autograd.grad(g_w, list(lam.values()), grad_outputs=v)
    # v = the real update's slope times alpha: Nesterov SGD's is (1 + momentum) lr
    slope = inputs.lr * (1 + problem.inner.momentum) if problem.inner.nesterov else inputs.lr
    expected = {k: -slope * m for k, m in zip(lam, mixed)}
    assert cosine(estimator("sama").hypergradient(inputs), expected) > 0.999
    # the central difference's error is in the magnitude here (ReLU kinks): +32% at fd_scale
    # 0.01, and it shrinks with the step
    errors = [rel_err(estimator("sama", fd_scale=s).hypergradient(inputs), expected) for s in (1e-2, 1e-3, 1e-4)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1


@pytest.mark.parametrize("lam", [0.3, 2.0])
def test_sama_on_toy1d_is_its_closed_form_at_the_optimum(lam):
    """At x*(lam) = 1/(1+lam): grad_x Lval = 2(x - 0.5), d/dlam grad_x Ltrain = 2x, so SAMA
    without adaptation is -4x(x - 0.5) (the implicit hypergradient with the Hessian 2(1+lam)
    taken as the identity)."""
    x = 1 / (1 + lam)
    problem, trainer = _trained("toy1d", steps=0, lam0=lam, x0=x)
    g = float(estimator("sama", adapt=False).hypergradient(inputs_for(trainer))["lam"])
    assert g == pytest.approx(-4 * x * (x - 0.5), rel=1e-4, abs=1e-6)
