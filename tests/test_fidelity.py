"""Fidelity columns mean what they say, and measuring them changes nothing in training."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from estimators import make_estimator
from estimators.base import Estimator, HyperStepInputs
from estimators.unroll import Unroll
from harness.core.errors import ConfigError
from harness.train.fidelity import REFERENCES, Checkpoint, FidelityProbe, checkpoint_steps, flat
from harness.train.metaloop import MetaTrainer
from tests.helpers import build, rel_err, small_mwn
from tests.quadratic import Quadratic
from harness.run.cell_process import run_cell
from harness.plan.suite import build_suite

MWN = """\
train_steps: 6
warmup_steps: 0
timed_steps: 1
fidelity: {checkpoints: 2, reference_T: 3, draws: 2}
workloads: [{name: mwn, params: {width: 4, batch_size: 16}}]
"""


def cells(text: str, estimators: str):
    return build_suite(yaml.safe_load(text + f"estimators: {estimators}\n")).cells


def test_checkpoints_are_spread_over_training():
    assert checkpoint_steps(300, 3) == {50, 150, 250}
    assert checkpoint_steps(0, 3) == {0}      # cost-only cells: the initial weights, once
    assert checkpoint_steps(300, 0) == set()


LFT = """\
warmup_steps: 0
timed_steps: 1
curve_points: 0
fidelity: {checkpoints: 1, reference_T: 2, draws: 2}
workloads: [{name: lft, backbone: resnet10, params: {width: 4, n_shot: 1, n_query: 2, test_episodes: 2,
             val_episodes: 1, aux_batch: 4}}]
"""


def test_lft_one_step_estimators_see_the_references_feature_wise_noise():
    """LFT's feature-wise transformations draw noise at every training forward: the probe
    must give the estimator and each reference the same draws (before, unroll T=1 read a
    cosine of about 0.1 against the one-step lookahead it computes exactly)."""
    row = run_cell(cells("train_steps: 2\n" + LFT, "[{name: unroll, params: {T: 1}}]")[0]).row()
    assert row["status"] == "ok", row["error"]
    assert row["fid_cos_1step"] == pytest.approx(1.0, abs=1e-5)
    assert row["fid_relerr_1step"] < 1e-4 and row["fid_draws"] == 1


def test_the_probe_leaves_the_runs_random_stream_where_it_was():
    problem = build("lft", "resnet10", width=4, n_shot=1, n_query=2, test_episodes=2, val_episodes=1)
    trainer = MetaTrainer(problem, make_estimator("unroll", {"T": 1, "backend": "func"}, 0), total_steps=10)
    probe = FidelityProbe({"checkpoints": 1, "reference_T": 1, "draws": 2}, 0)
    before = torch.get_rng_state()
    probe(trainer)
    assert probe.draws == 1 and torch.equal(torch.get_rng_state(), before)


def test_one_step_estimators_have_cosine_one_against_the_one_step_reference():
    for cell in cells(MWN, "[unroll, t1t2]"):
        row = run_cell(cell).row()
        assert row["status"] == "ok"
        assert row["fid_cos_1step"] == pytest.approx(1.0, abs=1e-6), cell.estimator
        assert row["fid_cos_1step_std"] < 1e-6
        assert -1 <= row["fid_cos_long"] <= 1 and 0 <= row["fid_sign_long"] <= 1
        assert row["fid_relerr_long"] >= 0 and row["fid_cos_exact"] is None
        assert -1 <= row["fid_cos_small"] <= 1 and row["fid_relerr_small"] > 0
        assert row["fid_draws"] == 1 and row["fid_meancos_small"] is None


def test_stochastic_estimators_are_drawn_several_times_and_plain_has_no_fidelity():
    evo, plain = (run_cell(c).row() for c in cells(MWN, "[evograd, plain]"))
    assert evo["fid_cos_1step"] < 0.999 and evo["fid_cos_1step_std"] > 0
    assert evo["fid_draws"] == 2 and evo["fid_relvar"] > 0
    assert evo["fid_best_ref"] in ("1step", "long", "small")
    assert all(-1 <= evo[f"fid_meancos_{r}"] <= 1 for r in ("1step", "long", "small"))
    assert plain["fid_cos_1step"] is None


def test_unroll_to_convergence_matches_the_closed_form_on_toy1d():
    text = """\
