"""`hgbench report`: one self-contained HTML page, a summary CSV and figure files from a
run's results (or a pytest-benchmark JSON file).

The page answers "which estimator, at what cost, with what accuracy, at which depth":
per-backbone tables of cost as multiples of a plain step and of a reference estimator
(default unroll T=1, the papers' second-order baseline), accuracy as mean +- 95% CI over
seeds, figures inline as SVG, the environment and the suite that produced the run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from harness.core.schema import KEY
from harness.report import claims, figures, sensitivity
from harness.report.frontier import frontier
from harness.report.html import page
from harness.report.source import Source
from harness.report.tables import DEFAULT_REFERENCE, Reference, prepare, summary
from harness.store.results import atomic_write

FIGURES: list[tuple[str, str, Callable[..., Any], str]] = [
    # (file name, heading, function, which data it takes)
    ("cost_by_backbone", "Time and peak memory per estimator", figures.cost_bars, "ok"),
    ("cost_vs_depth", "Cost scaling with depth", figures.depth_scaling, "ok"),
    ("accuracy_vs_cost", "Accuracy against cost", figures.accuracy_vs_cost, "summary"),
    ("fidelity_vs_cost", "Hypergradient fidelity against cost", figures.fidelity_vs_cost, "ok"),
    ("training_curves", "Training curves", figures.training_curves, "curves"),
    ("memory_frontier", "Memory frontier: what fits", figures.memory_frontier, "frontier"),
]


def _label_curves(curves: pd.DataFrame, prepared: pd.DataFrame) -> pd.DataFrame:
    """Each curve point labelled with its cell's workload setting and estimator variant."""
    curves = curves.copy()
    if curves.empty:
        return curves
    cell_keys = prepared[KEY].astype({"seed": "Int64"}).astype(str).itertuples(index=False, name=None)
    labels_of = dict(zip(cell_keys, zip(prepared["workload_label"], prepared["variant"])))
    curve_keys = curves[KEY].astype({"seed": "Int64"}).astype(str).itertuples(index=False, name=None)
    labels = [labels_of.get(k, (k[0], k[2])) for k in curve_keys]
    curves["workload_label"] = [w for w, _ in labels]
    curves["variant"] = [v for _, v in labels]
    for col in ("step", "val_loss", "test_accuracy"):
        curves[col] = pd.to_numeric(curves[col], errors="coerce")
    return curves


def _caption(draw: Callable[..., Any]) -> str:
    return " ".join((draw.__doc__ or "").strip().split("\n\n")[0].split())


def _planned_figures(data: dict[str, pd.DataFrame]) -> Iterator[tuple[str, str, Callable[[], Any], str]]:
    """(file name, heading, drawing, caption) of every figure: the fixed ones, then one per
    knob swept (its caption the sentence that says what it shows)."""
    for name, heading, draw, kind in FIGURES:
        yield name, heading, (lambda draw=draw, kind=kind: draw(data[kind])), _caption(draw)
    for sweep in sensitivity.sweeps(data["ok"]):
        yield (sweep.name, sweep.heading, (lambda sweep=sweep: sensitivity.figure(sweep)),
               _caption(sensitivity.figure) + " " + sensitivity.sentence(sweep))


def _draw_figures(data: dict[str, pd.DataFrame], out_dir: Path) -> list[tuple[str, str, str, str]]:
    """Every figure that applies, saved as PNG and PDF: (file name, heading, SVG, caption)."""
    (out_dir / "figures").mkdir(exist_ok=True)
    drawn = []
    for name, heading, draw, caption in _planned_figures(data):
        fig = draw()
        if fig is None:
            continue
        for ext in ("png", "pdf"):
            fig.savefig(out_dir / "figures" / f"{name}.{ext}", dpi=150)
        svg = figures.to_svg(fig)
        figures.close(fig)
        drawn.append((name, heading, svg, caption))
    return drawn


def write_report(source: Source, out_dir: Path, reference: Reference | None = None,
                 budgets: list[int] | None = None) -> Path:
    """report.html, summary.csv, claims.csv (and frontier.csv with budgets) and figures/NAME.{png,pdf}
    in `out_dir`. `budgets` replaces the suite's memory_frontier sizes."""
    reference = reference or Reference.parse(DEFAULT_REFERENCE)
    budgets = budgets or source.budgets
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(source.rows)
    table = summary(prepared, reference)
    atomic_write(out_dir / "summary.csv", lambda p: table.to_csv(p, index=False))
    checked = claims.evaluate(prepared)
    atomic_write(out_dir / "claims.csv", lambda p: checked.to_csv(p, index=False))
    front = frontier(prepared, budgets)
    if not front.empty:
        atomic_write(out_dir / "frontier.csv", lambda p: front.to_csv(p, index=False))
    data = {"ok": prepared[prepared["status"] == "ok"], "summary": table,
            "curves": _label_curves(source.curves, prepared), "frontier": front}
    text = page(source, prepared, table, front, reference, _draw_figures(data, out_dir), checked, budgets)
    path = out_dir / "report.html"
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path
