"""Fidelity columns mean what they say, and measuring them changes nothing in training."""
from __future__ import annotations


import pytest
import yaml

from harness.core.errors import ConfigError
from harness.train.fidelity import checkpoint_steps
from harness.run.cell import run_cell
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
    assert checkpoint_steps(0, 3) == set()


def test_one_step_estimators_have_cosine_one_against_the_one_step_reference():
    for cell in cells(MWN, "[unroll, t1t2]"):
        row = run_cell(cell)
        assert row["status"] == "ok"
        assert row["fid_cos_1step"] == pytest.approx(1.0, abs=1e-6), cell.estimator
        assert row["fid_cos_1step_std"] < 1e-6
        assert -1 <= row["fid_cos_long"] <= 1 and 0 <= row["fid_sign_long"] <= 1
        assert row["fid_relerr_long"] >= 0 and row["fid_cos_exact"] is None


def test_stochastic_estimators_are_drawn_several_times_and_plain_has_no_fidelity():
    evo, plain = (run_cell(c) for c in cells(MWN, "[evograd, plain]"))
    assert evo["fid_cos_1step"] < 0.999 and evo["fid_cos_1step_std"] > 0
    assert plain["fid_cos_1step"] is None


def test_unroll_to_convergence_matches_the_closed_form_on_toy1d():
    text = """\
train_steps: 20
timed_steps: 1
fidelity: {checkpoints: 2, reference_T: 5}
workloads: [{name: toy1d, params: {lam0: 0.3}}]
"""
    row = run_cell(cells(text, "[{name: unroll, params: {T: 300}}]")[0])
    assert row["fid_cos_exact"] == pytest.approx(1.0, abs=1e-12)
    assert row["fid_relerr_exact"] < 1e-3


def test_measuring_fidelity_does_not_change_training():
    without = MWN.replace("fidelity: {checkpoints: 2, reference_T: 3, draws: 2}\n", "")
    for est in ("evograd", "hyperdistill"):
        a = run_cell(cells(MWN, f"[{est}]")[0])
        b = run_cell(cells(without, f"[{est}]")[0])
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
