"""The report (tables, figures, escaping, a real browser), `hgbench compare`, and
pytest-benchmark JSON rendered as a report."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.report.figures import pareto_front
from harness.core.plugins import ENV
from harness.report.tables import Reference, prepare, summary
from tests.browser import Chromium, find_chromium

EVIL = "<script>alert(1)</script>"
SUITE = f"""\
# {EVIL} in a comment too
name: "{EVIL}"
train_steps: 4
warmup_steps: 1
timed_steps: 2
curve_points: 2
memory_frontier: [1GB, 2GB]
fidelity: {{checkpoints: 1, reference_T: 2, draws: 1}}
workloads:
  - name: mwn
    backbone: [resnet10, resnet18]
    params: {{width: 4, batch_size: 16}}
estimators:
  - plain
  - name: unroll
    params: {{T: 1, backend: [func, higher]}}
  - evograd
  - exploding
"""
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One small real run (two backbones, a failing estimator), report written by `run`."""
    tmp = tmp_path_factory.mktemp("report")
    (tmp / "s.yaml").write_text(SUITE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, "tests.faulty")
        assert main(["run", str(tmp / "s.yaml"), "--out", str(tmp / "run"), "--quiet", "--in-process"]) == 1
    return tmp / "run"


def test_run_writes_report_summary_and_figures(run_dir):
    for name in ("report.html", "summary.csv", "curves.csv", "results.csv"):
        assert (run_dir / name).stat().st_size > 0, name
    for fig in ("cost_by_backbone", "cost_vs_depth", "accuracy_vs_cost", "fidelity_vs_cost", "training_curves",
                "memory_frontier"):
        for ext in ("png", "pdf"):
            assert (run_dir / "figures" / f"{fig}.{ext}").stat().st_size > 1000, (fig, ext)
    table = pd.read_csv(run_dir / "summary.csv")
    # one row per backbone x variant; the failing estimator is there, not dropped
    assert len(table) == 2 * 5
    assert set(table.loc[table["estimator"] == "exploding", "status"]) == {"error"}
    unroll = table[(table["variant"] == "unroll(backend=func)")]
    assert (unroll["time_x_ref"] == 1.0).all() and (unroll["reference"] == "unroll(backend=func)").all()
    page = (run_dir / "report.html").read_text()
    assert page.count("<svg") == 6 and "<h3>mwn / resnet18</h3>" in page
    assert "RuntimeError: boom" in page  # the failed cell's error is shown
    front = pd.read_csv(run_dir / "frontier.csv")
    assert len(front) == 4 * 2  # the 4 finished variants x 2 budgets
    assert set(front["backbone"].dropna()) <= {"resnet10", "resnet18"}
    assert "<h2>Memory frontier</h2>" in page


def test_curves_hold_every_cell_at_each_evaluation(run_dir):
    curves = pd.read_csv(run_dir / "curves.csv")
    results = pd.read_csv(run_dir / "results.csv")
    ok = results[results["status"] == "ok"]
    assert len(curves) == 3 * len(ok)  # steps 0 and 2 (curve_points 2) and the end, 4
    assert sorted(set(curves["step"])) == [0, 2, 4]
    assert curves["val_loss"].notna().all() and curves["test_accuracy"].between(0, 1).all()
    assert curves.loc[curves["step"] > 0, "train_loss"].notna().all()
    end = curves[curves["step"] == 4].set_index(["estimator", "backbone", "params"])["test_accuracy"]
    final = ok.set_index(["estimator", "backbone", "params"])["test_accuracy"]
    assert (end.sort_index() == final.sort_index()).all()  # the last point is the cell's result


def test_strings_from_suites_and_results_are_escaped(run_dir):
    page = (run_dir / "report.html").read_text()
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower()


def test_report_is_self_contained(run_dir):
    page = (run_dir / "report.html").read_text()
    for fetch in ("src=", "<link", "@import", "url(http", "href=\"http"):
        assert fetch not in page, fetch


@pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (Debian package `chromium`; "
                                                    ".ci/run installs it)")
