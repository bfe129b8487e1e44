"""Benchmark (not a test): two estimators' hyper-steps timed in ONE process, interleaved.

Cells of a sweep run in separate processes at different moments, so on a shared machine
their times differ by more than two similar estimators do (seen here: +-20% between runs of
the same cell). For a claim of the form "A costs no more than B", time both on copies of the
same problem in one process, in pairs A, B, B, A, A, B, ..., and read the median of the
per-pair ratios, so drift of the machine's speed hits both alike.
FLOPs are exact and printed too. With `memory=True` each hyper-step's peak is read once
before any timing, as a cell's memory pass reads it (live bytes on the CPU: the caller must
have put the allocator in live-bytes mode before any tensor existed, as `hgbench paired
--memory` does; it is then set for speed). Run:
`hgbench paired --workload mwn --backbone resnet18 hyperdistill:unit_direction=true t1t2:mode=exact`
"""
from __future__ import annotations

import math
import statistics

import torch
import yaml

from harness.measure.flops import count_flops
from harness.measure.memory import AllocatorMode
from harness.measure.passes import hyper_step_peak
from harness.measure.timing import time_call
from harness.plan.suite import build_suite
from harness.run.cell_process import probe_trainer


def estimator_entry(text: str) -> dict:
    """`name:key=value,...` (values read as YAML) -> a suite's estimator entry."""
    name, _, rest = text.partition(":")
    params = {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in rest.split(",") if p)}
    return {"name": name, "params": params}


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: order statistics k and n+1-k, with k the
    largest rank whose binomial coverage P(k <= #below the median < n+1-k) is still >= level.
    Paired ratios are not normal (a stalled round makes a long tail), hence no t-interval."""
    xs, n = sorted(values), len(values)
    tail = 0.0
    k = 0
    while k + 1 <= n // 2:
        tail_next = tail + math.comb(n, k) / 2 ** n   # P(#below = k), one tail
        if 1 - 2 * tail_next < level:
            break
        tail, k = tail_next, k + 1
    if k == 0:
        return xs[0], xs[-1]  # too few rounds for this level: the whole range
    return xs[k - 1], xs[n - k]


def paired(workload: dict, a: str, b: str, rounds: int, warmup: int = 2, memory: bool = False) -> dict[str, float]:
    cells = build_suite({"workloads": [workload], "estimators": [estimator_entry(a), estimator_entry(b)],
                         "train_steps": 0, "warmup_steps": warmup}).cells
    device = torch.device("cpu")
    ta, tb = (probe_trainer(c, device) for c in cells)
    peaks = {}
    if memory:
        if not AllocatorMode.live_bytes:
            raise RuntimeError("paired(memory=True) reads live bytes: call AllocatorMode.for_live_bytes() "
                               "at the start of the process, before any tensor exists")
        peaks = {"a_peak_bytes": hyper_step_peak(ta, device), "b_peak_bytes": hyper_step_peak(tb, device)}
        peaks["memory_ratio"] = peaks["a_peak_bytes"] / peaks["b_peak_bytes"]
    AllocatorMode.for_speed()
    ratios = []
    times_a, times_b = [], []
    for r in range(rounds):
        # A, B, then B, A: the second of a pair starts from the first's allocator and cache
        # state (HyperDistill's gap was such an effect), so neither always runs second
        if r % 2:
            times_b.append(time_call(tb.hyper_step, device))
            times_a.append(time_call(ta.hyper_step, device))
        else:
            times_a.append(time_call(ta.hyper_step, device))
            times_b.append(time_call(tb.hyper_step, device))
        ratios.append(times_a[-1] / times_b[-1])
    return {"a_ms": 1e3 * statistics.median(times_a), "b_ms": 1e3 * statistics.median(times_b),
            "time_ratio": statistics.median(ratios), "time_ratio_95": median_interval(ratios),
            "flops_ratio": count_flops(ta.hyper_step) / count_flops(tb.hyper_step), **peaks}
