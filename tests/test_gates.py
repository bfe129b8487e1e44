"""Gates that cannot say yes wrongly: `hgbench compare` and `hgbench check` keep their
exit-code contracts on damaged and degenerate input; a cell's whole life is bounded; no
code runs from data files; results.parquet never stays behind results.csv; a value no
column can store is that cell's error row; plugins, `reports/latest`, image folders and a
lost cluster each end in one line."""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.core.errors import ConfigError
from harness.core.plugins import ENV

TINY = ("name: gates\nworkloads: [toy1d]\nestimators: [plain, unroll, t1t2]\ntrain_steps: 2\nwarmup_steps: 0\n"
        "timed_steps: 1\ncurve_points: 0\n")


def _one_line(capsys, code: int, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("hgbench: error: ")]
        assert len(errors) == 1 and err.endswith(errors[0]), err
        err = errors[0]
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("gates")
    (tmp / "s.yaml").write_text(TINY)
    assert main(["run", str(tmp / "s.yaml"), "--out", str(tmp / "base"), "--quiet", "--in-process"]) == 0
    return tmp / "base"


def _new(base: Path, dest: Path, edit=None) -> Path:
    dest.mkdir()
    df = pd.read_csv(base / "results.csv", dtype={"params": str})
    df = edit(df) if edit else df
    df.to_csv(dest / "results.csv", index=False)
    return dest


# ---------------------------------------------------------------- compare's contract

def _drop_estimator(name):
    return lambda df: df[df["estimator"] != name]


def _set(column, value, where=lambda df: df["estimator"] == "unroll"):
    def edit(df):
        df[column] = df[column].astype(object)
        df.loc[where(df), column] = value
        return df
    return edit


def _new_param(df):
    df["params"] = [p.replace('"T": 1', '"T": 1, "new_knob": 0') for p in df["params"]]
    return df


CASES = {  # damage of the new run -> compare's exit status
    "identical": (None, 0),
    "a lost estimator's cells": (_drop_estimator("unroll"), 1),
    "only plain left": (lambda df: df[df["estimator"] == "plain"], 1),
    "a parameter gained (nothing of it matches)": (_new_param, 1),
    "NaN time on an ok row": (_set("hyper_time_s", math.nan), 2),
    "negative time": (_set("hyper_time_s", -1.0), 2),
    "time as text": (_set("hyper_time_s", "5s"), 2),
    "infinite memory": (_set("peak_rss_delta_bytes", math.inf), 2),
    "no time column": (lambda df: df.drop(columns=["hyper_time_s"]), 2),
    "no memory column": (lambda df: df.drop(columns=["peak_rss_delta_bytes"]), 2),
    "a cell listed twice": (lambda df: pd.concat([df, df.iloc[[0]]]), 2),
    "newly failing": (_set("status", "error"), 1),
    "memory from 0 to 10 GiB": (lambda df: _set("peak_rss_delta_bytes", 10 * 2 ** 30,
                                                lambda d: d["estimator"] == "plain")(df), 1),
    "a time of 5 s": (_set("hyper_time_s", 5.0), 1),
}


@pytest.mark.parametrize("case", CASES)
def test_compare_keeps_its_exit_code_contract(base_run, tmp_path, capsys, case):
    edit, code = CASES[case]
    new = _new(base_run, tmp_path / "new", edit)
    if case == "memory from 0 to 10 GiB":  # a base of exactly 0 bytes (plain on toy1d: nothing held)
        base = _new(base_run, tmp_path / "base", _set("peak_rss_delta_bytes", 0, lambda d: d["estimator"] == "plain"))
    else:
        base = base_run
    err = _one_line(capsys, code, ["compare", str(base), str(new)])
    if code == 0:
        assert "all 3 cells" in err and "matched, no regression" in err
    if case.startswith("a lost") or case.startswith("only plain"):
        assert "have no row in" in err and "unroll" in err
    if case == "a cell listed twice":
        assert "has two rows" in err


