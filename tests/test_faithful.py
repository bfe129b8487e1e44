"""Faithful to the papers' own code (issue 22): the LFT model as the official code builds it,
common random numbers in finite differences, HyperDistill's distilled pair from past real
steps, EvoGrad's perturbation set and order, SAMA's SGD slope. Every expected value is
computed here from the definitions (autograd directly, torch's own optimiser), not with the
project's helpers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.core.errors import ConfigError
from harness.train.metaloop import MetaTrainer
from tests.helpers import build, estimator, inputs_for, rel_err
from tests.test_metaxl import TINY as METAXL_TINY
from workloads.backbones import FeatureWiseTransform
from workloads.base import InnerOptim
from workloads.lft import aux_weight

TINY_LFT = dict(data="synthetic", width=4, n_way=2, n_shot=1, n_query=2, num_classes=3)


# ----------------------------------------------------------------- the LFT model


def official_ft_count(blocks: list[int], width: int) -> int:
    """methods/backbone.py: a FeatureWiseTransformation2d_fw as each SimpleBlock's BN2 and as
    its BNshortcut (the first block of stages 2-4, where the width doubles); gamma and beta
    of shape [1, C, 1, 1] each."""
    channels = 0
    for i, n in enumerate(blocks):
        c = width * 2 ** i
        channels += n * c + (c if i > 0 else 0)
    return 2 * channels


@pytest.mark.parametrize("backbone,blocks", [("resnet10", [1, 1, 1, 1]), ("resnet18", [2, 2, 2, 2]),
                                             ("resnet34", [3, 4, 6, 3])])
def test_lft_has_the_official_feature_wise_transformations(backbone, blocks):
    problem = build("lft", backbone, data="synthetic", width=8, image_size=193, stem="imagenet")
    assert sum(v.numel() for v in problem.hparams.values()) == official_ft_count(blocks, 8)
    assert problem.describe()["n_hparams"] == official_ft_count(blocks, 8)  # the row's FT count
    assert official_ft_count([3, 4, 6, 3], 8) == 1168  # the count the official model reports
    names = set(problem.hparams)
    assert all(".ft2." in n or ".shortcut.2." in n for n in names)
    assert not any(".ft1" in n or "relation" in n or "stem" in n for n in names)
    relus = [m for m in problem.model.encoder.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(m.inplace for m in relus)  # backbone.py: nn.ReLU(inplace=True)


@pytest.mark.parametrize("workload", ["toy1d", "mwn", "lft", "rotation", "metaxl"])
def test_every_workloads_facts_are_schema_columns(workload):
    """What `describe()` puts in a row must be a documented column (an unknown one is a
    warning in every run)."""
    from harness.core.schema import unknown_columns
    params = METAXL_TINY if workload == "metaxl" else TINY_LFT if workload == "lft" else {}
    assert unknown_columns(build(workload, **params).describe()) == []


def test_ft_noise_scale_is_softplus_with_beta_100():
    ft = FeatureWiseTransform(3)
    raw = torch.tensor([0.3, 0.5, -0.1])
    assert torch.allclose(ft.scale(raw), torch.log1p(torch.exp(100 * raw)) / 100)
    assert abs(float(ft.scale(torch.tensor(0.3, dtype=torch.float64))) - 0.3) < 1e-12  # not 0.854


def test_the_relation_module_pools_as_the_official_one_and_is_scored_by_softmax():
    problem = build("lft", data="synthetic", width=8, image_size=193, stem="imagenet", aux_batch=0)
    rel = problem.model.relation
    pools = [m for m in rel.modules() if isinstance(m, nn.MaxPool2d)]
    bns = [m for m in rel.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in rel.modules() if isinstance(m, nn.Conv2d)]
    assert len(pools) == 2 and len(bns) == 2 and all(not b.track_running_stats for b in bns)
    assert [c.padding for c in convs] == [(1, 1), (1, 1)]  # 7 px maps: under 10, padded
    c = problem.model.encoder.feature_dim
    assert rel.fc[0].in_features == c * 1 * 1  # shrink_s(7) = 1
    assert rel.fc[0].out_features == 8 and rel.fc[2].out_features == 1
    batch = next(problem.train_stream)
    torch.manual_seed(0)
    scores, labels = problem.model(*batch)
    expected = -F.log_softmax(scores, 1).gather(1, labels[:, None]).mean()
    torch.manual_seed(0)
    got = problem.train_loss(problem.weights, {k: v.clone() for k, v in problem.buffers.items()},
                             problem.hparams, batch)
    assert torch.allclose(got, expected, atol=1e-6)


def test_mse_loss_is_relationnet_squared_error_to_one_hot_of_sigmoid_scores():
    problem = build("lft", **TINY_LFT, loss="mse", aux_batch=0)
    batch = next(problem.train_stream)
    torch.manual_seed(1)
    scores, labels = problem.model(*batch)
    assert float(scores.min()) >= 0 and float(scores.max()) <= 1  # through the sigmoid
    expected = ((scores - F.one_hot(labels, 2).float()) ** 2).mean()
    torch.manual_seed(1)
    got = problem.train_loss(problem.weights, {k: v.clone() for k, v in problem.buffers.items()},
                             problem.hparams, batch)
    assert torch.allclose(got, expected, atol=1e-6)


def test_validation_loss_is_taken_in_eval_mode_with_ft_off():
    problem = build("lft", **TINY_LFT, aux_batch=0)
    batch = next(problem.val_stream)
    buffers = {k: v.clone() for k, v in problem.buffers.items()}
    problem.model.eval()
    with torch.no_grad():
        scores, labels = problem.model(*batch)
    problem.model.train()
    expected = F.cross_entropy(scores, labels)
    with torch.no_grad():
        a = problem.val_loss(problem.weights, buffers, problem.hparams, batch)
        b = problem.val_loss(problem.weights, buffers, problem.hparams, batch)  # no noise drawn
    assert torch.allclose(a, expected, atol=1e-6) and torch.equal(a, b)
    assert problem.model.training  # restored


def test_too_small_images_for_the_relation_module_are_refused_at_load():
    from harness.plan.suite import build_suite
    raw = {"name": "x", "workloads": [{"name": "lft", "params": {"stem": "imagenet", "image_size": 32}}],
           "estimators": [{"name": "plain"}]}
    with pytest.raises(ConfigError, match="image_size >= "):
        build_suite(raw)


def test_auxiliary_loss_is_added_to_the_real_step_only_with_the_official_decay():
    assert aux_weight(0.0) == 1.0 and aux_weight(0.049) == 1.0
    assert math.isclose(aux_weight(0.5), 0.9 ** 10) and math.isclose(aux_weight(0.99), 0.9 ** 19)
    problem = build("lft", **TINY_LFT, aux_batch=4)
    batch = next(problem.train_stream)
    buffers = {k: v.clone() for k, v in problem.buffers.items()}
    aux_gen_state = problem.aux_stream.gen.get_state()
    torch.manual_seed(3)
    total = problem.real_step_loss(problem.weights, buffers, problem.hparams, batch, progress=0.5)
    torch.manual_seed(3)
    train = problem.train_loss(problem.weights, {k: v.clone() for k, v in problem.buffers.items()},
                               problem.hparams, batch)
    # the aux batch, drawn again from the same generator state, through the encoder in eval mode
    problem.aux_stream.gen.set_state(aux_gen_state)
    x, y = next(problem.aux_stream)
    problem.model.eval()
    feats = F.adaptive_avg_pool2d(problem.model.encoder.feature_maps(x), 1).flatten(1)
    aux = F.cross_entropy(problem.model.aux(feats), y)
    problem.model.train()
    assert torch.allclose(total, train + 0.9 ** 10 * aux, atol=1e-5)
    assert len(y) == 4
    # the lookaheads' loss has no aux term, and the aux head is a weight the real step trains
    assert any(k.startswith("aux.") for k in problem.weights)
    trainer = MetaTrainer(problem, estimator("plain"), 10)
    before = problem.weights["aux.4.weight"].detach().clone()
    trainer.iteration()
    assert not torch.equal(before, problem.weights["aux.4.weight"])


def test_aux_batch_zero_leaves_the_training_loss_alone():
    problem = build("lft", **TINY_LFT, aux_batch=0)
    batch = next(problem.train_stream)
    assert not any(k.startswith("aux.") for k in problem.weights)
    torch.manual_seed(4)
    a = problem.real_step_loss(problem.weights, dict(problem.buffers), problem.hparams, batch, 0.0)
    torch.manual_seed(4)
    b = problem.train_loss(problem.weights, dict(problem.buffers), problem.hparams, batch)
    assert torch.equal(a, b)


# ------------------------------------------------- common random numbers (float64, LFT)


def _lft64(seed: int = 0):
    problem = build("lft", seed=seed, **TINY_LFT, aux_batch=0)
    problem.model.double()
    trainer = MetaTrainer(problem, estimator("plain"), 100)
    inputs = inputs_for(trainer)
    inputs.train_batches = [tuple(t.double() if t.is_floating_point() else t for t in b)
                            for b in inputs.train_batches]
    inputs.val_batch = tuple(t.double() if t.is_floating_point() else t for t in inputs.val_batch)
    inputs.update_derivative = None
    return problem, inputs


def _exact_sama(problem, inputs, seed: int) -> dict:
    """gFO - d/dlam <grad_w Ltrain(w, lam), v>, v = grad_w Lval(w), under the draw `seed`."""
    lam, batch = inputs.hparams, inputs.train_batches[0]
    buffers = {k: v.clone() for k, v in inputs.buffers.items()}
    w = {k: v.detach().clone().requires_grad_() for k, v in inputs.weights.items()}
    val = problem.val_loss(w, buffers, lam, inputs.val_batch)
    both = torch.autograd.grad(val, list(w.values()) + list(lam.values()), allow_unused=True)
    v = both[:len(w)]
    g_fo = [torch.zeros_like(x) if g is None else g for g, x in zip(both[len(w):], lam.values())]
    torch.manual_seed(seed)
    g_w = torch.autograd.grad(problem.train_loss(w, buffers, lam, batch), list(w.values()), create_graph=True)
    used = [(g, x) for g, x in zip(g_w, v) if g.requires_grad]
    mixed = torch.autograd.grad([g for g, _ in used], list(lam.values()), grad_outputs=[x for _, x in used])
    return {k: f - m for k, f, m in zip(lam, g_fo, mixed)}


def _exact_t1t2(problem, inputs, seed: int) -> dict:
    """gFO(w1) - lr d/dlam <grad_w Ltrain(w0, lam), alpha>, w1 = w0 - lr grad_w Ltrain(w0),
    alpha = grad_w Lval(w1), the training loss under the draw `seed`."""
    lam, batch, lr = inputs.hparams, inputs.train_batches[0], inputs.lr
    buffers = {k: v.clone() for k, v in inputs.buffers.items()}
    w0 = {k: v.detach().clone().requires_grad_() for k, v in inputs.weights.items()}
    torch.manual_seed(seed)
    g = torch.autograd.grad(problem.train_loss(w0, buffers, lam, batch), list(w0.values()), create_graph=True)
    w1 = {k: (w0[k] - lr * gk).detach().requires_grad_() for k, gk in zip(w0, g)}
    val = problem.val_loss(w1, buffers, lam, inputs.val_batch)
    both = torch.autograd.grad(val, list(w1.values()) + list(lam.values()), allow_unused=True)
    alpha = both[:len(w1)]
    g_fo = [torch.zeros_like(x) if gg is None else gg for gg, x in zip(both[len(w1):], lam.values())]
    used = [(gg, a) for gg, a in zip(g, alpha) if gg.requires_grad]
    mixed = torch.autograd.grad([gg for gg, _ in used], list(lam.values()), grad_outputs=[a for _, a in used])
    return {k: f - lr * m for k, f, m in zip(lam, g_fo, mixed)}


@pytest.mark.parametrize("name,params,exact", [
    ("sama", {"adapt": False}, _exact_sama),
    ("t1t2", {"mode": "fd"}, _exact_t1t2),
])
def test_finite_differences_converge_to_the_exact_mixed_derivative_under_ft_noise(name, params, exact):
    """Both sides of the difference see the same FT noise: the error falls with the step (to
    the float64 round-off floor) instead of growing as 1/eps, as it did with fresh draws."""
    problem, inputs = _lft64()
    expected = exact(problem, inputs, seed=11)
    errors = []
    # (larger steps cross ReLU and max-pool kinks of this tiny model; with fresh draws per
    # side the estimate's norm was 7.9 at 1e-4, 791 at 1e-6 and 7,910 at 1e-7)
    for scale in (1e-5, 1e-6, 1e-7):
        torch.manual_seed(11)
        errors.append(rel_err(estimator(name, fd_scale=scale, **params).hypergradient(inputs), expected))
    assert max(errors) < 1e-6, errors


def test_common_draws_restore_the_stream_as_after_one_evaluation():
    from estimators.functional import CommonDraws
    torch.manual_seed(5)
    with CommonDraws() as draws:
        with draws.same():
            a = torch.randn(3)
        with draws.same():
            b = torch.randn(3)
        torch.randn(100)  # whatever the estimator draws meanwhile
    after = torch.randn(3)
    torch.manual_seed(5)
    once = torch.randn(3)
    nxt = torch.randn(3)
    assert torch.equal(a, b) and torch.equal(a, once) and torch.equal(after, nxt)


# ------------------------------------------------------------------- HyperDistill


def _mwn_sgd():
    return build("mwn", width=4, batch_size=16, momentum=0.0, weight_decay=0.0)


def test_hyperdistill_gamma_zero_is_the_hypergradient_through_the_last_real_step():
    problem = _mwn_sgd()
    est = estimator("hyperdistill", gamma=0.0)
    trainer = MetaTrainer(problem, est, 1000)
    for _ in range(3):
        trainer.iteration()
    w_prev = {k: v.detach().clone() for k, v in problem.weights.items()}
    batch, lr = trainer.train_stream.peek(1)[0], trainer.lr
    trainer.iteration(hyper=False)  # the real step (w_{t-1}, D_t) -> w_t, plain SGD
    inputs = inputs_for(trainer)
    got = est.hypergradient(inputs)

    lam = problem.hparams
    buffers = {k: v.clone() for k, v in problem.buffers.items()}
    w = {k: v.clone().requires_grad_() for k, v in w_prev.items()}
    g = torch.autograd.grad(problem.train_loss(w, buffers, lam, batch), list(w.values()), create_graph=True)
    w_t = {k: w[k] - lr * gk for k, gk in zip(w, g)}
    for k in w_t:  # the real step was this plain-SGD step
        assert torch.allclose(w_t[k].detach(), problem.weights[k].detach(), atol=1e-6)
    expected = dict(zip(lam, torch.autograd.grad(problem.val_loss(w_t, buffers, lam, inputs.val_batch),
                                                 list(lam.values()))))
    assert rel_err(got, expected) < 1e-4


def test_hyperdistill_first_hyper_step_has_no_past_step_and_returns_the_direct_gradient():
    problem = _mwn_sgd()
    est = estimator("hyperdistill", gamma=0.9)
    trainer = MetaTrainer(problem, est, 1000)
    got = est.hypergradient(inputs_for(trainer))
    assert est.t == 0 and est.w_star is None
    assert all(float(v.abs().max()) == 0.0 for v in got.values())  # MW-Net's gFO is 0
    ahead = estimator("hyperdistill", gamma=0.9, lookahead=True).hypergradient(inputs_for(trainer))
    assert any(float(v.abs().max()) > 0 for v in ahead.values())


def test_hyperdistill_lookahead_with_gamma_zero_is_still_t1t2():
    problem = _mwn_sgd()
    trainer = MetaTrainer(problem, estimator("plain"), 1000)
    trainer.iteration()
    inputs = inputs_for(trainer)
    hd = estimator("hyperdistill", gamma=0.0, lookahead=True).hypergradient(inputs)
    t1 = estimator("t1t2", mode="exact").hypergradient(inputs)
    assert rel_err(hd, t1) < 1e-5


# ------------------------------------------------------------------------ EvoGrad


class Spy:
    """Wraps a problem and records the weights every training loss is evaluated at."""

    def __init__(self, problem):
        self.problem, self.seen = problem, []

    def __getattr__(self, name):
        return getattr(self.problem, name)

    def train_loss(self, weights, buffers, hparams, batch):
        self.seen.append({k: v.detach().clone() for k, v in weights.items()})
        return self.problem.train_loss(weights, buffers, hparams, batch)


def test_evograd_head_only_perturbs_the_metaxl_classifier_and_shares_the_transformer():
    problem = build("metaxl", **METAXL_TINY)
    trainer = MetaTrainer(problem, estimator("plain"), 100)
    inputs = inputs_for(trainer)
    spy = Spy(problem)
    inputs.problem = spy
    est = estimator("evograd", perturb="head", seed=3)
    got = est.hypergradient(inputs)
    base = {k: v.detach() for k, v in problem.weights.items()}
    assert len(spy.seen) == 2
    for cand in spy.seen:
        for k, v in cand.items():
            if k.startswith("classifier."):
                assert torch.allclose((v - base[k]).abs(), torch.full_like(v, 0.001), atol=1e-7)
            else:
                assert torch.equal(v, base[k])
    # the same as EvoGrad written out with head-only Rademacher noise from the cell's generator
    gen = torch.Generator().manual_seed(3)
    head = [k for k in base if k.startswith("classifier.")]
    noises = [{k: torch.sign(torch.randn(base[k].shape, generator=gen)) for k in head} for _ in range(2)]
    lam = problem.hparams
    buffers = dict(problem.buffers)
    cands = [{**base, **{k: base[k] + 0.001 * n[k] for k in head}} for n in noises]
    losses = torch.stack([problem.train_loss(c, buffers, lam, inputs.train_batches[0]) for c in cands])
    a = torch.softmax(-losses / 0.05, 0)
    w_star = {**base, **{k: a[0] * cands[0][k] + a[1] * cands[1][k] for k in head}}
    expected = dict(zip(lam, torch.autograd.grad(problem.val_loss(w_star, buffers, lam, inputs.val_batch),
                                                 list(lam.values()))))
    assert rel_err(got, expected) < 1e-5


def test_evograd_head_on_a_workload_without_one_is_one_clear_error():
    problem = build("toy1d")
    trainer = MetaTrainer(problem, estimator("plain"), 10)
    with pytest.raises(ConfigError, match="names no head.*perturb: all"):
        estimator("evograd", perturb="head").hypergradient(inputs_for(trainer))


def test_evograd_real_first_takes_the_real_step_then_perturbs_around_it_with_sigma_lr():
    problem = build("lft", **TINY_LFT, aux_batch=0, lr=0.003)
    est = estimator("evograd", order="real_first", sigma_from_lr=True)
    trainer = MetaTrainer(problem, est, 100)
    spy = Spy(problem)
    trainer.problem = spy
    used = trainer.train_stream.peek(1)[0]
    seen_batches = []
    original = est.hypergradient

    def recording(inputs):
        seen_batches.append(inputs.train_batches[0])
        assert inputs.step == 1  # after the real step
        return original(inputs)
    est.hypergradient = recording
    trainer.iteration()
    assert trainer.step == 1 and seen_batches[0] is used  # the episode the real step used
    after = {k: v.detach() for k, v in problem.weights.items()}
    cand = spy.seen[-1]  # EvoGrad's candidates come after the real step's loss
    diff = torch.cat([(cand[k] - after[k]).flatten() for k in after])
    assert torch.allclose(diff.abs(), torch.full_like(diff, 0.003), atol=1e-6)  # sigma = lr, around w_{t+1}


# ------------------------------------------------------------------ SAMA's SGD slope


@pytest.mark.parametrize("nesterov,momentum", [(True, 0.9), (False, 0.9), (False, 0.0)])
def test_sgd_update_derivative_is_the_slope_of_torch_sgd_step(nesterov, momentum):
    """d(update)/d(gradient), measured on torch's SGD: two optimisers in the same state, the
    second gradient larger by delta."""
    lr, delta = 0.1, 1e-3
    p0 = torch.tensor([1.0], dtype=torch.float64)
    ups = []
    for extra in (0.0, delta):
        p = p0.clone().requires_grad_()
        opt = torch.optim.SGD([p], lr=lr, momentum=momentum, nesterov=nesterov)
        p.grad = torch.tensor([0.5], dtype=torch.float64)
        opt.step()  # a first step, so the momentum buffer holds state
        before = p.detach().clone()
        p.grad = torch.tensor([0.2 + extra], dtype=torch.float64)
        opt.step()
        ups.append(float(before - p.detach()))
    measured = (ups[1] - ups[0]) / delta
    inner = InnerOptim(lr=lr, momentum=momentum, nesterov=nesterov)
    p = torch.zeros(1, requires_grad=True)
    opt, _ = inner.build([p], 10)
    assert math.isclose(inner.update_derivative(opt)[0], measured, rel_tol=1e-6)