def test_report_renders_in_headless_chromium_without_errors(run_dir):
    with Chromium(find_chromium()) as browser:
        page = browser.open((run_dir / "report.html").resolve().as_uri(), width=1400)
        # no table wider than the page at 1400 px, with every folded section opened too
        too_wide = """(() => { const w = document.documentElement.clientWidth;
            return [...document.querySelectorAll('table')].filter(t => t.getBoundingClientRect().width > 0)
              .map(t => ({right: t.getBoundingClientRect().right, w: w, head: t.rows[0].innerText.slice(0, 80)}))
              .filter(t => t.right > t.w + 0.5); })()"""
        closed_wide = page.evaluate(too_wide)
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        open_wide = page.evaluate(too_wide)
        scroll = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth, "
                               "window.innerWidth]")
        figures = page.evaluate("""[...document.querySelectorAll('figure')].map(f => {
            const svg = f.querySelector('svg'); if (!svg) return {id: f.id, drawn: 0, w: 0, h: 0};
            const box = svg.getBoundingClientRect();
            return {id: f.id, w: box.width, h: box.height,
                    drawn: svg.querySelectorAll('path, use, rect, line, polyline, polygon').length};
        })""")
        title = page.evaluate("document.title")
        problems = page.problems()
    assert problems == []
    assert closed_wide == [] and open_wide == [], (closed_wide, open_wide)
    assert scroll[0] <= scroll[1] and scroll[2] == 1400  # (clientWidth: less the scrollbar)
    assert EVIL in title  # the suite name arrives as text, not as markup
    assert len(figures) == 6
    for fig in figures:
        assert fig["w"] > 100 and fig["h"] > 100 and fig["drawn"] > 20, fig


def test_report_command_rewrites_into_another_folder(run_dir, tmp_path):
    assert main(["report", str(run_dir), "-o", str(tmp_path / "r"), "--reference", "evograd"]) == 0
    table = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert (table.loc[table["estimator"] == "evograd", "time_x_ref"] == 1.0).all()


@pytest.mark.parametrize("make_bad, message", [
    (lambda d: None, "no results.csv here"),
    (lambda d: (d / "results.csv").write_text("a,b\n1,2\n"), "not an hgbench results file"),
    (lambda d: (d / "x.json").write_text("{not json"), "not a readable pytest-benchmark JSON"),
])
def test_bad_report_input_is_one_line(tmp_path, capsys, make_bad, message):
    make_bad(tmp_path)
    target = tmp_path / "x.json" if (tmp_path / "x.json").exists() else tmp_path
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def _rows(accuracies, estimator="unroll", hyper_s=0.2):
    return [{"suite": "s", "workload": "mwn", "backbone": "resnet10", "estimator": estimator,
             "params": '{"estimator": {"T": 1}, "workload": {}}', "seed": i, "device": "cpu",
             "status": "ok", "hyper_time_s": hyper_s, "peak_rss_delta_bytes": 2 ** 20, "hyper_flops": 1e9,
             "test_accuracy": a, "device_type": "cpu"} for i, a in enumerate(accuracies)]


def test_accuracy_is_mean_and_student_t_interval_over_seeds():
    from harness.store.results import to_frame

    table = summary(prepare(to_frame(_rows([0.90, 0.92, 0.94]))), Reference.parse("unroll:T=1"))
    row = table.iloc[0]
    assert row["n_seeds"] == 3 and math.isclose(row["acc_mean"], 0.92)
    assert math.isclose(row["acc_ci95"], 4.302652729911275 * 0.02 / math.sqrt(3), rel_tol=1e-9)


def test_reference_ratios_use_the_matching_variant():
    from harness.store.results import to_frame

    rows = _rows([0.9]) + _rows([0.8], estimator="evograd", hyper_s=0.05)
    table = summary(prepare(to_frame(rows)), Reference.parse("unroll:T=1")).set_index("estimator")
    assert math.isclose(table.loc["evograd", "time_x_ref"], 0.25)
    assert table.loc["unroll", "reference"] == "unroll"
    none = summary(prepare(to_frame(rows)), Reference.parse("unroll:T=5"))
    assert none["time_x_ref"].isna().all()


def test_pareto_front_keeps_only_undominated_points():
    cost = pd.Series([1.0, 2.0, 3.0, 4.0, 2.5])
    score = pd.Series([0.5, 0.7, 0.6, 0.9, 0.7])
    assert list(pareto_front(cost, score)) == [0, 1, 3]


# ---------------------------------------------------------------- compare

def _copy(run_dir: Path, dest: Path, edit=None) -> Path:
    dest.mkdir()
    df = pd.read_csv(run_dir / "results.csv")
    if edit:
        edit(df)
    df.to_csv(dest / "results.csv", index=False)
    return dest