train_steps: 20
timed_steps: 1
fidelity: {checkpoints: 2, reference_T: 5}
workloads: [{name: toy1d, params: {lam0: 0.3}}]
"""
    row = run_cell(cells(text, "[{name: unroll, params: {T: 300}}]")[0]).row()
    assert row["fid_cos_exact"] == pytest.approx(1.0, abs=1e-12)
    assert row["fid_relerr_exact"] < 1e-3


def test_measuring_fidelity_does_not_change_training():
    without = MWN.replace("fidelity: {checkpoints: 2, reference_T: 3, draws: 2}\n", "")
    for est in ("evograd", "hyperdistill"):
        a = run_cell(cells(MWN, f"[{est}]")[0]).row()
        b = run_cell(cells(without, f"[{est}]")[0]).row()
        assert "fid_cos_long" in a and "fid_cos_long" not in b
        for k in ("test_accuracy", "final_val_loss", "metrics"):
            assert a[k] == b[k], (est, k)


@pytest.mark.parametrize("fidelity,field", [("{checkpoints: -1}", "suite.fidelity.checkpoints"),
                                            ("{reference_T: 0}", "suite.fidelity.reference_T"),
                                            ("{every: 3}", "suite.fidelity.every"),
                                            ("3", "suite.fidelity")])
def test_bad_fidelity_settings_name_the_field(fidelity, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_suite(yaml.safe_load(f"fidelity: {fidelity}\nworkloads: [toy1d]\nestimators: [plain]\n"))


# ------------------------------------------------------------------ the `small` reference

def test_small_reference_is_the_closed_form_limit_of_the_lookahead_on_toy1d():
    """Ltrain = (x-1)^2 + lam x^2, Lval = (x-0.5)^2: the lookahead x1 = x0 - lr (2(x0-1) + 2 lam x0)
    has dLval(x1)/dlam = -4 lr x0 (x1 - 0.5); its first order in lr is -4 lr x0 (x0 - 0.5)."""
    x0, lam = 2.0, 0.3
    problem = build("toy1d", x0=x0, lam0=lam)
    for lr in (0.1, 1e-2, 1e-3, 1e-4):
        x1 = x0 - lr * (2 * (x0 - 1) + 2 * lam * x0)
        small = REFERENCES["small"](Checkpoint(problem, [None], None, lr, 0, 1))["lam"]
        lookahead = Unroll({"T": 1, "backend": "func"}).hypergradient(
            HyperStepInputs(problem, [None], None, lr, 0))["lam"]
        assert float(small) == pytest.approx(-4 * lr * x0 * (x0 - 0.5), rel=1e-6)
        assert float(lookahead) == pytest.approx(-4 * lr * x0 * (x1 - 0.5), rel=1e-5)
        # their gap, relative to `small`, is first order in lr: lr (2(x0-1) + 2 lam x0) / (x0 - 0.5)
        gap = abs(float(lookahead) - float(small)) / abs(float(small))
        assert gap == pytest.approx(lr * (2 * (x0 - 1) + 2 * lam * x0) / (x0 - 0.5), rel=1e-2)


def test_small_reference_matches_the_one_step_lookahead_at_a_tiny_step_on_mwn():
    problem, trainer = small_mwn()
    batches, val = trainer.train_stream.peek(1), next(problem.val_stream)
    gap = {}
    for lr in (1e-5, 0.1):
        lookahead = Unroll({"T": 1, "backend": "func"}).hypergradient(HyperStepInputs(problem, batches, val, lr, 3))
        small = REFERENCES["small"](Checkpoint(problem, batches, val, lr, 3, 1))
        gap[lr] = rel_err(lookahead, small)
    assert gap[1e-5] < 1e-3
    assert gap[0.1] > 1e-2  # at the workload's step the two are different targets


# ------------------------------------------------------------------ bias and variance of draws

def _orthogonal(r: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A vector orthogonal to r, of r's norm."""
    u = torch.randn(len(r), generator=gen, dtype=torch.float64)
    u -= (u @ r) / (r @ r) * r
    return u * r.norm() / u.norm()


