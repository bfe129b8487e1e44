"""One shape for a run and a result: the RunSpec resolved once and read back from the run
folder, the CellResult made in the cell's process and passed on unchanged, the device
decided once in the cell's own process, provenance taken where the cell ran."""
from __future__ import annotations

import ast
import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.cli import main, parser
from harness.core.errors import ConfigError
from harness.core.result import CellResult
from harness.core.schema import CURVE_POINT_COLUMNS, SETTINGS
from harness.core.spec import RECORD_FILE, RunSpec
from harness.plan.suite import build_suite

REPO = Path(__file__).resolve().parent.parent
SUITE = ("name: shape\nworkloads: [toy1d]\nestimators: [plain, unroll]\ntrain_steps: 4\nwarmup_steps: 0\n"
         "timed_steps: 1\ncurve_points: 2\nmemory_frontier: [1MB, 1GB]\nfidelity: {checkpoints: 1, reference_T: 3}\n")


def _suite(tmp_path: Path, text: str = SUITE) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_the_spec_resolves_every_setting_once_and_round_trips_through_its_record():
    spec = build_suite({"workloads": ["toy1d"], "estimators": ["plain"], "seeds": [3, 1], "timed_steps": 4,
                        "memory_frontier": ["1GB", "2MiB"], "fidelity": {"draws": 5}}).spec
    assert spec.settings == {**{p.name: p.default for p in SETTINGS.values()}, "timed_steps": 4}
    assert spec.fidelity == {"checkpoints": 0, "reference_T": 20, "draws": 5, "trajectory": "own"}
    assert spec.seeds == (3, 1) and spec.memory_frontier == (2 * 2 ** 20, 10 ** 9)
    assert RunSpec.from_record(spec.record(), "x") == spec
    # resume may change timeout_s, nothing else that every row was measured with
    other = RunSpec.from_record(spec.record().replace('"timeout_s": 3600.0', '"timeout_s": 9.0'), "x")
    assert spec.difference(other) is None
    other = RunSpec.from_record(spec.record().replace('"draws": 5', '"draws": 6'), "x")
    assert spec.difference(other) == "suite.fidelity.draws was 5, is 6"


@pytest.mark.parametrize("text", ["{", "[]", '{"settings": {}}', '{"settings": {"device": "tpu"}, "fidelity": {}, '
                                  '"seeds": [0], "memory_frontier": []}'])
def test_a_damaged_record_is_one_config_error_naming_the_file(text):
    with pytest.raises(ConfigError, match="rec/run.json: not a readable run record"):
        RunSpec.from_record(text, "rec/run.json")


def test_the_run_folder_keeps_the_spec_and_the_report_reads_its_budgets_from_it(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", str(_suite(tmp_path)), "--out", str(out), "--quiet", "--in-process"]) == 0
    spec = RunSpec.from_record((out / RECORD_FILE).read_text(), "x")
    assert spec.name == "shape" and spec.memory_frontier == (10 ** 6, 10 ** 9)
    (out / "suite.yaml").unlink()        # the report no longer parses the suite's YAML
    (out / "frontier.csv").unlink()
    assert main(["report", str(out)]) == 0
    assert sorted(pd.read_csv(out / "frontier.csv")["budget_bytes"].unique()) == [10 ** 6, 10 ** 9]


def test_a_folder_without_its_record_is_refused_on_resume_in_one_line(tmp_path, capsys):
    out = tmp_path / "o"
    suite = _suite(tmp_path)
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--in-process"]) == 0
    (out / RECORD_FILE).unlink()
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--in-process", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"hgbench: error: {out / RECORD_FILE}: missing")
    assert main(["report", str(out)]) == 0  # a report does without it (no budgets)


def test_the_cell_process_makes_one_result_with_its_curve_apart_from_its_row(tmp_path):
    from harness.run.sweep import sweep
    from harness.store.runfolder import RunFolder

    cells = build_suite(__import__("yaml").safe_load(SUITE)).cells
    results = list(sweep(cells, isolate=False))
    assert all(isinstance(r, CellResult) and r.ok for r in results)
    unroll = results[1]
    assert len(unroll.curve) == 3 and all(set(p) == set(CURVE_POINT_COLUMNS) for p in unroll.curve)
    assert "curve" not in unroll.row() and unroll.row()["estimator"] == "unroll"
    assert unroll.wall_s > 0 and unroll.provenance["device_type"] == "cpu" and unroll.provenance["start_time"]
    before = unroll.row()
    with RunFolder.open(tmp_path / "o", resume=False) as folder:
        for r in results:
            folder.add(r)
    assert unroll.key() in folder.finished and unroll.row() == before  # (kept, not changed)
    curves = pd.read_csv(tmp_path / "o" / "curves.csv")
    assert (curves["estimator"] == "unroll").sum() == 3


def test_a_result_refuses_what_does_not_fit_its_parts():
    identity = build_suite({"workloads": ["toy1d"], "estimators": ["plain"]}).cells[0].identity()
    with pytest.raises(ValueError, match="status"):
        CellResult(identity, "finished")
    with pytest.raises(ValueError, match="may not set seed"):
        CellResult(identity, "ok", measurements={"seed": 4})
    with pytest.raises(ValueError, match="PROVENANCE"):
        CellResult(identity, "ok", provenance={"cpu": "x"})
    with pytest.raises(ValueError, match="lacks"):
        CellResult({"workload": "toy1d"}, "ok")


def test_the_device_is_decided_once_per_cell_in_the_cells_own_process(monkeypatch, tmp_path):
    import harness.run.cell_process as cell_process

    decided = []
    original = cell_process.resolve_device
    monkeypatch.setattr(cell_process, "resolve_device", lambda name: decided.append(name) or original(name))
    suite = _suite(tmp_path, SUITE.replace("name: shape", "name: shape\ndevice: auto"))
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--quiet", "--in-process"]) == 0
    assert decided == ["auto", "auto"]  # one decision per cell, none by the driver
    rows = pd.read_csv(tmp_path / "o" / "results.csv")
    assert (rows["device"] == "auto").all()
    assert (rows["device_type"] == ("cuda" if torch.cuda.is_available() else "cpu")).all()
    # and no other module decides it
    callers = [p.relative_to(REPO).as_posix() for p in (REPO / "harness").rglob("*.py")
               if any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == "resolve_device"
                      for n in ast.walk(ast.parse(p.read_text())))]
    assert callers == ["harness/run/cell_process.py"]