def test_compare_a_run_with_itself_passes(run_dir, capsys):
    assert main(["compare", str(run_dir), str(run_dir)]) == 0
    assert "no regression" in capsys.readouterr().err


def test_compare_fails_on_doubled_times(run_dir, tmp_path, capsys):
    def slower(df):
        df["hyper_time_s"] *= 2
    new = _copy(run_dir, tmp_path / "new", slower)
    assert main(["compare", str(run_dir), str(new)]) == 1
    out = capsys.readouterr().out
    assert "2.00x slower" in out
    assert main(["compare", str(run_dir), str(new), "--max-slowdown", "2.5"]) == 0


def test_compare_fails_on_a_newly_failing_cell(run_dir, tmp_path, capsys):
    def one_fails(df):
        i = df.index[df["status"] == "ok"][0]
        df.loc[i, "status"], df.loc[i, "error"] = "oom", "over budget"
    new = _copy(run_dir, tmp_path / "new", one_fails)
    assert main(["compare", str(run_dir), str(new)]) == 1
    assert "now oom" in capsys.readouterr().out


def test_compare_fails_on_memory_growth_above_the_floor(run_dir, tmp_path, capsys):
    def bigger(df):
        df["peak_rss_delta_bytes"] = df["peak_rss_delta_bytes"] * 1.5 + 2 ** 21
    new = _copy(run_dir, tmp_path / "new", bigger)
    assert main(["compare", str(run_dir), str(new)]) == 1
    assert "memory" in capsys.readouterr().out


