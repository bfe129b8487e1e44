"""Hostile and odd input: every case found by trying hgbench as an adversary would ends in a
result or a one-line error naming what is wrong, never a traceback, silent mixing or lost
rows. One regression test per case (numbered as in the issue), then a seeded fuzz of over a
thousand generated suites and damaged run folders."""
from __future__ import annotations

import errno
import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.core.errors import ConfigError
from harness.core.plugins import ENV
from harness.plan.suite import MAX_CELLS, build_suite, find_suite, load_suite
from harness.store.results import write_results

TINY = "workloads: [toy1d]\nestimators: [plain, unroll]\ntrain_steps: 2\nwarmup_steps: 0\ntimed_steps: 1\n"


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Exit 2 with the error on one line (progress lines before it are fine), no traceback."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("hgbench: error: ")]
    assert len(errors) == 1 and err.endswith(errors[0]) and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], err
    return errors[0]


@pytest.fixture
def suite(tmp_path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(TINY)
    return path


def _run(suite: Path, out: Path, *extra: str) -> int:
    return main(["run", str(suite), "--out", str(out), "--quiet", "--in-process", *extra])


# ------------------------------------------------------------------ numbered cases


def test_1_a_timeout_past_the_poll_limit_is_refused_at_load(capsys, suite, tmp_path):
    _one_line_error(capsys, ["run", str(suite), "--out", str(tmp_path / "o"), "--set", "timeout_s=10000000.0"],
                    "timeout_s", "too large")


@pytest.mark.parametrize("override", ["warmup_steps=99999999999999999999", "memory_budget_bytes=18446744073709551616",
                                      "train_steps=-99999999999999999999"])
def test_2_integers_past_64_bits_are_refused_at_load(capsys, suite, tmp_path, override):
    _one_line_error(capsys, ["run", str(suite), "--out", str(tmp_path / "o"), "--set", override],
                    override.split("=")[0])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["seeds", "fidelity", "workloads"])
def test_3_yaml_nested_thousands_of_levels_is_one_line(capsys, tmp_path, where):
    deep = "[" * 3000 + "]" * 3000
    path = tmp_path / "deep.yaml"
    path.write_text(TINY + f"{where}: {deep}\n" if where != "workloads" else
                    f"workloads: {deep}\nestimators: [plain]\n")
    _one_line_error(capsys, ["run", str(path), "--out", str(tmp_path / "o")], "nested too deeply")
    # and a structure built in Python, as a plugin or a test would pass it
    node: object = 0
    for _ in range(3000):
        node = [node]
    with pytest.raises(ConfigError, match="nested more than"):
        build_suite({"workloads": ["toy1d"], "estimators": ["plain"], "seeds": node})


def test_4_a_billion_cells_are_refused_before_any_is_built():
    values = list(range(1000))
    with pytest.raises(ConfigError, match="bogus: unknown parameter"):  # names first, before the product
        build_suite({"workloads": [{"name": "mwn", "params": {"width": values, "batch_size": values,
                                                              "bogus": values}}], "estimators": ["plain"]})
    with pytest.raises(ConfigError, match=f"expands to 1,000,000,000 cells, more than the limit of {MAX_CELLS:,}"):
        build_suite({"workloads": [{"name": "mwn", "params": {"width": values[1:] + [1000], "batch_size": values[1:] + [1000],
                                                              "meta_per_class": values[1:] + [1000]}}],
                     "estimators": ["plain"]})


def test_5_a_huge_name_is_refused_and_the_store_reads_every_field_it_wrote(capsys, suite, tmp_path):
    _one_line_error(capsys, ["run", str(suite), "--out", str(tmp_path / "o"), "--set", "name=" + "n" * 131_072],
                    "name", "too long (at most 200 characters)")
    from harness.store.results import read_results
    rows = [{"suite": "s", "workload": "toy1d", "backbone": "none", "estimator": "plain",
             "params": '{"estimator": {}, "workload": {}}', "seed": 0, "device": "cpu", "status": "error",
             "error": "x" * 200_000}]  # an error message longer than the csv module's default field limit
    (tmp_path / "w").mkdir()
    write_results(rows, tmp_path / "w")
    assert read_results(tmp_path / "w")["error"][0] == "x" * 200_000


@pytest.mark.parametrize("argv", [["--set", "memory_frontier=[" + "9" * 400 + "]"],
                                  ["--set", "memory_frontier=['" + "9" * 400 + "MB']"]])
def test_6_a_400_digit_size_is_one_line(capsys, suite, tmp_path, argv):
    _one_line_error(capsys, ["run", str(suite), "--out", str(tmp_path / "o"), *argv], "memory_frontier")


def test_6_a_400_digit_report_budget_is_one_line(capsys, tmp_path):
    _one_line_error(capsys, ["report", str(tmp_path), "--budget", "9" * 400], "--budget")


