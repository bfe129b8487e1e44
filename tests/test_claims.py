"""The verdict a report states: paired differences with their intervals, and published
claims judged reproduced / not reproduced / not measured from hand-made rows."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from harness.report import claims as claims_mod
from harness.report.claims import CLAIMS, VERDICTS, evaluate
from harness.report.tables import prepare
from harness.report.verdict import by_seed, paired
from harness.store.results import to_frame

T975 = {2: 12.706204736174707, 3: 4.302652729911275, 4: 3.182446305284263}


def row(workload="mwn", estimator="unroll", est=None, wl=None, seed=0, acc=None, hyper_s=0.1, peak=2 ** 20,
        metrics=None, backbone="resnet10", train_steps=100, status="ok"):
    est = {"T": 1, "backend": "func"} if est is None and estimator == "unroll" else (est or {})
    return {"suite": "s", "workload": workload, "backbone": backbone, "estimator": estimator,
            "params": json.dumps({"estimator": est, "workload": wl or {}}), "seed": seed, "device": "cpu",
            "status": status, "hyper_time_s": hyper_s, "peak_rss_delta_bytes": peak, "hyper_flops": 1e9,
            "test_accuracy": acc, "device_type": "cpu", "train_steps": train_steps,
            "metrics": json.dumps(metrics or {})}


def frame(rows) -> pd.DataFrame:
    return prepare(to_frame(rows))


def verdicts(rows) -> dict[str, pd.Series]:
    return {r["claim"]: r for _, r in evaluate(frame(rows)).iterrows()}


# ------------------------------------------------------------------ the paired difference

def test_paired_difference_is_the_mean_and_t_interval_of_per_seed_differences():
    rows = [row(estimator="plain", seed=s, acc=a) for s, a in enumerate([0.80, 0.70, 0.90])]
    rows += [row(seed=s, acc=a) for s, a in enumerate([0.85, 0.74, 0.96])]
    d = paired(by_seed(frame(rows)), "unroll", "plain")
    diffs = [0.05, 0.04, 0.06]
    sd = math.sqrt(sum((x - 0.05) ** 2 for x in diffs) / 2)
    assert d.n == 3 and math.isclose(d.mean, 0.05) and math.isclose(d.half, T975[3] * sd / math.sqrt(3))
    assert d.resolved  # +5 points, every seed agreeing: apart though the seeds' spread is 10 points
    # unpaired, the two intervals overlap widely: pairing is what resolves it
    spread = pd.Series([0.80, 0.70, 0.90]).std() * T975[3] / math.sqrt(3)
    assert spread > 0.05


def test_one_seed_resolves_nothing_and_a_difference_inside_its_interval_is_not_resolved():
    one = paired(by_seed(frame([row(estimator="plain", acc=0.5), row(acc=0.9)])), "unroll", "plain")
    assert one.n == 1 and not one.resolved and math.isnan(one.half)
    noisy = [row(estimator="plain", seed=s, acc=a) for s, a in enumerate([0.80, 0.70, 0.90])]
    noisy += [row(seed=s, acc=a) for s, a in enumerate([0.90, 0.60, 0.95])]
    assert not paired(by_seed(frame(noisy)), "unroll", "plain").resolved


def test_only_shared_seeds_are_paired():
    rows = [row(estimator="plain", seed=s, acc=0.5) for s in (0, 1, 2)] + [row(seed=s, acc=0.6) for s in (1, 2, 7)]
    assert paired(by_seed(frame(rows)), "unroll", "plain").seeds == (1, 2)


# ------------------------------------------------------------------ the claims

def test_every_claim_names_its_source_comparison_and_published_value():
    ids = [c.id for c in CLAIMS]
    assert len(ids) == len(set(ids))
    for c in CLAIMS:
        assert c.source and c.statement and c.quantity and c.comparison and c.published, c.id


def test_a_run_without_the_rows_measures_nothing_and_reproduces_nothing():
    table = evaluate(frame([row(workload="toy1d", estimator="plain", backbone="none", acc=None)]))
    assert list(table["claim"]) == [c.id for c in CLAIMS]
    assert set(table["verdict"]) == {"not measured"}
    assert table["measured"].isna().all()
    assert set(VERDICTS) == {"reproduced", "not reproduced", "not measured"}


def _memory_rows(ratio, workload="mwn"):
    return [row(workload=workload, peak=100 * 2 ** 20),
            row(workload=workload, estimator="evograd", est={"K": 2}, peak=int(ratio * 100 * 2 ** 20))]


@pytest.mark.parametrize("ratio, expected", [(0.5, "reproduced"), (0.64, "reproduced"), (0.8, "not reproduced"),
                                              (0.2, "not reproduced")])
def test_evograds_memory_claim_is_judged_from_the_ratio_on_the_same_cell(ratio, expected):
    v = verdicts(_memory_rows(ratio))["evograd-memory-mwn"]
    assert v["verdict"] == expected and math.isclose(v["measured"], ratio, rel_tol=1e-6)
    assert "mwn/resnet10/evograd/seed0" in v["cells"]
    assert verdicts(_memory_rows(ratio))["evograd-memory-lft"]["verdict"] == "not measured"


def test_a_cost_ratio_pairs_cells_of_the_same_backbone_and_seed_only():
    rows = [row(peak=100 * 2 ** 20, backbone="resnet10"),
            row(estimator="evograd", est={"K": 2}, peak=50 * 2 ** 20, backbone="resnet18")]
    assert verdicts(rows)["evograd-memory-mwn"]["verdict"] == "not measured"


def test_cost_claims_leave_out_scalar_problems_whose_times_are_overhead():
    rows = [row(workload="toy1d", backbone="none", hyper_s=1.0), row(workload="toy1d", backbone="none",
            estimator="sama", est={}, hyper_s=0.1)]
    for r in rows:
        r["hyper_flops"] = 0
    assert verdicts(rows)["sama-throughput"]["verdict"] == "not measured"
    rows += [row(hyper_s=1.0), row(estimator="sama", est={}, hyper_s=0.8)]
    v = verdicts(rows)["sama-throughput"]
    assert v["verdict"] == "not reproduced" and math.isclose(v["measured"], 1.25) and v["n"] == 1


def test_mixed_mode_claims_pair_the_same_unroll_length():
    rows = [row(est={"T": 5, "backend": "func"}, peak=1000 * 2 ** 20, hyper_s=1.0),
            row(est={"T": 5, "backend": "mixed"}, peak=80 * 2 ** 20, hyper_s=0.7),
            row(est={"T": 1, "backend": "func"}, peak=10 * 2 ** 20, hyper_s=0.1)]
    v = verdicts(rows)
    assert math.isclose(v["mixflow-memory"]["measured"], 12.5, rel_tol=1e-6)  # against T=5, not T=1
    assert v["mixflow-memory"]["verdict"] == "reproduced"
    assert math.isclose(v["mixflow-time"]["measured"], 0.7, rel_tol=1e-6)
    assert v["mixflow-time"]["verdict"] == "reproduced"


def _rotation(plain, evo, angles, data="mnist5k"):
    wl = {"data": data}
    rows = [row(workload="rotation", backbone="lenet", estimator="plain", wl=wl, seed=s, acc=a)
            for s, a in enumerate(plain)]
    rows += [row(workload="rotation", backbone="lenet", estimator="evograd", est={"K": 2}, wl=wl, seed=s, acc=a,
                 metrics={"learned_angle_deg": d}) for s, (a, d) in enumerate(zip(evo, angles))]
    return rows


def test_rotation_claims_each_outcome():
    v = verdicts(_rotation([0.81, 0.82, 0.83], [0.97, 0.98, 0.99], [28.0, 29.0, 30.0]))
    assert v["rotation-plain"]["verdict"] == "reproduced" and math.isclose(v["rotation-plain"]["measured"], 82.0)
    assert math.isclose(v["rotation-plain"]["interval_high"] - 82.0, T975[3] * 1.0 / math.sqrt(3), rel_tol=1e-9)
    assert v["rotation-evograd"]["verdict"] == "reproduced"
    assert v["rotation-evograd-gain"]["verdict"] == "reproduced"
    assert math.isclose(v["rotation-evograd-gain"]["measured"], 16.0, rel_tol=1e-9)
    assert v["rotation-angle"]["verdict"] == "reproduced" and math.isclose(v["rotation-angle"]["measured"], 29.0)

    v = verdicts(_rotation([0.70, 0.72, 0.74], [0.80, 0.95, 0.75], [40.0, 41.0, 39.0]))
    assert v["rotation-plain"]["verdict"] == "not reproduced"
    assert v["rotation-evograd"]["verdict"] == "not reproduced"
    assert v["rotation-evograd-gain"]["verdict"] == "not reproduced"  # +8 on average, interval far below +10
    assert v["rotation-angle"]["verdict"] == "not reproduced"


def test_rotation_claims_need_mnist_and_gains_need_two_seeds():
    on_digits = verdicts(_rotation([0.81, 0.82], [0.97, 0.98], [29.0, 29.0], data="digits"))
    assert {on_digits[c]["verdict"] for c in ("rotation-plain", "rotation-angle")} == {"not measured"}
    one_seed = verdicts(_rotation([0.5], [0.99], [29.0]))
    assert one_seed["rotation-evograd-gain"]["verdict"] == "not measured"
    assert "2 seeds" in one_seed["rotation-evograd-gain"]["note"]
    assert one_seed["rotation-evograd"]["verdict"] == "reproduced"  # a level: one seed is a measurement


def test_cost_only_and_failed_cells_give_no_accuracy_claims():
    rows = [{**r, "train_steps": 0} for r in _rotation([0.81, 0.82], [0.97, 0.98], [29.0, 29.0])]
    assert verdicts(rows)["rotation-plain"]["verdict"] == "not measured"
    failed = [{**r, "status": "error"} for r in _rotation([0.81, 0.82], [0.97, 0.98], [29.0, 29.0])]
    assert verdicts(failed)["rotation-evograd"]["verdict"] == "not measured"


def test_mwn_gain_needs_the_papers_noise():
    def rows(noise_rate):
        wl = {"noise": "unif", "noise_rate": noise_rate}
        return ([row(estimator="plain", wl=wl, seed=s, acc=0.8 + 0.01 * s) for s in range(3)]
                + [row(wl=wl, seed=s, acc=0.9 + 0.01 * s) for s in range(3)])
    assert verdicts(rows(0.4))["mwn-beats-plain"]["verdict"] == "reproduced"
    assert verdicts(rows(0.2))["mwn-beats-plain"]["verdict"] == "not measured"


def test_claims_csv_and_section_are_written_by_the_report(tmp_path):
    from harness.report.build import write_report
    from harness.report.source import Source

    rows = _rotation([0.81, 0.82, 0.83], [0.97, 0.98, 0.99], [28.0, 29.0, 30.0]) + _memory_rows(0.9)
    source = Source(rows=to_frame(rows), curves=pd.DataFrame(), title="t", suite_text="", environment={},
                    budgets=[])
    page = write_report(source, tmp_path).read_text()
    table = pd.read_csv(tmp_path / "claims.csv")
    assert list(table.columns) == claims_mod.CLAIM_COLUMNS
    assert set(table["verdict"]) <= set(VERDICTS) and len(table) == len(CLAIMS)
    section = page[page.index("<h2>Claims</h2>"):page.index("<h2>Cost and accuracy")]
    assert section.count("<tr class='ok'>") == (table["verdict"] == "reproduced").sum()
    assert section.count("<tr class='failed'>") == (table["verdict"] == "not reproduced").sum()
    glance = page[page.index("<h2>At a glance</h2>"):page.index("<h2>Claims</h2>")]
    assert "most accurate" not in glance
    assert "evograd beats plain by +16.0" in glance