def test_compare_without_shared_cells_is_one_line(run_dir, tmp_path, capsys):
    def other_seed(df):
        df["seed"] += 100
    new = _copy(run_dir, tmp_path / "new", other_seed)
    assert main(["compare", str(run_dir), str(new)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---------------------------------------------------------------- pytest-benchmark

def test_pytest_bench_json_from_make_renders(tmp_path):
    """A real `make pytest-bench` (two cells, selected with -k) and its report."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    out = tmp_path / "bench.json"
    subprocess.run(["make", "-s", "pytest-bench", f"BENCH_JSON={out}",
                    "BENCH_ARGS=-k 'resnet10 and (plain or evograd)'"], cwd=REPO, check=True,
                   capture_output=True, text=True, timeout=600)
    report = tmp_path / "bench"
    assert (report / "report.html").exists()
    table = pd.read_csv(report / "summary.csv").set_index("estimator")
    assert set(table.index) == {"plain", "evograd"}
    assert table.loc["evograd", "hyper_ms"] > table.loc["plain", "hyper_ms"] > 0
    assert table.loc["evograd", "flops_x_plain"] > 1 and table.loc["evograd", "peak_mb"] >= 0
    assert "<svg" in (report / "report.html").read_text()


def test_foreign_json_is_refused(tmp_path, capsys):
    bad = tmp_path / "other.json"
    bad.write_text('{"benchmarks": [{"name": "x", "stats": {"median": 1}}]}')
    assert main(["report", str(bad)]) == 2
    assert "not one of hgbench's" in capsys.readouterr().err


def test_budget_option_replaces_the_suites_frontier(run_dir, tmp_path):
    assert main(["report", str(run_dir), "-o", str(tmp_path / "r"), "--budget", "3GB", "--budget", "10MiB"]) == 0
    front = pd.read_csv(tmp_path / "r" / "frontier.csv")
    assert sorted(set(front["budget_bytes"])) == [10 * 2 ** 20, 3 * 10 ** 9]
    assert main(["report", str(run_dir), "-o", str(tmp_path / "bad"), "--budget", "lots"]) == 2


def test_cost_only_rows_report_no_accuracy():
    from harness.store.results import to_frame

    rows = [{**r, "train_steps": 0} for r in _rows([0.1, 0.12])]
    table = summary(prepare(to_frame(rows)), Reference.parse("unroll"))
    assert table["acc_mean"].isna().all() and table["n_seeds"].eq(0).all()
    assert summary(prepare(to_frame(_rows([0.1]))), Reference.parse("unroll"))["acc_mean"].notna().all()


def test_plain_takes_no_hyper_step_so_its_hyper_step_columns_are_dashes(run_dir):
    page = (run_dir / "report.html").read_text()
    plain = page[page.index("<td>plain</td>"):]
    plain = plain[:plain.index("</tr>")]
    cells = plain.split("<td>")[1:]
    assert cells[1].startswith("ok")
    assert all(c.startswith("&mdash;") for c in cells[2:10]), cells  # hyper-step ms .. peak MB
    assert "takes no hyper-step" in page
    evograd = page[page.index("<td>evograd</td>"):]
    assert "&mdash;" not in evograd[:evograd.index("</tr>")]


def test_fidelity_section_names_the_reference_of_every_number(run_dir):
    page = (run_dir / "report.html").read_text()
    section = page[page.index("<h2>Hypergradient fidelity</h2>"):page.index("<h2>Memory frontier</h2>")]
    for ref in ("1step", "long", "small"):
        assert f"<th>cos vs {ref}</th>" in section and f"<b>{ref}</b>:" in section
    assert "a long unroll (T = 2)" in section  # the suite's reference_T, from the rows
    assert "cos vs exact" not in section  # mwn has no closed form
    matrix = section[section.index("<table class='matrix'>"):section.index("<details>")]  # the matrix leads
    assert "<th>unroll T=1</th>" in matrix and "<th>unroll T=2</th>" in matrix and "background:rgb" in matrix
    assert "<td>plain</td>" not in section  # no hypergradient, no fidelity
    assert "fidelity cos" not in page[:page.index("<h2>Hypergradient fidelity</h2>")]


def _fidelity_rows():
    """evograd swept over K (at tau 0.05) and tau (at K 2), with known fidelity figures."""
    rows = []
    for K, tau, cos_small, meancos_small, cos_1step in ((2, 0.05, 0.2, 0.9, -0.5), (4, 0.05, 0.4, 0.95, -0.4),
                                                       (8, 0.05, 0.6, 0.97, -0.3), (2, 1.0, 0.1, 0.3, 0.05)):
        rows.append({"suite": "s", "workload": "mwn", "backbone": "resnet10", "estimator": "evograd",
                     "params": json.dumps({"estimator": {"K": K, "tau": tau, "noise": "rademacher"}, "workload": {}}),
                     "seed": 0, "device": "cpu", "status": "ok", "hyper_time_s": 0.1, "hyper_flops": 1e9,
                     "peak_rss_delta_bytes": 2 ** 20, "device_type": "cpu",
                     "fid_cos_small": cos_small, "fid_meancos_small": meancos_small,
                     "fid_relerr_small": 1e11 if K == 8 else 1 - cos_small,  # (a diverging series)
                     "fid_cos_1step": cos_1step, "fid_meancos_1step": cos_1step, "fid_relerr_1step": 2.0,
                     "fid_draws": 16, "fid_relvar": 4.0, "fid_best_ref": "small", "fid_draws_to_target": 8})
    return rows


def test_each_swept_knob_gets_a_figure_and_a_sentence_from_its_numbers():
    from harness.report import sensitivity
    from harness.store.results import to_frame

    ok = prepare(to_frame(_fidelity_rows()))
    sweeps = {s.knob: s for s in sensitivity.sweeps(ok)}
    assert set(sweeps) == {"K", "tau"}  # (noise is text; it never varies anyway)
    assert list(sweeps["K"].rows["knob_value"]) == [2, 4, 8]
    assert sorted(sweeps["tau"].rows["knob_value"]) == [0.05, 1.0]  # the K=2 cells only
    text = sensitivity.sentence(sweeps["K"])
    # closest by cosine first: a huge relative error somewhere does not hand it to another reference
    assert text.startswith("mwn / resnet10: closest to small; cosine with it 0.20 at K=2 and 0.60 at K=8 "
                           "(highest 0.60 at K=8), relative error 0.8 to 1e+11 (lowest 0.6 at K=4)")
    assert "the mean of 16 draws reaches 0.90 at K=2 and 0.97 at K=8" in text
    # unbiased draws of relative variance 4 would reach 1/sqrt(1 + 4/16) = 0.89 in the mean
    assert "one draw's gap is noise" in text
    assert "negative cosine with 1step at K=2, 4, 8" in text
    tau = sensitivity.sentence(sweeps["tau"])
    assert "biased, at tau=1" in tau and "negative cosine" in tau
    fig = sensitivity.figure(sweeps["K"])
    assert [ax.get_xlabel() for ax in fig.axes] == ["K"] * 2
    # the relative error spans 0.6 to 1e11: a log axis, its tick labels plain text (mathtext is off)
    fig.canvas.draw()
    assert fig.axes[1].get_yscale() == "log"
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels() if t.get_text()]
    assert labels and not any("$" in t or "mathdefault" in t for t in labels), labels
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_the_sensitivity_suite_runs_and_draws_a_figure_per_knob(tmp_path):
    """The built-in suite's every estimator and knob end to end, on its toy1d workload and
    shortened (2 steps, one checkpoint, 3 draws): its MW-Net cells are ordinary fidelity
    cells (test_fidelity.py), and the suite in full is measured in the README."""
    out = tmp_path / "run"
    sets = ["train_steps=2", "fidelity.checkpoints=1", "fidelity.reference_T=3", "fidelity.draws=3",
            "workloads=[{name: toy1d}]"]
    assert main(["run", "sensitivity", "--out", str(out), "--quiet", "--in-process",
                 *(a for s in sets for a in ("--set", s))]) == 0
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 17 and (rows["status"] == "ok").all()
    assert rows["fid_cos_exact"].notna().all() and (rows["fid_trajectory"] == "shared").all()
    page = (out / "report.html").read_text()
    for estimator, knob in (("evograd", "K"), ("evograd", "sigma"), ("evograd", "tau"), ("t1t2", "fd_scale"),
                            ("unroll", "T"), ("neumann", "terms")):
        assert (out / "figures" / f"sensitivity_{estimator}_{knob}.png").stat().st_size > 1000
        caption = page[page.index(f"id='fig-sensitivity_{estimator}_{knob}'"):]
        caption = caption[caption.index("<figcaption>"):caption.index("</figcaption>")]
        assert "toy1d / none: closest to" in caption


def test_the_cost_table_shows_each_hyper_steps_passes_with_their_legend(run_dir):
    page = (run_dir / "report.html").read_text()
    unroll = page[page.index("<td>unroll(backend=func)</td>"):]
    assert "<td>1T 1V 1B 1D (1k)</td>" in unroll[:unroll.index("</tr>")]  # counted in the run, by hand here
    assert "D double backwards" in page
    table = pd.read_csv(run_dir / "summary.csv").set_index("variant")
    assert table.loc[["plain"], "passes"].eq("none").all()


def test_a_cell_whose_memory_grows_per_step_is_flagged_in_the_cost_table():
    from harness.report.html import _cost_tables
    from harness.store.results import to_frame

    rows = _rows([0.9]) + [{**r, "memory_grows": True, "memory_growth_bytes_per_step": 5 * 2 ** 20}
                           for r in _rows([0.8], estimator="evograd")]
    html = _cost_tables(summary(prepare(to_frame(rows)), Reference.parse("unroll")), Reference.parse("unroll"))
    evograd = html[html.index("<td>evograd</td>"):]
    unroll = html[html.index("<td>unroll</td>"):]
    assert "memory grows per step" in evograd[:evograd.index("</tr>")]
    assert "memory grows per step" not in unroll[:unroll.index("</tr>")]


def test_predictions_in_the_run_folder_are_reported_beside_what_was_measured(run_dir, tmp_path):
    """`hgbench predict SUITE --out RUN` leaves predicted.csv in the run folder; the report then
    shows each prediction's error against the measured cell (here predictions made 10% high
    and twice the time by hand) and the frontier from predictions."""
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    rows = pd.read_csv(folder / "results.csv")
    ok = rows[(rows["status"] == "ok") & (rows["estimator"] == "evograd")]
    predicted = ok[["workload", "backbone", "estimator", "params", "seed"]].assign(
        predicted_peak_bytes=ok["peak_rss_delta_bytes"] * 1.1, predicted_iter_peak_bytes=ok["iter_peak_bytes"] * 1.1,
        predicted_time_s=ok["hyper_time_s"] * 2, status="ok", error="", predicted_device="cpu",
        n_params=ok["n_params"], batch_size=ok["batch_size"], predicted_note="made by hand")
    predicted.to_csv(folder / "predicted.csv", index=False)
    assert main(["report", str(folder)]) == 0
    page = (folder / "report.html").read_text()
    section = page[page.index("<h2>Predicted (fake tensors, none run)</h2>"):page.index("<h2>Cells that did not")]
    evograd = section[section.index("<td>evograd</td>"):]
    assert evograd.startswith("<td>evograd</td><td>2</td><td>10.0%</td><td>10.0%</td><td>10.0%</td><td>10.0%</td>"
                              "<td>2</td><td>2</td>"), evograd[:200]
    assert "<h2>Memory frontier from predictions</h2>" in section
    (folder / "predicted.csv").write_text("not, a table\n\x00\x01")
    assert main(["report", str(folder)]) == 2
