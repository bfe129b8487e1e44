"""What a report is made from, read from a run folder or a pytest-benchmark JSON file."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core.errors import ConfigError
from harness.report.predicted import read_predicted
from harness.report.benchjson import load_benchmark_json
from harness.store.results import read_curves, read_results
from harness.store.runfolder import bring_in_line, read_spec


@dataclass
class Source:
    """What a report is made from: rows, training curves, a title, the suite text and the
    memory budgets of the frontier (the run's `RunSpec.memory_frontier`)."""
    rows: pd.DataFrame
    curves: pd.DataFrame
    title: str
    suite_text: str | None
    environment: dict[str, Any]
    budgets: list[int] = field(default_factory=list)
    predicted: pd.DataFrame | None = None  # `hgbench predict --out` into the run folder


def load_run(path: Path) -> Source:
    """A run folder (results.csv, curves.csv, suite.yaml) or a pytest-benchmark JSON file."""
    if path.is_file() and path.suffix == ".json":
        rows, environment = load_benchmark_json(path)
        return Source(rows, pd.DataFrame(), f"hgbench report: pytest-benchmark {path.name}", None, environment)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a run folder or a pytest-benchmark .json file")
    bring_in_line(path)
    rows = read_results(path)
    if rows is None:
        raise ConfigError(f"{path}: no results.csv here; give the folder `hgbench run` wrote "
                          "(e.g. reports/latest)")
    spec = read_spec(path)
    suite = path / "suite.yaml"
    name = spec.name if spec is not None else (str(rows["suite"].iloc[0]) if len(rows) else path.name)
    text = suite.read_text(errors="replace") if suite.exists() else None
    budgets = list(spec.memory_frontier) if spec is not None else []
    return Source(rows, read_curves(path), f"hgbench report: {name}", text, {}, budgets, read_predicted(path))
