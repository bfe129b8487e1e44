"""The results table: one row per cell, written atomically after every cell."""
from __future__ import annotations

import html
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

# The documented columns, in order; README.md describes each one.
COLUMNS = [
    "suite", "workload", "backbone", "estimator", "params", "seed", "device", "status", "error",
    "step_time_s", "step_time_iqr_s", "step_time_min_s", "test_accuracy", "final_val_loss",
    "metrics", "n_params", "n_hparams", "train_steps", "hyper_every", "wall_s",
    "hgbench_version", "torch_version", "git_sha",
]
STATUSES = ("ok", "oom", "timeout", "error", "diverged")


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    for col in COLUMNS:
        if col not in df:
            df[col] = pd.NA
    return df[COLUMNS]


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(rows: Iterable[Mapping[str, Any]], out_dir: Path) -> pd.DataFrame:
    df = to_frame(rows)
    _atomic_write(out_dir / "results.csv", df.to_csv(index=False))
    return df


SUMMARY_COLUMNS = ["workload", "backbone", "estimator", "params", "seed", "status",
                   "step_time_s", "test_accuracy", "final_val_loss"]


def summary_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The table people look at: estimator parameters only, times in ms."""
    import json

    out = df[SUMMARY_COLUMNS].copy()
    out["params"] = [json.loads(p)["estimator"] if isinstance(p, str) else p for p in out["params"]]
    out["params"] = [", ".join(f"{k}={v}" for k, v in p.items()) if isinstance(p, dict) else ""
                     for p in out["params"]]
    out["step_time_ms"] = df["step_time_s"].astype(float) * 1000
    return out.drop(columns=["step_time_s"])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None or v is pd.NA else str(v)


def write_html(df: pd.DataFrame, out_dir: Path, title: str) -> Path:
    """A plain, self-contained page of the summary table; every value is HTML-escaped."""
    table = summary_frame(df)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr class='{}'>{}</tr>".format(html.escape(str(r["status"])),
                                        "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values))
        for _, r in table.iterrows())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}tr:not(.ok){{background:#fee}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>One row per cell. step_time_ms: median wall time of one meta-iteration (hyper-step and
inner step). test_accuracy: after meta-training. Full columns in results.csv.</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>"""
    path = out_dir / "results.html"
    _atomic_write(path, page)
    return path