def test_compare_never_says_yes_on_randomly_damaged_tables(base_run, tmp_path, capsys):
    """A fuzz over the new table: whatever the damage, the exit status is 0, 1 or 2, a 2 is
    one line, and a 0 means every base cell was matched with finite, non-negative,
    unchanged-enough numbers."""
    rng = random.Random(0)
    values = [math.nan, -1, 0, 1e-9, 1e30, "x", "", "5s", math.inf, None, 2 ** 70, True]
    base = pd.read_csv(base_run / "results.csv", dtype={"params": str})
    for trial in range(25):
        def damage(df, rng=rng):
            df = df.copy()
            for _ in range(rng.randint(1, 3)):
                what = rng.random()
                if what < 0.3 and len(df) > 1:
                    df = df.drop(df.index[rng.randrange(len(df))])
                elif what < 0.4:
                    df = pd.concat([df, df.iloc[[rng.randrange(len(df))]]])
                else:
                    col = rng.choice(["hyper_time_s", "peak_rss_delta_bytes", "status", "seed", "params"])
                    df[col] = df[col].astype(object)
                    df.iloc[rng.randrange(len(df)), df.columns.get_loc(col)] = rng.choice(values)
            return df
        new = _new(base_run, tmp_path / f"new{trial}", damage)
        capsys.readouterr()
        code = main(["compare", str(base_run), str(new)])
        err = capsys.readouterr().err
        assert code in (0, 1, 2) and "Traceback" not in err, (trial, err)
        if code == 2:
            assert err.count("hgbench: error: ") == 1, err
        if code == 0:
            got = pd.read_csv(new / "results.csv", dtype={"params": str})
            assert len(got) == len(base), (trial, "a 0 with a cell lost or doubled")
            t = pd.to_numeric(got["hyper_time_s"], errors="coerce")
            m = pd.to_numeric(got["peak_rss_delta_bytes"], errors="coerce")
            assert (got["status"] == "ok").all() and np.isfinite(t).all() and (t >= 0).all() \
                and np.isfinite(m).all() and (m >= 0).all(), trial


# ---------------------------------------------------------------- check's contract

def test_check_survives_estimators_that_exit_crash_hang_or_raise(monkeypatch, capsys):
    from harness.run import isolation

    monkeypatch.setenv(ENV, "tests.hostile_plugins")
    monkeypatch.setattr(isolation, "EXIT_GRACE_S", 1.0)
    names = ["exits_zero", "plain", "hard_exit", "segfault", "raising_init", "mixed_keys", "leaves_thread",
             "sleeps", "t1t2"]
    capsys.readouterr()
    assert main(["check", *names, "--timeout-s", "20"]) == 1
    captured = capsys.readouterr()
    verdict = {line.split()[1].rstrip(":"): line.split()[0] for line in captured.out.splitlines()}
    assert verdict == {"exits_zero": "BROKEN", "plain": "ok", "hard_exit": "BROKEN", "segfault": "BROKEN",
                       "raising_init": "BROKEN", "mixed_keys": "BROKEN", "leaves_thread": "ok",
                       "sleeps": "BROKEN", "t1t2": "ok"}, captured.out
    text = captured.out
    assert "called sys.exit(0)" in text and "exited with code 3" in text and "SIGSEGV" in text
    assert "constructor raised RuntimeError" in text and "did not finish within" in text
    assert "3 of 9 estimators keep the contract" in captured.err and "Traceback" not in captured.err
    assert len(captured.out.splitlines()) == 9  # (one verdict line per estimator, in order)


def test_a_run_refuses_gradients_for_keys_that_are_not_hyperparameters(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, "tests.hostile_plugins")
    suite = tmp_path / "s.yaml"
    suite.write_text(TINY.replace("[plain, unroll, t1t2]", "[extra_key, plain]"))
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--quiet", "--in-process"]) == 1
    rows = pd.read_csv(tmp_path / "o" / "results.csv").set_index("estimator")
    assert rows.loc["extra_key", "status"] == "error"
    assert "not_a_hyperparameter" in rows.loc["extra_key", "error"] and rows.loc["plain", "status"] == "ok"


# ---------------------------------------------------------------- values no column can store