def _rows(**over) -> list[dict]:
    base = {"suite": "s", "workload": "mwn", "backbone": "resnet10", "device": "cpu", "status": "ok",
            "hyper_time_s": 0.1, "time_x_plain": 2.0, "peak_rss_delta_bytes": 2 ** 20, "hyper_flops": 1e9,
            "plain_flops": 5e8, "flops_x_plain": 2.0, "device_type": "cpu", "train_steps": 0, "seed": 0}
    rows = []
    for est, params in (("unroll", {"T": 1}), ("evograd", {"K": 2})):
        rows.append({**base, "estimator": est, "params": json.dumps({"estimator": params, "workload": {}}),
                     **over})
    return rows


def test_7_mathtext_in_user_text_is_drawn_literally(tmp_path, capsys):
    rows = _rows()
    for i, r in enumerate(rows):  # labels show the workload parameters that differ between rows
        r["params"] = json.dumps({"estimator": {"T": 1}, "workload": {"data_root": f"$\\undefinedcmd{{x{i}}}$"}})
        r["estimator"] = "unroll"
    write_results(rows, tmp_path)
    assert main(["report", str(tmp_path)]) == 0, capsys.readouterr().err
    assert "undefinedcmd" in (tmp_path / "report.html").read_text()


def test_8_a_real_cpu_out_of_memory_is_an_oom_row(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "tests.faulty")
    path = tmp_path / "s.yaml"
    path.write_text(TINY.replace("[plain, unroll]", "[plain, cpu_oom]"))
    assert _run(path, tmp_path / "o") == 1  # a cell failed: the exit says so
    df = pd.read_csv(tmp_path / "o" / "results.csv").set_index("estimator")
    assert df.loc["cpu_oom", "status"] == "oom" and "can't allocate memory" in df.loc["cpu_oom", "error"]
    assert df.loc["plain", "status"] == "ok"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("real")
    (tmp / "s.yaml").write_text(TINY)
    assert main(["run", str(tmp / "s.yaml"), "--out", str(tmp / "run"), "--quiet", "--in-process"]) == 0
    return tmp / "run"


DAMAGES = {
    "params not JSON": lambda d: _edit_csv(d, "params", 0, "{not json"),
    "params a JSON list": lambda d: _edit_csv(d, "params", 0, "[1, 2]"),
    "seed abc": lambda d: _edit_csv(d, "seed", 0, "abc"),
    "seed 1.7": lambda d: _edit_csv(d, "seed", 1, "1.7"),
    "results.csv a folder": lambda d: _make_dir(d / "results.csv"),
    "curves.csv a folder": lambda d: _make_dir(d / "curves.csv"),
    "suite.yaml nested 3000 levels": lambda d: (d / "suite.yaml").write_text("a: " + "[" * 3000 + "]" * 3000),
    "run.json nested 3000 levels": lambda d: (d / "run.json").write_text("[" * 3000 + "]" * 3000),
    "run.json with a bad setting": lambda d: (d / "run.json").write_text(
        (d / "run.json").read_text().replace('"timed_steps": 1', '"timed_steps": -4')),
    "run.json a folder": lambda d: _make_dir(d / "run.json"),
}


def _edit_csv(folder: Path, column: str, row: int, value: str) -> None:
    df = pd.read_csv(folder / "results.csv", dtype=str, keep_default_na=False)
    df.loc[row, column] = value
    df.to_csv(folder / "results.csv", index=False)


def _make_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "x").write_text("")


@pytest.mark.parametrize("damage", DAMAGES)
def test_9_a_damaged_run_folder_is_one_line_for_report_compare_and_resume(capsys, real_run, tmp_path, damage):
    folder = tmp_path / "run"
    shutil.copytree(real_run, folder)
    DAMAGES[damage](folder)
    capsys.readouterr()
    suite = folder.parent / "s.yaml"
    suite.write_text(TINY)
    outcomes = {}
    for name, argv in (("report", ["report", str(folder)]), ("compare", ["compare", str(folder), str(real_run)]),
                       ("resume", ["run", str(suite), "--out", str(folder), "--resume", "--quiet", "--in-process"])):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        outcomes[name] = code
        assert code in (0, 1, 2), (name, code)
        if code == 2:
            errors = [line for line in err.splitlines() if line.startswith("hgbench: error: ")]
            assert len(errors) == 1 and err.endswith(errors[0]) and "Traceback" not in err, (name, err)
            assert str(folder) in errors[0], (name, err)
    if damage == "suite.yaml nested 3000 levels":  # the record is intact: run.json, not suite.yaml, is read back
        assert outcomes == {"report": 0, "compare": 0, "resume": 0}
    elif damage.startswith("run.json") and damage != "run.json a folder":  # compare reads only the tables
        assert outcomes == {"report": 2, "compare": 0, "resume": 2}
    else:
        assert outcomes == {"report": 2, "compare": 2, "resume": 2}


