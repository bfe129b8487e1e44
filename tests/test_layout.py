"""The house plan holds: harness/ in stages that import only earlier ones, no import circle,
one schema for every row, plugins and the estimator contract open to other packages, one
run per folder, and sizes bounded at load."""
from __future__ import annotations

import ast
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from harness.core import schema
from harness.core.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "estimators", "workloads")

# Each part of the code and the parts it may import (itself included). Read top to bottom,
# this is the way data flows: a suite becomes cells (plan), cells are trained (train) and
# measured (measure) in their own processes (run), rows are kept (store) and read (report).
MAY_IMPORT = {
    "core": {"core"},
    "workloads": {"core", "workloads"},
    "estimators": {"core", "workloads", "estimators"},
    "plan": {"core", "workloads", "estimators", "plan"},
    "train": {"core", "workloads", "estimators", "plan", "train"},
    "measure": {"core", "train", "measure"},
    "run": {"core", "workloads", "estimators", "plan", "train", "measure", "run"},
    "store": {"core", "store"},
    "report": {"core", "store", "report"},
    "cli": {"core", "workloads", "estimators", "plan", "train", "measure", "run", "store", "report", "cli"},
}
ORDER = list(MAY_IMPORT)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """`harness.run.cell` -> `run`; `estimators.unroll` -> `estimators`; the CLI is `cli`."""
    parts = module.split(".")
    if parts[0] != "harness":
        return parts[0]
    if len(parts) == 1 or parts[1] in ("cli", "__main__"):
        return "cli" if len(parts) > 1 else "core"  # harness/__init__ holds only the version
    return parts[1]


