"""Faults: a driver killed with -9 and resumed, a cell killed with -9 from outside, results
files truncated or foreign, unwritable outputs, downloads aimed outside the output folder,
and `--jobs`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from harness.cli import main
from harness.core.plugins import ENV
from harness.core.schema import KEY as CURVE_KEY, row_key

SWEEP = """\
name: sweep
train_steps: 4
warmup_steps: 1
timed_steps: 2
curve_points: 2
seeds: [0, 1, 2]
workloads: [toy1d]
estimators: [plain, unroll, t1t2, evograd, neumann, hyperdistill]
"""


def _driver(suite: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--out", str(out), "--quiet",
                             *extra], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _rows(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv")


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_driver_killed_with_sigkill_resumes_with_no_duplicate_and_no_missing_row(tmp_path):
    suite, out = tmp_path / "sweep.yaml", tmp_path / "o"
    suite.write_text(SWEEP)
    driver = _driver(suite, out)
    try:
        _wait_for(lambda: (out / "results.csv").exists() and len(_rows(out)) >= 4, 120, "4 finished cells")
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
    finally:
        if driver.poll() is None:
            driver.kill()
    killed_at = len(_rows(out))
    assert 4 <= killed_at < 18
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--resume"]) == 0
    rows = _rows(out)
    keys = [row_key(r) for _, r in rows.iterrows()]
    assert len(keys) == 18 and len(set(keys)) == 18          # every cell once
    assert (rows["status"] == "ok").all()
    curves = pd.read_csv(out / "curves.csv")
    assert not curves.duplicated(CURVE_KEY + ["step"]).any()
    assert len(curves) == 18 * 3                              # steps 0, 2 and the end, for every cell


def test_a_cell_killed_with_sigkill_from_outside_is_an_error_row_and_the_sweep_goes_on(tmp_path):
    suite, out = tmp_path / "s.yaml", tmp_path / "o"
    suite.write_text("workloads: [toy1d]\nestimators: [hang, plain]\ntimeout_s: 600\ntrain_steps: 2\n")
    driver = _driver(suite, out, env={ENV: "tests.faulty"})
    try:
        def cells():
            servers = [c for c in psutil.Process(driver.pid).children() if "forkserver" in " ".join(c.cmdline())]
            return [c for s in servers for c in s.children()]
        _wait_for(lambda: bool(cells()), 60, "the cell process")
        time.sleep(3)  # inside the hanging estimator
        for cell in cells():
            cell.send_signal(signal.SIGKILL)
        driver.wait(120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, driver.stderr.read()  # a cell failed: the exit says so
    rows = _rows(out).set_index("estimator")
    assert rows.loc["hang", "status"] == "error" and "killed by SIGKILL" in rows.loc["hang", "error"]
    assert rows.loc["plain", "status"] == "ok"


def test_a_truncated_results_file_is_refused_and_kept(tmp_path, capsys):
    suite, out = tmp_path / "s.yaml", tmp_path / "o"
    suite.write_text("train_steps: 2\nworkloads: [toy1d]\nestimators: [plain, unroll]\n")
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--in-process"]) == 0
    text = (out / "results.csv").read_text()
    cut = text[: len(text) - len(text.splitlines()[-1]) // 2 - 1]  # half of the last row is gone
    (out / "results.csv").write_text(cut)
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.csv" in err and ("damaged" in err or "not a readable" in err)
    assert (out / "results.csv").read_text() == cut


def test_a_download_outside_the_output_folder_is_refused(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(f"workloads: [{{name: mwn, params: {{data: cifar10, download: true, "
                     f"data_root: {tmp_path / 'elsewhere'}}}}}]\nestimators: [plain]\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outside the output folder" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "elsewhere").exists()


def test_jobs_runs_cells_at_once_and_flags_their_timings(tmp_path, capsys):
    suite, out = tmp_path / "s.yaml", tmp_path / "o"
    suite.write_text("train_steps: 40\nworkloads: [toy1d]\nestimators: [plain, unroll, t1t2, evograd]\n")
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--jobs", "2"]) == 0
    assert "--jobs 2: cells share this machine" in capsys.readouterr().err
    rows = _rows(out)
    assert sorted(rows["estimator"]) == ["evograd", "plain", "t1t2", "unroll"] and (rows["status"] == "ok").all()
    assert (rows["shared_machine_cells"] > 0).any()
    assert "&dagger;" in (out / "report.html").read_text()
    assert main(["run", str(suite), "--out", str(tmp_path / "x"), "--jobs", "0"]) == 2


def test_sequential_runs_are_not_flagged(tmp_path):
    suite, out = tmp_path / "s.yaml", tmp_path / "o"
    suite.write_text("train_steps: 2\nworkloads: [toy1d]\nestimators: [plain, unroll]\n")
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    assert (_rows(out)["shared_machine_cells"] == 0).all()


@pytest.mark.parametrize("argv, message", [
    (["--executor", "ray", "--jobs", "2"], "--jobs is for --executor local"),
    (["--executor", "ray", "--cpus-per-cell", "-1"], "--cpus-per-cell -1.0: must be > 0"),
])
def test_bad_executor_options_are_one_line(tmp_path, capsys, argv, message):
    suite = tmp_path / "s.yaml"
    suite.write_text("workloads: [toy1d]\nestimators: [plain]\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
