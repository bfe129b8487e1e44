"""Pass counts per hyper-step, from the work done, against hand counts for every estimator;
and the flag for memory that grows per step, on an estimator written to leak."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from estimators.base import Estimator
from harness.core.schema import PASS_COLUMNS
from harness.measure.memory import growth_per_step, rss_probe_unavailable
from harness.measure.pass_counts import PassCounter, PassCounts, count_passes
from harness.measure.passes import growth_pass
from harness.plan.suite import build_suite
from harness.run.cell_process import probe_trainer
from harness.train.metaloop import MetaTrainer

T, V, B, K, D, J = PASS_COLUMNS  # train fwd, val fwd, first-order bwd, kept bwd, double bwd, JVP

# By hand, from each estimator's algorithm (K: of the backwards, those with create_graph).
HAND_COUNTS = {
    # nothing: the plain meta-learner's hyper-step computes no hypergradient
    "plain()": {},
    # Ltrain forward, grad kept (create_graph); Lval forward; its backward runs through the
    # kept gradient: one double backward
    "unroll(T=1,backend=func)": {T: 1, B: 1, K: 1, V: 1, D: 1},
    # the same through higher's differentiable optimiser
    "unroll(T=1,backend=higher)": {T: 1, B: 1, K: 1, V: 1, D: 1},
    # two kept first-order backwards (the second w.r.t. w_1 stops at w_1), one double
    "unroll(T=2,backend=func)": {T: 2, B: 2, K: 2, V: 1, D: 1},
    # forward unroll: 2 x (forward, backward); Lval forward and backward; the reverse sweep:
    # per step one forward on dual weights and one backward carrying the tangents; no graph kept
    "unroll(T=2,backend=mixed)": {T: 4, B: 5, V: 1, J: 2},
    # grad kept; Lval at w_1 with its first-order backward; d/dlam <g, alpha>: one double
    "t1t2(mode=exact,fd_scale=0.01)": {T: 1, B: 2, K: 1, V: 1, D: 1},
    # grad at w (not kept), Lval backward, Ltrain at w +- eps alpha with a backward each
    "t1t2(mode=fd,fd_scale=0.01)": {T: 3, B: 4, V: 1},
    # K=2 perturbed training forwards (no backward), Lval at w* with one first-order backward
    "evograd": {T: 2, V: 1, B: 1},
    # the distilled step's gradient kept, Lval backward, one double backward (the JVP's
    # reverse-mode twin: d/dlam <grad Ltrain(w*), alpha>)
    "hyperdistill": {T: 1, B: 2, K: 1, V: 1, D: 1},
    # grad kept, Lval backward, 2 Hessian-vector products and the mixed product: 3 double
    "neumann(terms=2,alpha=0.0)": {T: 1, B: 2, K: 1, V: 1, D: 3},
    # Lval backward, Ltrain at w +- eps v with a backward each
    "sama(fd_scale=0.01,adapt=True)": {T: 2, B: 3, V: 1},
}
ESTIMATORS = ["plain", {"name": "unroll", "params": {"T": 1, "backend": ["func", "higher"]}},
              {"name": "unroll", "params": {"T": 2, "backend": ["func", "mixed"]}},
              {"name": "t1t2", "params": {"mode": ["exact", "fd"]}}, "evograd", "hyperdistill",
              {"name": "neumann", "params": {"terms": 2}}, "sama"]
TINY = {"workloads": [{"name": "mwn", "backbone": "resnet10", "params": {"width": 4, "batch_size": 8, "image_size": 8}}],
        "estimators": ESTIMATORS, "train_steps": 0, "warmup_steps": 1, "timed_steps": 1}


def _variant(label: str) -> str:
    name = label.split("/")[2]
    return name.split("(")[0] if name.startswith(("evograd", "hyperdistill")) else name


def test_every_estimators_passes_equal_the_hand_count():
    seen = {}
    for cell in build_suite(TINY).cells:
        got = count_passes(probe_trainer(cell, torch.device("cpu")))
        seen[_variant(cell.label())] = got
    assert set(seen) == set(HAND_COUNTS)
    for variant, hand in HAND_COUNTS.items():
        assert seen[variant] == {c: hand.get(c, 0) for c in PASS_COLUMNS}, variant


def test_predicted_passes_under_fake_tensors_equal_the_hand_count_too():
    """`hgbench predict` counts them on the fake step: no tensor of it is allocated."""
    from harness.run.predict import predict_cell

    # (a fake step costs 0.3 ms an op: the variants that show every kind of pass)
    kinds = {"unroll(T=2,backend=mixed)", "neumann(terms=2,alpha=0.0)"}
    for cell in [c for c in build_suite(TINY).cells if _variant(c.label()) in kinds]:
        row = predict_cell(cell, "cuda", None)
        hand = HAND_COUNTS[_variant(cell.label())]
        assert row["status"] == "ok" and {c: row[c] for c in PASS_COLUMNS} == {c: hand.get(c, 0) for c in PASS_COLUMNS}


@pytest.mark.parametrize("backend", ["mixed-jvp", "mixed-linearize"])
def test_the_functorch_sweeps_count_as_the_dual_tensor_sweep(backend):
    """mixed-jvp: the sweep's products through torch.func.jvp of torch.func.grad, whose own
    autograd.grad asks for create_graph (for an enclosing transform) but is first-order here.
    mixed-linearize: the same passes, moved: per step the forward unroll runs the loss once
    eagerly (the inner gradient) and once traced on duals (the linear map); the sweep then
    applies the stored maps and calls no loss."""
    from tests.helpers import build, estimator
    trainer = MetaTrainer(build("mwn", width=4, batch_size=8, image_size=8),
                          estimator("unroll", T=2, backend=backend), 100)
    hand = HAND_COUNTS["unroll(T=2,backend=mixed)"]
    assert count_passes(trainer) == {c: hand.get(c, 0) for c in PASS_COLUMNS}


def test_the_counts_are_the_schemas_columns():
    assert list(PassCounts().as_row()) == PASS_COLUMNS


class _Losses:
    """A stand-in problem: two losses of a weight vector."""

    def train_loss(self, w):
        return (w ** 3).sum()

    def val_loss(self, w):
        return (w ** 2).sum()


def test_a_backward_through_a_kept_gradient_is_double_and_one_beside_it_is_not():
    problem = _Losses()
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    counter = PassCounter(problem)
    with counter.counting():
        g, = torch.autograd.grad(problem.train_loss(x), x, create_graph=True)  # kept, first order
        torch.autograd.grad(problem.val_loss(x), x)                             # first order
        (g ** 2).sum().backward()                                               # through g: double
        y = x.detach().requires_grad_()
        torch.autograd.grad(problem.val_loss(y * 2), y)                         # another graph
        w1 = x - 0.1 * g
        torch.autograd.grad(problem.val_loss(w1), w1)  # stops at w1: g's node is not run
    c = counter.counts
    assert (c.train_forwards, c.val_forwards) == (1, 3)
    assert (c.backwards, c.kept_backwards, c.double_backwards, c.forward_mode) == (4, 1, 1, 0)
    assert "train_loss" not in vars(problem) and torch.autograd.grad.__module__ == "torch.autograd"


def test_a_loss_on_dual_tensors_is_a_forward_mode_pass():
    problem = _Losses()
    counter = PassCounter(problem)
    with counter.counting(), fwAD.dual_level():
        problem.train_loss(fwAD.make_dual(torch.ones(3), torch.ones(3)))
        problem.train_loss(torch.ones(3))
    assert (counter.counts.train_forwards, counter.counts.forward_mode) == (2, 1)


def test_growth_is_the_median_rise_and_flags_only_a_rise_every_step():
    mib = 2 ** 20
    assert growth_per_step([0, 4 * mib, 8 * mib, 12 * mib], 100 * mib) == {
        "memory_growth_bytes_per_step": 4 * mib, "memory_grows": True}
    # one jump (the allocator taking a new arena) is not growth per step
    assert growth_per_step([0, 0, 30 * mib, 30 * mib, 30 * mib], 100 * mib)["memory_grows"] is False
    # a rise below 1% of the peak is not flagged
    assert growth_per_step([0, mib, 2 * mib, 3 * mib], 1000 * mib)["memory_grows"] is False
    assert growth_per_step([0, mib], 10)["memory_grows"] is None  # too few readings


class _KeepsEveryGraph(Estimator):
    """Written to leak, as higher#6 did: every hyper-step keeps its training loss with the
    whole graph (the activations) alive."""
    name = "leaky"
    params = ()

    def __init__(self):
        super().__init__({}, 0)
        self.kept = []

    def hypergradient(self, inputs):
        w = {k: v.detach().requires_grad_() for k, v in inputs.weights.items()}
        self.kept.append(inputs.problem.train_loss(w, {k: v.clone() for k, v in inputs.buffers.items()},
                                                   inputs.hparams, inputs.train_batches[0]))
        return {k: torch.zeros_like(v) for k, v in inputs.hparams.items()}


@pytest.mark.skipif(rss_probe_unavailable() is not None, reason=str(rss_probe_unavailable()))
def test_an_estimator_that_keeps_every_graph_is_flagged():
    """(In this test process, not in live-bytes mode, an honest trainer read 0 alone and 1.1
    MB a step after the whole suite had run: the honest side is tested in a cell's own
    process, below.)"""
    cell = build_suite({**TINY, "workloads": [{"name": "mwn", "backbone": "resnet10",
                                               "params": {"width": 16, "batch_size": 32, "image_size": 16}}],
                        "estimators": [{"name": "unroll", "params": {"T": 1}}]}).cells[0]
    honest = probe_trainer(cell, torch.device("cpu"))
    leaky = MetaTrainer(honest.problem, _KeepsEveryGraph(), 10 ** 9)
    for _ in range(2):  # warm-up, as a cell's is
        leaky.iteration(hyper=True)
    leak = growth_pass(leaky, torch.device("cpu"), peak_bytes=2 ** 20)
    kept = sum(t.grad_fn is not None for t in leaky.estimator.kept)
    assert kept == 6 and leak["memory_grows"] is True, leak


@pytest.mark.skipif(rss_probe_unavailable() is not None, reason=str(rss_probe_unavailable()))
def test_an_honest_cell_in_its_own_process_is_not_flagged(tmp_path):
    """In a cell's process the allocator is switched to speed after the memory pass, and the
    heap then grew by 2.8-14 MB a step for ten steps (unroll, T1-T2 exact, Neumann at MW-Net
    ResNet10 width 16 were all flagged when growth was read during the timing): growth is
    read in the memory pass, where the resident set follows live memory."""
    from harness.cli import main

    suite = tmp_path / "s.yaml"
    suite.write_text("workloads: [{name: mwn, backbone: resnet10, params: {width: 16, batch_size: 32}}]\n"
                     "estimators: [{name: unroll, params: {T: 1}}]\ntrain_steps: 0\nwarmup_steps: 2\n"
                     "timed_steps: 2\ncurve_points: 0\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    row = pd.read_csv(tmp_path / "run" / "results.csv").iloc[0]
    assert row["memory_grows"] == False and row["memory_growth_bytes_per_step"] < 256 * 1024, row  # noqa: E712