def _imports(path: Path) -> set[str]:
    """Every project module `path` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m if m in modules else m.rsplit(".", 1)[0] for m in _imports(path)}
        graph[name] = {m for m in graph[name] if m in modules and m != name}
    return graph


def test_every_import_goes_to_the_same_stage_or_an_earlier_one():
    wrong = [f"{a} ({_part(a)}) imports {b} ({_part(b)})"
             for a, targets in _graph().items() for b in targets
             if _part(b) not in MAY_IMPORT[_part(a)] or ORDER.index(_part(b)) > ORDER.index(_part(a))]
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_circle():
    graph, state, circles = _graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path
                               else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"
    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not circles, circles


def test_the_layout_walk_sees_real_arrows():
    """The two tests above would pass on an empty graph: check they see known imports."""
    graph = _graph()
    assert "harness.core.schema" in graph["harness.store.results"]
    assert "harness.run.isolation" in graph["harness.run.sweep"]
    assert "harness.run.sweep" in graph["harness.cli"]  # (an import inside a function)
    assert _part("harness.report.tables") == "report" and _part("harness.cli") == "cli"


def test_the_forkserver_preloads_the_module_that_runs_cells():
    from harness.run import isolation
    from harness.run.cell_process import execute_cell

    for name in isolation.PRELOAD:
        importlib.import_module(name)
    assert execute_cell.__module__ in isolation.PRELOAD


def test_the_forkserver_also_preloads_what_the_runs_workloads_import():
    from harness.plan.suite import build_suite
    from harness.run.sweep import preload_modules
    from workloads import WORKLOADS

    for _, workload in WORKLOADS:
        for name in workload.preload:
            importlib.import_module(name)          # each named module exists
    cells = build_suite({"workloads": ["toy1d", "mwn", "rotation"], "estimators": ["plain"]}).cells
    assert preload_modules(cells) == ("sklearn.datasets",)
    assert preload_modules(cells[:1]) == ()


# ------------------------------------------------------------------ one schema


def test_every_setting_is_a_cell_field_an_identity_column_and_a_results_column():
    from dataclasses import fields

    from harness.plan.suite import build_suite

    cell = build_suite({"workloads": ["toy1d"], "estimators": ["plain"], "memory_budget_bytes": 5}).cells[0]
    names = {f.name for f in fields(cell)}
    identity = cell.identity()
    for name, column in schema.SETTING_COLUMN.items():
        assert column in names and column in identity and column in schema.COLUMNS, name
    assert identity["memory_budget_bytes"] == 5
    assert schema.row_key(identity) == cell.key()
    assert set(schema.KEY) <= set(schema.IDENTITY) <= set(schema.COLUMNS)
    assert len(schema.COLUMNS) == len(set(schema.COLUMNS))
    assert set(schema.CONSOLE_COLUMNS) <= set(schema.SUMMARY_COLUMNS)


def test_a_cell_survives_pickling_by_reference():
    import pickle

    from harness.plan.suite import build_suite

    cell = build_suite({"workloads": ["toy1d"], "estimators": ["plain"]}).cells[0]
    assert pickle.loads(pickle.dumps(cell)) == cell


def test_a_row_column_not_in_the_schema_is_an_error_under_tests_and_kept_with_a_warning_otherwise(monkeypatch):
    from harness.store.results import STRICT_ENV, to_frame

    row = {"workload": "toy1d", "status": "ok", "brand_new_measure": 1.5}
    assert os.environ.get(STRICT_ENV)  # set by conftest for the whole session
    with pytest.raises(schema.SchemaError, match="brand_new_measure"):
        to_frame([row])
    monkeypatch.delenv(STRICT_ENV)
    with pytest.warns(UserWarning, match="brand_new_measure"):
        df = to_frame([row])
    assert list(df.columns) == schema.COLUMNS + ["brand_new_measure"] and df["brand_new_measure"][0] == 1.5


def test_the_peak_rule_is_one_rule_for_the_budget_the_report_and_compare():
    import pandas as pd

    from harness.report.compare import _peak
    from harness.report.tables import peak_bytes

    rows = pd.DataFrame([{"device_type": "cuda", "peak_alloc_bytes": 7.0, "peak_rss_delta_bytes": 1.0},
                         {"device_type": "cpu", "peak_alloc_bytes": 7.0, "peak_rss_delta_bytes": 3.0}])
    assert peak_bytes(rows).tolist() == [7.0, 3.0]
    assert [_peak(r) for _, r in rows.iterrows()] == [7.0, 3.0]
    assert [schema.hyper_peak_bytes(r.to_dict()) for _, r in rows.iterrows()] == [7.0, 3.0]


# ------------------------------------------------------------------ sizes bounded at load


@pytest.mark.parametrize("override,message", [
    ("workloads.0.params.width=99999999999999999999", "width: 99999999999999999999 is too large (at most 16777216)"),
    ("workloads.0.params.width=" + "9" * 400, "width: 99999999999999999999...(400 characters) is too large"),
    ("workloads.0.params.batch_size=20000000", "batch_size: 20000000 is too large (at most 16777216)"),
    ("memory_budget_bytes=99999999999999999999", "memory_budget_bytes"),
    ("warmup_steps=-99999999999999999999", "too small"),
    ("timeout_s=10000000.0", "timeout_s: 10000000.0 is too large"),
])
def test_absurd_sizes_are_the_loaders_one_line_error(tmp_path, capsys, override, message):
    from harness.cli import main

    suite = tmp_path / "s.yaml"
    suite.write_text("workloads: [{name: mwn, params: {width: 4}}]\nestimators: [plain]\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--set", override, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


# ------------------------------------------------------------------ one run per folder

SLOW_SUITE = "train_steps: 0\nwarmup_steps: 0\ntimed_steps: 1\nworkloads: [toy1d]\nestimators: [plain, hang]\n"


def _start(suite: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HGBENCH_PLUGINS": "tests.faulty"}
    return subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--out", str(out), "--quiet",
                             *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_rows(out: Path, n: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        results = out / "results.csv"
        if results.exists() and len(results.read_text().splitlines()) > n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"no {n} rows in {out} within {timeout_s} s")


def test_a_second_run_into_a_held_folder_stops_with_one_line_naming_the_holder(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(SLOW_SUITE)
    out = tmp_path / "o"
    first = _start(suite, out)
    try:
        _wait_for_rows(out, 1, first)  # `plain` is done; `hang` holds the run
        for extra in ((), ("--resume",)):
            second = _start(suite, out, *extra)
            _, err = second.communicate(timeout=120)
            assert second.returncode == 2, err
            line = err.strip()
            assert len(line.splitlines()) == 1 and "another hgbench run is writing there" in line
            assert f"pid {first.pid}" in line
        assert first.poll() is None  # the holder was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # A lock left by a process killed with -9 is no lock: the run resumes (and the
    # hanging estimator is skipped by changing nothing but a timeout).
    resumed = _start(suite, out, "--resume", "--set", "timeout_s=3")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 1, err  # (the hanging cell is a timeout row)
    import pandas as pd
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["estimator"]) == ["hang", "plain"] and not df.duplicated(schema.KEY).any()


def test_the_lock_is_held_in_process_and_released_on_close(tmp_path):
    from harness.store.runfolder import RunFolder

    with RunFolder.open(tmp_path / "o", resume=False):
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            RunFolder.open(tmp_path / "o", resume=True)
    RunFolder.open(tmp_path / "o", resume=True).close()


# ------------------------------------------------------------------ plugins and the contract

PLUGIN = '''
import torch
from estimators import ESTIMATORS, Estimator
from estimators.t1t2 import T1T2


@ESTIMATORS.register("demo_half_t1t2")
class HalfT1T2(T1T2):
    """A well-behaved plugin: half of T1-T2's hypergradient."""
    name = "demo_half_t1t2"

    def hypergradient(self, inputs):
        return {k: 0.5 * v for k, v in super().hypergradient(inputs).items()}