def test_a_value_no_column_can_store_is_that_cells_error_row(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, "tests.hostile_plugins")
    suite = tmp_path / "s.yaml"
    suite.write_text(TINY.replace("[toy1d]", "[unstorable, toy1d]").replace("[plain, unroll, t1t2]", "[plain]"))
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    rows = pd.read_parquet(tmp_path / "o" / "results.parquet").set_index("workload")
    assert rows.loc["unstorable", "status"] == "error" and "does not fit 64 bits" in rows.loc["unstorable", "error"]
    assert rows.loc["toy1d", "status"] == "ok" and (tmp_path / "o" / "report.html").exists()


def test_a_folder_name_that_is_not_utf8_is_one_line(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(TINY)
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xff")
    _one_line(capsys, 2, ["run", str(suite), "--out", out, "--quiet", "--in-process"], "not valid UTF-8")


# ---------------------------------------------------------------- parquet in line with csv

def _behind(folder: Path) -> None:
    """As a stop between the two writes leaves it: the csv newer, the parquet a row short."""
    df = pd.read_parquet(folder / "results.parquet")
    df.iloc[:-1].to_parquet(folder / "results.parquet", index=False)
    os.utime(folder / "results.parquet", ns=(0, 0))
    (folder / ".results.parquet.abc123").write_bytes(b"half")


def test_a_parquet_left_behind_is_brought_back_by_resume_and_by_report(base_run, tmp_path, capsys):
    import shutil

    for command in ("resume", "report", "compare"):
        folder = tmp_path / command
        shutil.copytree(base_run, folder)
        _behind(folder)
        argv = {"resume": ["run", str(base_run.parent / "s.yaml"), "--out", str(folder), "--resume", "--quiet",
                           "--in-process"],
                "report": ["report", str(folder)], "compare": ["compare", str(base_run), str(folder)]}[command]
        assert main(argv) == 0, capsys.readouterr().err
        csv, parquet = pd.read_csv(folder / "results.csv"), pd.read_parquet(folder / "results.parquet")
        assert len(parquet) == len(csv) == 3, command
        assert list(parquet["estimator"]) == list(csv["estimator"])
        assert not (folder / ".results.parquet.abc123").exists() or command != "resume"


# ---------------------------------------------------------------- no code from data files

def test_cifar_batches_are_read_without_running_code_and_as_torchvision_reads_them(tmp_path):
    from tests.datasets_on_disk import write_cifar10
    from workloads.datasets import load_cifar

    write_cifar10(tmp_path)
    ours = load_cifar("cifar10", str(tmp_path), False, train=True)
    batches = []  # the files this test wrote, read with plain pickle (trusted) as torchvision lays them out
    for i in range(1, 6):
        with open(tmp_path / "cifar-10-batches-py" / f"data_batch_{i}", "rb") as f:
            batches.append(pickle.load(f, encoding="latin1"))
    images = np.vstack([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
    assert ours.y.tolist() == [y for b in batches for y in b["labels"]]
    raw = (ours.x * torch_std() + torch_mean()) * 255
    assert np.allclose(raw.numpy(), images, atol=1e-3)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({"data": Payload(), "labels": []}))
    with pytest.raises(ConfigError, match="data_batch_2: not a CIFAR batch file .*posix.system"):
        load_cifar("cifar10", str(tmp_path), False, train=True)
    assert not (tmp_path / "pwned").exists()


def torch_mean():
    import torch
    from workloads.datasets import CIFAR_MEAN
    return torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)


def torch_std():
    import torch
    from workloads.datasets import CIFAR_STD
    return torch.tensor(CIFAR_STD).view(1, 3, 1, 1)


def test_an_image_folder_with_a_symlink_loop_is_refused_at_load(tmp_path):
    from tests.datasets_on_disk import write_image_folder
    from workloads.datasets import check_folder

    root = write_image_folder(tmp_path / "dom", classes=3, per_class=2)
    first = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (first / "loop").symlink_to("..", target_is_directory=True)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="symlink loop"):
        check_folder(str(root), "workloads[0].params.domain_dirs.a")
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------- plugins

