"""The runner writes one honest row per cell, and meta-training does what it claims."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from harness.cli import main
from harness.core.schema import COLUMNS
from harness.run.cell_process import run_cell
from harness.run.sweep import cell_result
from harness.plan.suite import build_suite

REQUIRED = ["workload", "backbone", "estimator", "params", "seed", "device", "status", "error",
            "step_time_s", "step_time_iqr_s", "test_accuracy", "final_val_loss", "torch_version",
            "git_sha"]

TINY = """\
name: tiny
seeds: [0]
warmup_steps: 1
timed_steps: 2
train_steps: 4
workloads:
  - name: toy1d
  - name: mwn
    backbone: resnet10
    params: {width: 4, batch_size: 16}
estimators:
  - name: plain
  - name: unroll
    params: {backend: [func, higher]}
  - name: t1t2
    params: {mode: [exact, fd]}
  - name: evograd
"""


def test_run_writes_results_with_the_documented_columns(tmp_path, capsys):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns) == COLUMNS and set(REQUIRED) <= set(df.columns)
    assert len(df) == 2 * 6
    assert (df["status"] == "ok").all(), df["error"].tolist()
    assert (df["step_time_s"] > 0).all() and (df["step_time_iqr_s"] >= 0).all()
    mwn = df[df["workload"] == "mwn"]
    assert mwn["test_accuracy"].between(0, 1).all()
    assert df[df["workload"] == "toy1d"]["test_accuracy"].isna().all()
    assert set(mwn["estimator"]) == {"plain", "unroll", "t1t2", "evograd"}
    params = json.loads(mwn[mwn["estimator"] == "evograd"]["params"].iloc[0])
    assert params["estimator"] == {"K": 2, "sigma": 0.001, "tau": 0.05, "noise": "rademacher", "perturb": "all",
                                   "order": "hyper_first", "sigma_from_lr": False}
    assert params["workload"]["width"] == 4
    assert (mwn["n_params"] > 0).all() and (mwn["n_hparams"] == 301).all()
    assert (out / "report.html").exists() and (out / "suite.yaml").read_text() == TINY
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.csv", "results.parquet", "curves.csv", "report.html", "summary.csv"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask
    # FLOPs and graph sizes are exact: their ordering is the estimators' design
    cost = mwn.set_index(mwn["estimator"] + "/" + mwn["params"].map(lambda p: json.dumps(json.loads(p)["estimator"])))
    by = lambda name: cost[cost.index.str.startswith(name)].iloc[0]
    assert by("plain")["hyper_flops"] == 0 and by("plain")["plain_flops"] > 0
    unroll, evo, fd = by("unroll"), by("evograd"), by('t1t2/{"fd_scale": 0.01, "mode": "fd"}')
    assert unroll["flops_x_plain"] > evo["flops_x_plain"] > 0
    assert unroll["graph_bytes"] > evo["graph_bytes"] > 0
    assert fd["flops_x_plain"] < by('t1t2/{"fd_scale": 0.01, "mode": "exact"}')["flops_x_plain"]
    assert (mwn["peak_rss_delta_bytes"] >= 0).all() and (mwn["time_x_plain"] >= 0).all()
    printed = capsys.readouterr().out
    assert "evograd" in printed and "results.csv" in printed


def test_default_output_goes_to_a_timestamped_folder_linked_as_latest(tmp_path, monkeypatch):
    suite = tmp_path / "s.yaml"
    suite.write_text("workloads: [toy1d]\nestimators: [plain]\ntrain_steps: 2\ntimed_steps: 1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(suite), "--quiet"]) == 0
    latest = tmp_path / "reports" / "latest"
    assert latest.is_symlink() and (latest / "results.csv").exists()
    assert not os.path.isabs(os.readlink(latest))


def test_a_failing_cell_becomes_a_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("HGBENCH_PLUGINS", "tests.faulty")
    suite = tmp_path / "s.yaml"
    suite.write_text("""\
train_steps: 3
timed_steps: 1
workloads:
  - name: toy1d
  - name: toy1d
    params: {lr: 5.0}