def test_9_a_results_table_missing_measured_columns_still_reports(tmp_path, capsys):
    rows = _rows()
    pd.DataFrame(rows)[["suite", "workload", "backbone", "estimator", "params", "seed", "device", "status"]] \
        .to_csv(tmp_path / "results.csv", index=False)
    assert main(["report", str(tmp_path)]) == 0, capsys.readouterr().err


def test_11_a_resume_with_another_effective_suite_is_refused_and_set_is_recorded(capsys, suite, tmp_path):
    out = tmp_path / "o"
    assert _run(suite, out, "--set", "train_steps=3") == 0
    recorded = (out / "suite.yaml").read_text()
    assert "--set train_steps=3" in recorded and yaml.safe_load(recorded)["train_steps"] == 3
    _one_line_error(capsys, ["run", str(suite), "--out", str(out), "--resume", "--set", "train_steps=20"],
                    "--resume: this suite's settings differ", "suite.train_steps was 3, is 20")
    assert _run(suite, out, "--resume", "--set", "train_steps=3") == 0  # the same effective suite resumes
    assert len(pd.read_csv(out / "results.csv")) == 2


@pytest.mark.parametrize("raw", [
    {"seeds": [0, 0]},
    {"estimators": ["plain", "plain"]},
    {"workloads": [{"name": "toy1d", "params": {"lam0": [0.5, 0.5]}}]},
])
def test_12_duplicate_cells_are_refused(raw):
    base = {"workloads": ["toy1d"], "estimators": ["plain"], **raw}
    with pytest.raises(ConfigError, match="is listed twice"):
        build_suite(base)


def test_12_an_empty_backbone_list_is_refused():
    with pytest.raises(ConfigError, match="backbone: an empty list gives no cells"):
        build_suite({"workloads": [{"name": "mwn", "backbone": []}], "estimators": ["plain"]})


def test_13_a_cost_only_run_without_memory_figures_reports(tmp_path, capsys):
    write_results(_rows(peak_rss_delta_bytes=None), tmp_path)
    assert main(["report", str(tmp_path)]) == 0, capsys.readouterr().err
    page = (tmp_path / "report.html").read_text()
    glance = page[page.index("<h2>At a glance</h2>"):page.index("<h2>Claims</h2>")]
    assert "cost (time / peak memory) over" in glance and "most accurate" not in glance


def test_14_a_benchmark_json_whose_params_are_not_json_is_one_line(capsys, tmp_path):
    bench = {"benchmarks": [{"name": "b", "stats": {"median": 0.1}, "extra_info": {"hgbench": 1, "params": "{nope"}}]}
    (tmp_path / "b.json").write_text(json.dumps(bench))
    _one_line_error(capsys, ["report", str(tmp_path / "b.json")], "extra_info.params")


def test_a_full_disk_is_one_line_and_keeps_the_finished_rows(capsys, suite, tmp_path, monkeypatch):
    from harness.store import runfolder

    out = tmp_path / "o"
    writes = []
    original = runfolder.write_results

    def full_after_first(rows, path):
        if writes:
            raise OSError(errno.ENOSPC, "No space left on device", str(path / "results.csv"))
        writes.append(1)
        return original(rows, path)
    monkeypatch.setattr(runfolder, "write_results", full_after_first)
    _one_line_error(capsys, ["run", str(suite), "--out", str(out), "--quiet", "--in-process"], "no space left")
    assert len(pd.read_csv(out / "results.csv")) == 1  # the row written before the disk filled


def test_a_run_whose_cells_all_failed_exits_non_zero(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "tests.faulty")
    path = tmp_path / "s.yaml"
    path.write_text(TINY.replace("[plain, unroll]", "[exploding]"))
    assert _run(path, tmp_path / "o") == 1


# ------------------------------------------------------------------ the fuzz

SHAPES = ("huge number", "deep nesting", "long string", "duplicate", "product", "mathtext", "junk",
          "unknown key")


