"""Suites expand as documented and every bad suite is one line naming the field."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from harness.cli import main
from harness.core.errors import ConfigError
from harness.plan.suite import build_suite, find_suite, load_suite

GOOD = {
    "name": "t", "seeds": [0, 1],
    "workloads": [{"name": "mwn", "backbone": ["resnet10", "resnet18"], "params": {"width": [4, 8]}},
                  {"name": "toy1d"}],
    "estimators": [{"name": "plain"}, {"name": "unroll", "params": {"T": 1, "backend": ["func", "higher"]}}],
}


def test_lists_expand_into_a_cartesian_product():
    suite = build_suite(GOOD)
    # seeds 2 x (mwn: 2 backbones x 2 widths + toy1d: 1) x (plain + 2 unroll backends)
    assert len(suite.cells) == 2 * 5 * 3
    assert len({c.key() for c in suite.cells}) == len(suite.cells)
    mwn = [c for c in suite.cells if c.workload == "mwn"]
    assert {c.workload_params["width"] for c in mwn} == {4, 8}
    assert {c.backbone for c in mwn} == {"resnet10", "resnet18"}
    assert all(c.workload_params["noise_rate"] == 0.4 for c in mwn)  # defaults filled in
    assert {c.backbone for c in suite.cells if c.workload == "toy1d"} == {"none"}


def test_settings_have_defaults_and_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("workloads: [toy1d]\nestimators: [plain]\n")
    suite = load_suite(path, ["train_steps=7", "device=auto", "estimators.0.name=t1t2",
                              "workloads.0.params.lam0=0.5"])
    cell = suite.cells[0]
    assert (cell.train_steps, cell.device, cell.estimator) == (7, "auto", "t1t2")
    assert cell.workload_params["lam0"] == 0.5
    assert cell.timed_steps == 10 and cell.hyper_every == 1


def test_builtin_suite_is_found_by_name_and_is_valid():
    suite = load_suite(find_suite("default"))
    names = {(c.workload, c.estimator) for c in suite.cells}
    from workloads import WORKLOADS
    assert {c.workload for c in suite.cells} == {name for name, _ in WORKLOADS}  # every workload
    for w in {name for name, _ in WORKLOADS}:
        for e in ("plain", "unroll", "t1t2", "evograd", "hyperdistill", "neumann", "sama"):
            assert (w, e) in names
    assert all(c.fidelity["checkpoints"] > 0 for c in suite.cells)
    backends = {c.estimator_params["backend"] for c in suite.cells if c.estimator == "unroll"}
    modes = {c.estimator_params["mode"] for c in suite.cells if c.estimator == "t1t2"}
    assert backends == {"func"} and modes == {"exact"}


BAD = [
    ("workloads: [{name: nope}]\nestimators: [plain]", "workloads[0].name", "unknown workload 'nope'"),
    ("workloads: [toy1d]\nestimators: [{name: magic}]", "estimators[0].name", "unknown estimator 'magic'"),
    ("workloads: [toy1d]\nestimators: [{name: evograd, params: {kappa: 2}}]",
     "estimators[0].params.kappa", "unknown parameter"),
    ("workloads: [toy1d]\nestimators: [{name: evograd, params: {K: two}}]",
     "estimators[0].params.K", "expected an integer"),
    ("workloads: [toy1d]\nestimators: [{name: evograd, params: {K: 1}}]",
     "estimators[0].params.K", ">= 2"),
    ("workloads: [toy1d]\nestimators: [{name: evograd, params: {tau: -1}}]",
     "estimators[0].params.tau", "> 0"),
    ("workloads: [toy1d]\nestimators: [{name: unroll, params: {T: 0}}]", "estimators[0].params.T", "> 0"),
    ("workloads: [{name: mwn, params: {noise_rate: 1.5}}]\nestimators: [plain]",
     "workloads[0].params.noise_rate", "in [0, 1)"),
    ("workloads: [{name: mwn, params: {noise: gaussian}}]\nestimators: [plain]",
     "workloads[0].params.noise", "not one of"),
    ("workloads: [{name: mwn, backbone: vgg}]\nestimators: [plain]", "workloads[0].backbone", "vgg"),
    ("workloads: [{name: mwn, params: {width: 8.5}}]\nestimators: [plain]",
     "workloads[0].params.width", "expected an integer"),
    ("workloads: [toy1d]\nestimators: [plain]\ntrain_step: 5", "suite.train_step", "unknown key"),
    ("workloads: [toy1d]\nestimators: [plain]\ntimed_steps: 0", "suite.timed_steps", ">= 1"),
    ("workloads: [toy1d]\nestimators: [plain]\ndevice: tpu", "suite.device", "not one of"),
    ("workloads: [toy1d]\nestimators: [plain]\nseeds: [a]", "seeds", "integers in [0, 2**31)"),
    ("workloads: toy1d\nestimators: [plain]", "workloads", "non-empty list"),
    ("estimators: [plain]", "workloads", "non-empty list"),
    ("workloads: [toy1d]\nestimators: [{name: unroll, params: {T: []}}]", "params.T", "empty list"),
    ("workloads: [toy1d\nestimators: [plain]", "not valid YAML", "line"),
    ("- just\n- a list", "suite", "expected a mapping"),
    ("workloads: [{name: toy1d, estimators: [sama]}]\nestimators: [plain]", "workloads[0].estimators",
     "'sama' is not among the suite's estimators"),
    ("workloads: [{name: toy1d, estimators: plain}]\nestimators: [plain]", "workloads[0].estimators",
     "non-empty list of estimator names"),
    ("workloads: [{name: toy1d, estimators: ['unroll:T=9']}]\nestimators: [unroll]", "workloads[0].estimators",
     "no variant of 'unroll' in the suite's estimators has T=9"),
    ("workloads: [{name: toy1d, seeds: [-1]}]\nestimators: [plain]", "workloads[0].seeds", "integers"),
    ("workloads: [{name: toy1d, settings: {device: cuda}}]\nestimators: [plain]", "workloads[0].settings.device",
     "not a setting a workload entry may set"),
    ("workloads: [{name: toy1d, settings: {train_steps: -3}}]\nestimators: [plain]",
     "workloads[0].settings.train_steps", ">= 0"),
    ("workloads: [{name: toy1d, settings: 5}]\nestimators: [plain]", "workloads[0].settings", "mapping"),
    ("workloads: [{name: toy1d, estimator: [plain]}]\nestimators: [plain]", "workloads[0].estimator", "unknown key"),
    ("workloads: [toy1d, {name: toy1d, seeds: [0, 1]}]\nestimators: [plain]", "suite: cell", "listed twice"),
]


@pytest.mark.parametrize("text,field,reason", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_suite_is_one_line_naming_the_field(tmp_path, capsys, text, field, reason):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert field in str(info.value) and reason in str(info.value)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("hgbench: error: ") and field in err
    assert not (tmp_path / "out" / "results.csv").exists()


def test_missing_suite_file_names_the_path(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml: suite file not found" in err and err.count("\n") == 1


def test_bad_override_names_the_key(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("workloads: [toy1d]\nestimators: [plain]\n")
    assert main(["run", str(path), "--set", "estimators.5.name=plain"]) == 2
    assert "estimators.5" in capsys.readouterr().err
    assert main(["run", str(path), "--set", "noequals"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_cli_error_is_one_line_without_traceback_in_a_real_process(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""\
        workloads: [toy1d]
        estimators: [{name: evograd, params: {K: 1}}]
    """))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"hgbench: error: {path}: estimators[0].params.K: 1 must be >= 2"]