def test_bias_and_variance_columns_on_draws_of_known_mean_and_variance():
    """Draws r + s z (z standard normal, d coordinates) have mean r and relative variance
    d s^2 / |r|^2 = v. Then: one draw's cosine with r is about 1/sqrt(1+v), the mean of n
    draws' about 1/sqrt(1+v/n), so cosine 0.9 needs n >= v / (1/0.81 - 1); each coordinate
    keeps its sign with probability Phi(|r_i|/s); a draw's relative error is about sqrt(v)."""
    d, n_draws, v = 40, 400, 2.0
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(d, generator=gen, dtype=torch.float64)
    s = float(r.norm()) * math.sqrt(v / d)
    draws = r + s * torch.randn(n_draws, d, generator=gen, dtype=torch.float64)
    theta = math.radians(30)
    tilted = math.cos(theta) * r + math.sin(theta) * _orthogonal(r, gen)
    probe = FidelityProbe({"checkpoints": 1, "reference_T": 1, "draws": n_draws}, 0)
    probe.record(draws, {"1step": r, "long": tilted})
    cols = probe.columns()
    assert cols["fid_draws"] == n_draws
    assert cols["fid_relvar"] == pytest.approx(v, rel=0.05)
    assert cols["fid_meancos_1step"] == pytest.approx(1 / math.sqrt(1 + v / n_draws), abs=3e-3)
    assert cols["fid_meancos_long"] == pytest.approx(math.cos(theta), abs=0.01)
    assert cols["fid_cos_1step"] == pytest.approx(1 / math.sqrt(1 + v), abs=0.03)
    assert cols["fid_relerr_1step"] == pytest.approx(math.sqrt(v), rel=0.05)
    assert cols["fid_sign_1step"] == pytest.approx(float(torch.special.ndtr(r.abs() / s).mean()), abs=0.02)
    assert cols["fid_best_ref"] == "1step"
    needed = math.ceil(v / (1 / 0.9 ** 2 - 1))  # 9
    assert abs(cols["fid_draws_to_target"] - needed) <= 2
    assert cols["fid_meancos_small"] is None and cols["fid_cos_small"] is None

    # A biased estimator: its mean is 35 degrees off r, so no number of draws reaches 0.9.
    biased = FidelityProbe({"checkpoints": 1, "reference_T": 1, "draws": n_draws}, 0)
    bias = math.tan(math.radians(35)) * _orthogonal(r, gen)
    biased.record(draws + bias, {"1step": r})
    cols = biased.columns()
    assert cols["fid_meancos_1step"] == pytest.approx(math.cos(math.radians(35)), abs=0.01)
    assert cols["fid_best_ref"] == "1step" and cols["fid_draws_to_target"] is None


class _NoisyLookahead(Estimator):
    """Unroll T=1 plus Gaussian noise of relative variance `v`: a stochastic estimator whose
    mean is the `1step` reference."""
    name = "noisy-lookahead"
    stochastic = True
    v = 2.0

    def __init__(self, params=None, seed: int = 0):
        super().__init__(params or {}, seed)
        self.gen = torch.Generator().manual_seed(seed)

    def hypergradient(self, inputs):
        exact = Unroll({"T": 1, "backend": "func"}).hypergradient(inputs)
        d = sum(t.numel() for t in exact.values())
        scale = float(flat(exact).norm()) * math.sqrt(self.v / d)
        return {k: t + scale * torch.randn(t.shape, generator=self.gen, dtype=t.dtype) for k, t in exact.items()}