estimators: [exploding, unroll]
""")
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--quiet"]) == 1  # a cell failed
    df = pd.read_csv(tmp_path / "o" / "results.csv")
    assert len(df) == 4
    failed = df[df["estimator"] == "exploding"]
    assert (failed["status"] == "error").all()
    assert failed["error"].str.contains("RuntimeError: boom").all()
    unroll = df[df["estimator"] == "unroll"].reset_index()
    assert unroll.loc[0, "status"] == "ok"
    assert unroll.loc[1, "status"] == "diverged"  # lr 5 on a curvature >= 2 blows up
    assert unroll.loc[1, "error"].startswith("Diverged: ")


def _cell(text: str):
    import yaml
    return build_suite(yaml.safe_load(text)).cells


def test_the_same_seed_gives_identical_results_on_cpu():
    cells = _cell("""\
train_steps: 6
timed_steps: 1
workloads: [{name: mwn, params: {width: 4, batch_size: 16}}]
estimators: [evograd, unroll]
""")
    for cell in cells:
        a, b = run_cell(cell).row(), run_cell(cell).row()
        for k in ("test_accuracy", "final_val_loss", "metrics"):
            assert a[k] == b[k], (cell.estimator, k)


def test_meta_training_moves_lambda_towards_its_optimum_on_toy1d():
    cells = _cell("""\
train_steps: 200
timed_steps: 1
workloads: [{name: toy1d, params: {lam0: 0.2}}]
estimators: [plain, unroll, t1t2, evograd]
""")
    lam = {c.estimator: json.loads(cell_result(c).row()["metrics"])["lam"] for c in cells}
    assert lam["plain"] == pytest.approx(0.2)
    for name in ("unroll", "t1t2"):
        assert abs(lam[name] - 1.0) < 0.1, (name, lam[name])
    assert lam["evograd"] > 0.2  # default sigma is tiny on a 1-D problem: slow but right-signed


def test_report_escapes_values_and_draws_the_fidelity_figure(tmp_path):
    import xml.etree.ElementTree as ET

    import pandas as pd

    from harness.report.build import write_report
    from harness.report.source import Source
    from harness.store.results import to_frame

    def write_html(df, out, title):
        return write_report(Source(df, pd.DataFrame(), title, None, {}), out)
    rows = []
    for est, fid, t in (("unroll", 0.9, 4.0), ("evograd", 0.3, 2.0), ("<b>x</b>", None, 1.0)):
        rows.append({"suite": "s", "workload": "mwn", "backbone": "resnet10", "estimator": est,
                     "params": json.dumps({"estimator": {}, "workload": {}}), "seed": 0,
                     "status": "ok", "time_x_plain": t, "mem_x_plain": t / 2, "fid_cos_long": fid})
    page = write_html(to_frame(rows), tmp_path, "<script>alert(1)</script>").read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>x</b>" not in page.split("<svg")[0]
    fidelity = page[page.index("id='fig-fidelity_vs_cost'"):]
    svg = fidelity[fidelity.index("<svg"):fidelity.index("</svg>") + 6]
    root = ET.fromstring(svg)  # well-formed SVG
    ns = "{http://www.w3.org/2000/svg}"
    assert len(list(root.iter(ns + "path"))) > 10  # points, axes and ticks were drawn
    empty = write_html(to_frame(rows[2:]), tmp_path, "t").read_text()
    assert "fig-fidelity_vs_cost" not in empty


def test_gpu_check_without_cuda_runs_its_suite_on_the_cpu_and_says_so(tmp_path, capsys, monkeypatch):
    """CI's proof that `make gpu-check` and its suite work (a subset of the estimators, so the
    test stays short; the command and the reduced sizes are the real ones)."""
    import harness.cli as cli
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: make gpu-check runs the real thing there")
    monkeypatch.setattr(cli, "GPU_CHECK_ON_CPU", cli.GPU_CHECK_ON_CPU + (
        "estimators=[plain, {name: unroll, params: {T: 1, backend: func}}]", "workloads.2.estimators=['unroll:T=1']"))
    assert main(["gpu-check", "--out", str(tmp_path / "g"), "--quiet", "--in-process"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("hgbench gpu-check: no CUDA device here: running the gpu-check "
                                          "suite on the CPU at reduced size")
    assert "oom as expected" in err
    rows = pd.read_csv(tmp_path / "g" / "results.csv")
    assert set(rows["device"]) == {"cpu"} and (tmp_path / "g" / "report.html").exists()
    assert sorted(rows["status"]) == ["ok"] * (len(rows) - 1) + ["oom"]
    assert set(rows["backbone"]) == {"resnet32", "resnet10"}