@ESTIMATORS.register("demo_bad")
class Bad(Estimator):
    """Breaks the contract: nudges the real weights."""
    name = "demo_bad"

    def hypergradient(self, inputs):
        with torch.no_grad():
            next(iter(inputs.weights.values())).add_(1.0)
        return {k: torch.zeros_like(v) for k, v in inputs.hparams.items()}
'''


def test_an_installed_entry_point_plugin_is_loaded_listed_and_contract_checked(tmp_path):
    (tmp_path / "demo_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hgbench.plugins]\ndemo = demo_plugin\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    env.pop("HGBENCH_PLUGINS", None)

    def hgbench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    listed = hgbench("list")
    assert listed.returncode == 0 and "demo_half_t1t2" in listed.stdout, listed.stderr
    good = hgbench("check")  # every registered estimator: hgbench's own and the plugin's
    assert good.returncode == 1  # demo_bad is registered too, and is caught
    assert "ok      demo_half_t1t2" in good.stdout and "ok      unroll" in good.stdout
    assert "BROKEN  demo_bad: changed weight" in good.stdout


def _nudge(t):
    with torch.no_grad():
        t.add_(1.0)


BREACHES = {  # what an estimator does to the inputs, and what the check must say
    "weight": (lambda i: _nudge(next(iter(i.weights.values()))), "changed weight"),
    "buffer": (lambda i: _nudge(next(iter(i.buffers.values()))), "changed buffer"),
    "hyperparameter": (lambda i: _nudge(next(iter(i.hparams.values()))), "changed hyperparameter"),
    "structure": (lambda i: {"nope": 0}, "not gradients keyed like"),
    "shape": (lambda i: {k: v.detach().reshape(-1)[:1] for k, v in i.hparams.items()}, "gradient of .* is"),
    "finite": (lambda i: {k: torch.full_like(v, float("nan")) for k, v in i.hparams.items()}, "not finite"),
    "raises": (lambda i: 1 / 0, "ZeroDivisionError"),
}


@pytest.mark.parametrize("kind", BREACHES)
def test_the_public_contract_check_catches_each_kind_of_breach(kind, monkeypatch):
    from estimators import ESTIMATORS, Estimator
    from harness.train.contract import ContractViolation, check_estimator

    breach, message = BREACHES[kind]

    class Breach(Estimator):
        name = f"contract_test_{kind}"

        def hypergradient(self, inputs):
            out = breach(inputs)
            return out if out is not None else {k: torch.zeros_like(v) for k, v in inputs.hparams.items()}
    monkeypatch.setitem(ESTIMATORS._items, Breach.name, Breach)
    with pytest.raises(ContractViolation, match=message):
        check_estimator(Breach.name)


@pytest.mark.parametrize("name", sorted(n for n, c in __import__("estimators").ESTIMATORS
                                        if c.__module__.startswith("estimators.")))
def test_every_registered_estimator_keeps_the_contract(name):
    from harness.train.contract import check_estimator

    check_estimator(name)


def test_report_and_compare_import_no_torch(tmp_path):
    """`hgbench report` and `hgbench compare` are pandas work: they must run where torch is
    not installed, and start fast."""
    from harness.store.results import write_results

    rows = [{"suite": "s", "workload": "mwn", "backbone": "resnet10", "estimator": est,
             "params": '{"estimator": {}, "workload": {}}', "seed": 0, "device": "cpu", "status": "ok",
             "hyper_time_s": t, "time_x_plain": t * 10, "peak_rss_delta_bytes": 2 ** 20,
             "hyper_flops": 1e9, "test_accuracy": 0.9, "device_type": "cpu", "train_steps": 3}
            for est, t in (("unroll", 0.2), ("evograd", 0.1))]
    (tmp_path / "run").mkdir()
    write_results(rows, tmp_path / "run")
    code = textwrap.dedent(f"""
        import sys
        from harness.cli import main
        assert main(["report", {str(tmp_path / "run")!r}]) == 0
        assert main(["compare", {str(tmp_path / "run")!r}, {str(tmp_path / "run")!r}]) == 0
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "estimators", "workloads"))
        assert not heavy, heavy
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "report.html").exists()