def test_the_probe_draws_a_stochastic_estimator_and_measures_a_deterministic_one_once():
    columns = {}
    for est in (_NoisyLookahead(), Unroll({"T": 1, "backend": "func"})):
        trainer = MetaTrainer(Quadratic(n=40), est, total_steps=10)
        probe = FidelityProbe({"checkpoints": 1, "reference_T": 5, "draws": 200}, 10)
        probe.measure(trainer)
        columns[est.name] = probe.columns()
    noisy, unroll = columns["noisy-lookahead"], columns["unroll"]
    assert noisy["fid_draws"] == 200
    assert noisy["fid_relvar"] == pytest.approx(_NoisyLookahead.v, rel=0.1)
    assert noisy["fid_meancos_1step"] > 0.99 and noisy["fid_cos_1step"] < 0.7
    assert noisy["fid_best_ref"] == "1step"
    assert unroll["fid_draws"] == 1 and unroll["fid_cos_1step"] == pytest.approx(1.0, abs=1e-12)
    assert unroll["fid_meancos_1step"] is None and unroll["fid_relvar"] is None
    assert unroll["fid_best_ref"] is None and unroll["fid_draws_to_target"] is None
    # the three references differ here (a step of 0.05 on a random start)
    assert 0.5 < unroll["fid_cos_small"] < 1 - 1e-6 and unroll["fid_cos_long"] < 1 - 1e-6


def test_a_shared_trajectory_measures_every_estimator_at_the_same_weights_and_batches():
    """Neumann with no terms is the `small` reference itself, and unroll T=1 the `1step` one:
    on the shared trajectory each one's cosine with the other's reference is the same number;
    on their own meta-training the states differ, so the numbers do."""
    shared = MWN.replace("draws: 2}", "draws: 2, trajectory: shared}")
    est = "[{name: unroll, params: {T: 1}}, {name: neumann, params: {terms: 0}}]"
    unroll, neumann = (run_cell(c).row() for c in cells(shared, est))
    assert neumann["fid_cos_small"] == pytest.approx(1.0, abs=1e-6)
    assert unroll["fid_cos_small"] == pytest.approx(neumann["fid_cos_1step"], abs=1e-6)
    assert unroll["fid_trajectory"] == "shared"
    own_unroll, own_neumann = (run_cell(c).row() for c in cells(MWN, est))
    assert abs(own_unroll["fid_cos_small"] - own_neumann["fid_cos_1step"]) > 1e-4
    # the cell's own training (and so its accuracy) is the same whichever trajectory fidelity used
    assert unroll["test_accuracy"] == own_unroll["test_accuracy"]


def test_trajectory_start_measures_every_cell_at_the_initial_weights_whatever_its_length():
    """unroll T=1 and T1-T2 exact compute the same hypergradient: at the same point (the
    initial weights, trajectory start) every figure agrees, though one cell trains 4 steps and
    the other none."""
    text = MWN.replace("draws: 2}", "draws: 2, trajectory: start}").replace("train_steps: 6\n", "")
    long = run_cell(cells("train_steps: 4\n" + text, "[unroll]")[0]).row()
    short = run_cell(cells("train_steps: 0\n" + text, "[t1t2]")[0]).row()
    for col in ("fid_cos_long", "fid_relerr_long", "fid_cos_small", "fid_relerr_small"):
        assert long[col] == pytest.approx(short[col], rel=1e-5, abs=1e-7), col
    assert long["fid_trajectory"] == "start" and long["fid_cos_1step"] == pytest.approx(1.0, abs=1e-6)


def test_a_zero_vector_has_no_cosine():
    from harness.train.fidelity import compare, cosine

    zero, v = torch.zeros(3, dtype=torch.float64), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert math.isnan(cosine(zero, v)) and math.isnan(cosine(v, zero))
    tiny = torch.tensor([3e-10], dtype=torch.float64)  # (EvoGrad's size on toy1d)
    assert cosine(tiny, torch.tensor([0.2], dtype=torch.float64)) == pytest.approx(1.0, abs=1e-12)
    assert cosine(1e-9 * v, v) == pytest.approx(1.0, abs=1e-12)
    assert compare(zero, v)["relerr"] == pytest.approx(1.0) and math.isnan(compare(zero, v)["cos"])
    probe = FidelityProbe({"checkpoints": 1, "reference_T": 1, "draws": 1}, 0)
    probe.record(zero.unsqueeze(0), {"1step": v})
    out = probe.columns()
    assert out["fid_cos_1step"] is None and out["fid_relerr_1step"] == pytest.approx(1.0)
