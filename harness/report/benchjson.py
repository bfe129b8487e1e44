"""pytest-benchmark's JSON (`make pytest-bench`) as results rows, so `hgbench report` draws
the same tables and figures from it as from a run. The hyper-step time is pytest-benchmark's
median and IQR over its rounds; memory, FLOPs and x-plain-step ratios are the harness's own
measurements, carried in each benchmark's `extra_info` by tests/benchmarks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core.errors import ConfigError
from harness.core.schema import BENCH_CARRIED
from harness.store.results import to_frame


def _rows(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    machine, commit = data.get("machine_info") or {}, data.get("commit_info") or {}
    rows = []
    for i, bench in enumerate(data["benchmarks"]):
        extra, stats = bench.get("extra_info") or {}, bench.get("stats") or {}
        if not extra.get("hgbench") or "median" not in stats:
            raise ConfigError(f"{path}: benchmark {i} ({bench.get('name', '?')}) is not one of hgbench's "
                              "(tests/benchmarks); run `make pytest-bench` to make this file")
        row = {k: extra.get(k) for k in BENCH_CARRIED}
        try:
            params = json.loads(row["params"]) if isinstance(row["params"], str) else None
        except (ValueError, RecursionError):
            params = None
        if not isinstance(params, dict) or not isinstance(params.get("estimator", {}), dict):
            raise ConfigError(f"{path}: benchmark {i} ({str(bench.get('name', '?'))[:60]}): extra_info.params "
                              "is not the JSON object hgbench writes; make the file with `make pytest-bench`")
        row.update(suite="pytest-benchmark", status="ok", error="",
                   hyper_time_s=stats["median"], hyper_time_iqr_s=stats.get("iqr"),
                   device_type=extra.get("device"), cpu_model=(machine.get("cpu") or {}).get("brand_raw"),
                   hostname=machine.get("node"), git_sha=commit.get("id"), git_dirty=commit.get("dirty"),
                   start_time=data.get("datetime"), timed_steps=stats.get("rounds"))
        rows.append(row)
    return rows


def load_benchmark_json(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The file's benchmarks as results rows, and the facts of its environment."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable pytest-benchmark JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list) or not data["benchmarks"]:
        raise ConfigError(f"{path}: no `benchmarks` list; is this a --benchmark-json file?")
    machine = data.get("machine_info") or {}
    env = {"pytest-benchmark": data.get("version"), "python": machine.get("python_version"),
           "benchmark file": path.name}
    return to_frame(_rows(data, path)), {k: v for k, v in env.items() if v}