def _mutate(raw: dict, rng: random.Random) -> tuple[dict, str]:
    """Changes `raw` in place (give it a copy) and says how."""
    shape = rng.choice(SHAPES)
    targets = [("seeds",), ("train_steps",), ("timeout_s",), ("memory_budget_bytes",), ("name",),
               ("workloads", 1, "params", "width"), ("workloads", 1, "params", "batch_size"),
               ("workloads", 1, "params", "data_root"), ("estimators", 3, "params", "K"),
               ("estimators", 1, "params", "T"), ("fidelity", "reference_T"), ("memory_frontier",)]
    path = rng.choice(targets)
    if shape == "huge number":
        value = rng.choice([1, -1]) * 10 ** rng.randint(18, 400)
        value = value if rng.random() < 0.7 else rng.choice([1e300, -1e308, 1.7976931348623157e308])
    elif shape == "deep nesting":
        value = 0
        for _ in range(rng.randint(20, 5000)):
            value = [value] if rng.random() < 0.7 else {"k": value}
    elif shape == "long string":
        value = rng.choice("ab$\\{=") * rng.randint(200, 200_000)
    elif shape == "duplicate":
        path, value = rng.choice([(("seeds",), [0, 0]), (("estimators",), ["plain", "plain"]),
                                  (("workloads", 1, "params", "width"), [4, 4])])
    elif shape == "product":
        value = list(range(1, rng.randint(2, 400)))
        for extra in rng.sample(targets[5:7], 1):
            raw["workloads"][1]["params"][extra[-1]] = list(range(1, rng.randint(2, 400)))
    elif shape == "mathtext":
        value = r"$\undefinedcmd{x}$"
    elif shape == "junk":
        value = rng.choice([None, True, [], {}, [[]], {"a": [1]}, "x", -0.0, float("inf"), float("nan")])
    else:
        path, value = rng.choice([(("bogus",), 1), (("workloads", 1, "extra"), 2),
                                  (("estimators", 2, "params", "nope"), 3)])
    node = raw
    try:
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    except (IndexError, KeyError, TypeError):  # an earlier mutation took that place away
        raw[rng.choice(["seeds", "name", "bogus"])] = value
    return raw, shape


def test_a_thousand_generated_suites_end_in_a_suite_or_one_line():
    base = yaml.safe_load(find_suite("default").read_text())
    base["estimators"] = [{"name": e} if isinstance(e, str) else e for e in base["estimators"]]
    rng = random.Random(1234)
    seen = {shape: 0 for shape in SHAPES}
    outcomes = {"suite": 0, "error": 0}
    for _ in range(1200):
        raw, shape = _mutate(json.loads(json.dumps(base)), rng)
        if rng.random() < 0.3:
            raw, second = _mutate(raw, rng)
            seen[second] += 1
        seen[shape] += 1
        try:
            build_suite(raw)
            outcomes["suite"] += 1
        except ConfigError as e:
            assert str(e) and "\n" not in str(e) and len(str(e)) < 1000, str(e)[:300]
            outcomes["error"] += 1
    assert sum(outcomes.values()) == 1200 and min(seen.values()) > 50, seen
    assert outcomes["error"] > 600 and outcomes["suite"] > 20, outcomes  # both paths taken


def test_generated_damaged_folders_and_suite_texts_never_raise_anything_but_one_line(real_run, tmp_path):
    from harness.report.compare import load as compare_load
    from harness.report.source import load_run
    from harness.store.runfolder import RunFolder

    rng = random.Random(99)
    results = (real_run / "results.csv").read_bytes()
    failures = []
    for i in range(120):
        folder = tmp_path / f"d{i}"
        shutil.copytree(real_run, folder)
        data = bytearray(results)
        kind = rng.choice(["truncate", "flip", "garbage", "drop column", "junk cell"])
        if kind == "truncate":
            data = data[:rng.randint(0, len(data))]
        elif kind == "flip":
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == "garbage":
            data = bytearray(rng.randbytes(rng.randint(0, 2000)))
        (folder / "results.csv").write_bytes(bytes(data))
        if kind in ("drop column", "junk cell"):
            df = pd.read_csv(real_run / "results.csv", dtype=str, keep_default_na=False)
            col = rng.choice(list(df.columns))
            if kind == "drop column":
                df = df.drop(columns=[col])
            else:
                df.loc[rng.randrange(len(df)), col] = rng.choice(["abc", "1.7", "[1]", "{", "nan", "", "1e999"])
            df.to_csv(folder / "results.csv", index=False)
        for name, call in (("load", lambda: load_run(folder)), ("compare", lambda: compare_load(folder)),
                           ("resume", lambda: RunFolder.open(folder, resume=True).close())):
            try:
                call()
            except ConfigError as e:
                if "\n" in str(e):
                    failures.append((i, kind, name, str(e)[:200]))
            except Exception as e:  # anything else is a traceback for the user
                failures.append((i, kind, name, f"{type(e).__name__}: {str(e)[:200]}"))
    assert not failures, failures[:5]
    for i in range(60):  # suite files: random text, long lines, deep brackets
        text = rng.choice(["[" * rng.randint(1, 4000), "a: " + "{" * rng.randint(1, 3000),
                           rng.randbytes(rng.randint(1, 500)).decode("latin-1"), TINY + "x" * 10_000 + "\n"])
        path = tmp_path / f"s{i}.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_suite(path)
        except ConfigError as e:
            assert "\n" not in str(e)
