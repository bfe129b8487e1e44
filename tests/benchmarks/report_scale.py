"""Benchmark (not a test): `hgbench report` on a run of many rows.

The rows of a small real run are repeated over seeds (and, for a second estimator variant,
a parameter value), to `--rows` rows, written as a run folder, and the whole report is
timed, labels, summary, figures and page included. Run:
`python -m tests.benchmarks.report_scale --rows 20000` (`make report-scale`).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from harness.cli import main
from harness.report.build import write_report
from harness.report.source import load_run

SUITE = ("name: report-scale\nworkloads: [toy1d]\nestimators: [plain, unroll, evograd]\ntrain_steps: 2\n"
         "warmup_steps: 0\ntimed_steps: 1\ncurve_points: 0\n")


def main_benchmark() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "s.yaml").write_text(SUITE)
        assert main(["run", str(tmp / "s.yaml"), "--out", str(tmp / "small"), "--quiet", "--in-process"]) == 0
        small = pd.read_csv(tmp / "small" / "results.csv", dtype={"params": str})
        copies = []
        for i in range(-(-args.rows // len(small))):
            c = small.copy()
            c["seed"] = i // 2
            if i % 2:  # a second variant of each estimator, so labels have a parameter to name
                c["params"] = [json.dumps({**json.loads(p), "estimator": {**json.loads(p)["estimator"], "v": 1}},
                                          sort_keys=True) for p in c["params"]]
            copies.append(c)
        big = tmp / "big"
        big.mkdir()
        pd.concat(copies).iloc[:args.rows].to_csv(big / "results.csv", index=False)
        start = time.perf_counter()
        write_report(load_run(big), big)
        seconds = time.perf_counter() - start
    print(f"hgbench report: {args.rows} rows in {seconds:.1f} s")


if __name__ == "__main__":
    main_benchmark()