def test_ray_reserves_a_gpu_for_cells_that_will_use_one():
    from harness.run.executors import RayExecutor

    cells = {c.device: c for d in ("cpu", "cuda", "auto")
             for c in build_suite({"workloads": ["toy1d"], "estimators": ["plain"], "device": d}).cells}
    ray = object.__new__(RayExecutor)  # (no cluster: only the placement rule)
    ray.gpus = 2.0
    assert [ray.uses_gpu(cells[d]) for d in ("cpu", "cuda", "auto")] == [False, True, True]
    ray.gpus = 0.0
    assert [ray.uses_gpu(cells[d]) for d in ("cpu", "cuda", "auto")] == [False, True, False]
    with pytest.raises(ConfigError, match="the Ray cluster has none"):
        ray.admit([cells["cuda"]])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_suite_on_a_machine_without_cuda_stops_before_any_write(tmp_path, capsys):
    suite = _suite(tmp_path, SUITE.replace("name: shape", "name: shape\ndevice: cuda"))
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "device: cuda requested but torch.cuda.is_available() is False" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_provenance_is_the_machine_that_ran_the_cell(monkeypatch):
    """On Ray, `cell_result` runs on the worker: the machine facts it records are taken
    there, never handed over by the driver."""
    import harness.run.cell_process as cell_process
    import harness.run.sweep as sweep_module

    worker = {"cpu_model": "the worker's CPU", "hostname": "worker-7"}
    for module in (sweep_module, cell_process):
        original = module.machine_provenance
        monkeypatch.setattr(module, "machine_provenance", lambda original=original: {**original(), **worker})
    cell = build_suite({"workloads": ["toy1d"], "estimators": ["plain"], "train_steps": 1, "timed_steps": 1,
                        "warmup_steps": 0}).cells[0]
    result = sweep_module.cell_result(cell, isolate=False)
    assert {k: result.provenance[k] for k in worker} == worker


def _leaves_a_thread(_: object) -> str:
    threading.Thread(target=time.sleep, args=(600,), daemon=False).start()
    return "sent"


def test_a_cell_that_sends_its_result_and_then_hangs_does_not_hold_the_sweep(monkeypatch):
    from harness.run import isolation

    monkeypatch.setattr(isolation, "EXIT_GRACE_S", 1.0)
    start = time.monotonic()
    assert isolation.run_isolated(_leaves_a_thread, None, timeout_s=60) == "sent"
    assert time.monotonic() - start < 30


def test_summary_keeps_the_registry_name_beside_the_display_label():
    from harness.report.tables import Reference, prepare, summary
    from harness.core.schema import params_json

    rows = [{"suite": "s", "workload": "mwn", "backbone": "resnet10", "estimator": "plain", "seed": 0,
             "device": "cpu", "device_type": "cpu", "status": "ok", "params": params_json({}, {"batch_size": b}),
             "hyper_time_s": 0.1, "peak_rss_delta_bytes": 1.0, "synthetic": False, "train_steps": 1,
             "shared_machine_cells": 0} for b in (16, 64)]
    from harness.store.results import to_frame
    table = summary(prepare(to_frame(rows)), Reference.parse("plain"))
    assert table["workload"].tolist() == ["mwn", "mwn"]
    assert table["workload_label"].tolist() == ["mwn(batch_size=16)", "mwn(batch_size=64)"]


def test_paired_and_overhead_are_subcommands(capsys):
    commands = parser()._subparsers._group_actions[0].choices
    assert {"paired", "overhead"} <= set(commands)
    assert main(["paired", "plain", "unroll", "--rounds", "0"]) == 2
    assert "--rounds 0: must be >= 1" in capsys.readouterr().err
    assert main(["paired", "plain", "unroll", "--params", "[1]"]) == 2
    assert main(["overhead", "--steps", "0"]) == 2
    record = json.loads(build_suite({"workloads": ["toy1d"], "estimators": ["plain"]}).spec.record())
    assert set(record) == {"settings", "fidelity", "seeds", "memory_frontier", "source", "overrides"}
