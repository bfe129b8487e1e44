"""Every cell ends as exactly one row, whatever happens in its process; runs resume."""
from __future__ import annotations

import pandas as pd
import pytest

from harness.cli import main
from harness.core.plugins import ENV

FAULTS = """\
name: faults
train_steps: 2
warmup_steps: 1
timed_steps: 1
timeout_s: 20
memory_budget_bytes: 150000000
workloads: [toy1d]
estimators: [unroll, hog, hang, nan_grad, self_kill, exploding, t1t2]
"""


@pytest.fixture
def faulty(monkeypatch):
    monkeypatch.setenv(ENV, "tests.faulty")


def test_failures_become_rows_with_their_kind_and_the_other_rows_are_intact(tmp_path, faulty):
    suite = tmp_path / "faults.yaml"
    suite.write_text(FAULTS)
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--quiet"]) == 1  # cells failed
    df = pd.read_csv(tmp_path / "o" / "results.csv").set_index("estimator")
    status = df["status"].to_dict()
    assert status == {"unroll": "ok", "hog": "oom", "hang": "timeout", "nan_grad": "diverged",
                      "self_kill": "error", "exploding": "error", "t1t2": "ok"}
    assert "over memory_budget_bytes=150000000" in df.loc["hog", "error"]
    assert df.loc["hog", "peak_rss_delta_bytes"] > 250e6       # the measured peak is kept
    assert "timeout_s=20" in df.loc["hang", "error"]
    assert "killed by SIGKILL" in df.loc["self_kill", "error"]
    assert "RuntimeError: boom" in df.loc["exploding", "error"]
    assert "hypergradient was not finite" in df.loc["nan_grad", "error"]
    for ok in ("unroll", "t1t2"):
        assert df.loc[ok, "step_time_s"] > 0 and df.loc[ok, "graph_bytes"] > 0
    parquet = pd.read_parquet(tmp_path / "o" / "results.parquet")
    assert parquet["status"].tolist() == pd.read_csv(tmp_path / "o" / "results.csv")["status"].tolist()


def test_a_cell_does_not_outlive_a_killed_driver(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    suite = tmp_path / "hang.yaml"
    suite.write_text("workloads: [toy1d]\nestimators: [hang]\ntimeout_s: 600\n")
    driver = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--out",
                               str(tmp_path / "o"), "--quiet"], env={**os.environ, ENV: "tests.faulty"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        cells = []
        while not cells and time.monotonic() < deadline:
            time.sleep(0.5)
            servers = [c for c in psutil.Process(driver.pid).children()
                       if "forkserver" in " ".join(c.cmdline())]
            cells = [c for s in servers for c in s.children()]
        assert cells, "the cell process never started"
        time.sleep(3)  # let it reach the hanging estimator
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        gone, alive = psutil.wait_procs(cells + servers, timeout=10)
        assert not alive, f"outlived its driver: {[(p.pid, p.cmdline()[-1][:60], p.pid in [s.pid for s in servers]) for p in alive]}"
    finally:
        if driver.poll() is None:
            driver.kill()


SMALL = """\
name: small
train_steps: 3
warmup_steps: 1
timed_steps: 1
workloads: [toy1d]
estimators: [plain, unroll, t1t2]
"""


def test_resume_runs_only_the_missing_cells(tmp_path, capsys):
    suite, out = tmp_path / "s.yaml", tmp_path / "o"
    suite.write_text(SMALL.replace("[plain, unroll, t1t2]", "[plain, unroll]"))
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    first = pd.read_csv(out / "results.csv")

    suite.write_text(SMALL)
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--resume"]) == 0
    assert "1 of 3 cells to run" in capsys.readouterr().err
    second = pd.read_csv(out / "results.csv")
    assert second["estimator"].tolist() == ["plain", "unroll", "t1t2"]
    pd.testing.assert_frame_equal(second.iloc[:2], first)  # finished rows untouched

    assert main(["run", str(suite), "--out", str(out), "--quiet", "--resume"]) == 0
    assert "0 of 3 cells to run" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), second)


def test_existing_results_are_never_silently_overwritten(tmp_path, capsys):
    suite, out = tmp_path / "s.yaml", tmp_path / "o"
    suite.write_text(SMALL.replace("[plain, unroll, t1t2]", "[plain]"))
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(out)]) == 2
    assert "already holds results.csv; add --resume" in capsys.readouterr().err
    (out / "results.csv").write_text("workload,estimator\ntoy1d,plain\n")
    for extra in ([], ["--resume"]):
        assert main(["run", str(suite), "--out", str(out), *extra]) == 2
        assert "not an hgbench results file" in capsys.readouterr().err
    (out / "results.csv").write_bytes(b"\x00\xff garbage")
    assert main(["run", str(suite), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "results.csv" in err and err.count("\n") == 1
    assert (out / "results.csv").read_bytes() == b"\x00\xff garbage"


def test_rows_carry_provenance(tmp_path):
    suite, out = tmp_path / "s.yaml", tmp_path / "o"
    suite.write_text(SMALL)
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    row = pd.read_csv(out / "results.csv").iloc[0]
    for col in ("hgbench_version", "git_sha", "torch_version", "device_name", "cpu_model",
                "hostname", "start_time"):
        assert isinstance(row[col], str) and row[col], col
    assert row["num_threads"] >= 1 and row["wall_s"] > 0 and row["device_type"] == "cpu"
    assert row["deterministic"] in (True, False)


def test_in_process_mode_runs_cells_here_and_still_writes_failure_rows(tmp_path, faulty):
    import harness.run.sweep

    suite = tmp_path / "s.yaml"
    suite.write_text("train_steps: 2\ntimed_steps: 1\nworkloads: [toy1d]\nestimators: [exploding, unroll]\n")
    calls = []
    original = harness.run.sweep.run_isolated
    harness.run.sweep.run_isolated = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--quiet", "--in-process"]) == 1
        assert not calls
        assert main(["run", str(suite), "--out", str(tmp_path / "o2"), "--quiet"]) == 1
        assert len(calls) == 2  # the default isolates every cell
    finally:
        harness.run.sweep.run_isolated = original
    df = pd.read_csv(tmp_path / "o" / "results.csv")
    assert df["status"].tolist() == ["error", "ok"]


def test_an_unimportable_plugin_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(ENV, "no_such_module_xyz")
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HGBENCH_PLUGINS: cannot import 'no_such_module_xyz'" in err
