"""The Ray executor against a real Ray instance on loopback: a tiny suite's rows equal a
local run's (same seeds, same results), and cells still run in their own processes."""
from __future__ import annotations

import pandas as pd
import pytest

from harness.cli import main
from harness.core.schema import row_key

ray = pytest.importorskip("ray", reason="Ray not installed (`pip install -e .[ray]`; make setup installs it)")

SUITE = """\
name: cluster
train_steps: 6
warmup_steps: 1
timed_steps: 2
curve_points: 2
seeds: [0]
fidelity: {checkpoints: 1, reference_T: 2, draws: 1}
workloads:
  - toy1d
  - name: mwn
    params: {width: 4, batch_size: 16}
estimators: [plain, unroll, evograd]
"""
# What a cell computes (as opposed to how long it took, or where and when it ran).
RESULTS = ["status", "test_accuracy", "final_val_loss", "fid_cos_1step", "fid_cos_long", "metrics",
           "n_params", "n_hparams", "hyper_flops", "plain_flops", "graph_bytes", "batch_size"]


def _by_cell(out) -> pd.DataFrame:
    df = pd.read_csv(out / "results.csv")
    return df.set_index(pd.Index([row_key(r) for _, r in df.iterrows()])).sort_index()


def test_ray_run_rows_equal_a_local_runs(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    assert main(["run", str(suite), "--out", str(tmp_path / "local"), "--quiet"]) == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2 ** 20)
    try:
        # two CPUs per cell on a 2-CPU Ray: one cell at a time, each with the local run's threads
        assert main(["run", str(suite), "--out", str(tmp_path / "ray"), "--quiet", "--executor", "ray",
                     "--cpus-per-cell", "2"]) == 0
    finally:
        ray.shutdown()
    local, remote = _by_cell(tmp_path / "local"), _by_cell(tmp_path / "ray")
    assert len(local) == 6 and list(local.index) == list(remote.index)
    assert (remote["status"] == "ok").all()
    pd.testing.assert_frame_equal(local[RESULTS], remote[RESULTS])
    assert (remote["shared_machine_cells"] == 0).all()
    curves = [pd.read_csv(tmp_path / d / "curves.csv").sort_values(["workload", "estimator", "seed", "step"])
              .reset_index(drop=True) for d in ("local", "ray")]
    pd.testing.assert_frame_equal(curves[0][["step", "val_loss", "test_accuracy"]],
                                  curves[1][["step", "val_loss", "test_accuracy"]])


def test_an_unreachable_ray_address_is_one_line(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text("workloads: [toy1d]\nestimators: [plain]\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--executor", "ray",
                 "--ray-address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect to Ray" in err