def test_unwritable_output_folder_fails_before_any_cell(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("workloads: [toy1d]\nestimators: [plain]\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", str(path), "--out", str(blocker / "sub")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_list_prints_every_component_with_defaults(capsys):
    from estimators import ESTIMATORS
    from workloads import BACKBONES, WORKLOADS
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*ESTIMATORS.names(), *WORKLOADS.names(), *BACKBONES.names()]:
        assert name in out
    assert "K=2" in out and "tau=0.05" in out and "noise_rate=0.4" in out


ENTRIES = {
    "name": "t", "seeds": [0], "train_steps": 0,
    "workloads": [{"name": "toy1d", "estimators": ["plain", "evograd"], "seeds": [0, 1, 2],
                   "settings": {"train_steps": 50, "curve_points": 3, "hyper_every": 2}},
                  {"name": "toy1d", "estimators": ["unroll"]},
                  {"name": "mwn", "params": {"width": 4}}],
    "estimators": [{"name": "plain"}, {"name": "unroll", "params": {"T": [1, 2]}}, {"name": "evograd"}],
}


def test_a_workload_entry_narrows_estimators_and_sets_its_own_seeds_and_settings():
    cells = build_suite(ENTRIES).cells
    first = [c for c in cells if c.workload == "toy1d" and c.estimator != "unroll"]
    assert sorted((c.estimator, c.seed) for c in first) == sorted(
        (e, s) for e in ("plain", "evograd") for s in (0, 1, 2))
    assert {(c.train_steps, c.curve_points, c.hyper_every) for c in first} == {(50, 3, 2)}
    second = [c for c in cells if c.workload == "toy1d" and c.estimator == "unroll"]
    assert sorted(c.estimator_params["T"] for c in second) == [1, 2]  # every variant of a name
    assert {(c.train_steps, c.seed) for c in second} == {(0, 0)}     # the suite's settings and seeds
    mwn = [c for c in cells if c.workload == "mwn"]
    assert len(mwn) == 4 and {c.train_steps for c in mwn} == {0}
    assert cells[0].identity()["train_steps"] in (0, 50)  # the setting is the cell's, in its row


def test_an_entry_may_keep_one_variant_of_an_estimator():
    raw = {**ENTRIES, "workloads": [{"name": "toy1d", "estimators": ["unroll:T=2", "plain"], "seeds": [4]}]}
    cells = build_suite(raw).cells
    assert sorted((c.estimator, c.estimator_params.get("T")) for c in cells) == [("plain", None), ("unroll", 2)]


def test_a_resume_refuses_a_cell_whose_entry_settings_changed(tmp_path, capsys):
    text = ("name: r\ntimed_steps: 1\nwarmup_steps: 0\ncurve_points: 0\n"
            "workloads: [{{name: toy1d, settings: {{train_steps: {n}}}}}]\nestimators: [plain]\n")
    path = tmp_path / "s.yaml"
    path.write_text(text.format(n=3))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--in-process"]) == 0
    capsys.readouterr()
    path.write_text(text.format(n=9))
    assert main(["run", str(path), "--out", str(out), "--resume", "--quiet", "--in-process"]) == 2
    err = capsys.readouterr().err
    assert "train_steps=9 in this suite" in err and "train_steps=3;" in err and err.count("\n") == 1
    path.write_text(text.format(n=3))
    assert main(["run", str(path), "--out", str(out), "--resume", "--quiet", "--in-process"]) == 0


def test_the_default_suite_trains_plain_second_order_and_evograd_at_three_seeds():
    suite = load_suite(find_suite("default"))
    trained = [c for c in suite.cells if c.train_steps > 0]
    for workload in ("mwn", "rotation"):
        mine = [c for c in trained if c.workload == workload]
        assert {c.estimator for c in mine} >= {"plain", "unroll", "evograd"}
        assert len({c.seed for c in mine}) >= 3
    assert not [c for c in trained if c.workload in ("lft", "metaxl")]  # cost and fidelity only
    assert {c.workload_params["data"] for c in suite.cells if c.workload == "rotation"} == {"mnist5k"}