@pytest.mark.parametrize("body, needle", [
    ("import sys\nsys.exit(0)\n", "called sys.exit(0)"),
    ("raise RuntimeError('kaput')\n", "RuntimeError: kaput"),
    ("def broken(:\n", "SyntaxError"),
    ("from estimators import ESTIMATORS\nfrom estimators.plain import Plain\nESTIMATORS.register('plain')(Plain)\n",
     "registered twice"),
])
def test_a_plugin_that_fails_on_import_is_one_line_for_run_check_and_list(tmp_path, monkeypatch, capsys, body, needle):
    name = f"plugin_{abs(hash(body)) % 10 ** 8}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(ENV, name)
    suite = tmp_path / "s.yaml"
    suite.write_text(TINY)
    for argv in (["run", str(suite), "--out", str(tmp_path / "o")], ["check", "plain"], ["list"]):
        _one_line(capsys, 2, argv, name, needle)


def test_a_plugin_name_that_is_not_a_module_name_is_refused(monkeypatch, capsys):
    monkeypatch.setenv(ENV, "../../etc/passwd")
    _one_line(capsys, 2, ["list"], "is not a module name")


# ---------------------------------------------------------------- reports/latest and a lost cluster

def test_runs_started_in_the_same_second_get_their_own_folders_and_latest_is_replaced_atomically(tmp_path):
    from harness.store.runfolder import RunFolder, default_out

    a, b = default_out(tmp_path), default_out(tmp_path)
    assert a != b and a.is_dir() and b.is_dir()
    for path in (a, b, a):
        with RunFolder.open(path, resume=False) as folder:
            folder.point_latest()
        assert os.readlink(tmp_path / "latest") == path.name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".latest")]
    real = tmp_path / "other"
    real.mkdir()
    (real / "latest").mkdir()
    with RunFolder.open(real / "run", resume=False) as folder:
        folder.point_latest()  # a real folder named latest is left alone
    assert (real / "latest").is_dir() and not (real / "latest").is_symlink()


def test_a_cluster_that_goes_away_is_one_line_naming_the_missing_cells_and_resume_continues(
        tmp_path, monkeypatch, capsys):
    from harness.run import executors

    class Vanishing(executors.LocalExecutor):
        def run(self, cells, row):
            cells = list(cells)
            yield cells[0], row(cells[0])
            raise executors.ExecutorLost("the Ray cluster at 10.0.0.1:6379 went away (RaySystemError: gone)")

    monkeypatch.setitem(executors.EXECUTORS._items, "local", Vanishing)
    suite = tmp_path / "s.yaml"
    suite.write_text(TINY)
    out = tmp_path / "o"
    err = _one_line(capsys, 2, ["run", str(suite), "--out", str(out), "--quiet", "--in-process"],
                    "went away", "2 cell(s) have no row", "--resume --out")
    assert "unroll" in err and len(pd.read_csv(out / "results.csv")) == 1
    monkeypatch.setitem(executors.EXECUTORS._items, "local", executors.LocalExecutor)
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--in-process", "--resume"]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 3


# ---------------------------------------------------------------- the report scales

def test_variant_labels_are_linear_in_rows_and_equal_their_definition(monkeypatch):
    from harness.report import tables

    def brute(names, params):  # the definition: keys whose values differ between rows of a name
        out = []
        for name, p in zip(names, params):
            others = [q for n, q in zip(names, params) if n == name]
            keys = [k for k in p if len({json.dumps(q.get(k), sort_keys=True) for q in others}) > 1]
            out.append(f"{name}({','.join(f'{k}={p[k]}' for k in keys)})" if keys else name)
        return out

    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 10)
        names = pd.Series([rng.choice("ab") for _ in range(n)])
        params = [{k: rng.choice([1, 2, None, "x"]) for k in rng.sample("xyz", rng.randint(0, 3))} for _ in range(n)]
        assert tables._labels(names, params).tolist() == brute(names, params)
    calls = []
    real = tables.json.dumps
    monkeypatch.setattr(tables.json, "dumps", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = 3000
    tables._labels(pd.Series(["unroll"] * rows), [{"T": i % 7, "backend": "func", "seed": i} for i in range(rows)])
    assert len(calls) <= 3 * rows  # one serialisation per value, not one per pair of rows
