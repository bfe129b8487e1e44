"""Timing summaries (no wall-time assertions: timing belongs to benchmarks)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.measure.memory import rss_probe_unavailable
from harness.measure.timing import Measurement, time_call

REPO = Path(__file__).resolve().parent.parent


def test_measurement_summaries():
    m = Measurement((4.0, 1.0, 3.0, 2.0, 5.0))
    assert m.median == 3.0 and m.min == 1.0 and m.iqr == 2.0
    assert Measurement((2.0,)).iqr == 0.0


def test_time_call_runs_the_call_once_and_times_it():
    calls = []
    assert time_call(lambda: calls.append(1), torch.device("cpu")) >= 0 and calls == [1]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_timing_waits_for_queued_kernels():
    dev = torch.device("cuda")
    a = torch.randn(4096, 4096, device=dev)
    t = time_call(lambda: [a @ a for _ in range(10)], dev)
    assert t > 0


def test_overhead_benchmark_runs_and_reports_its_figures():
    from harness.run.overhead import overhead

    r = overhead("evograd", "resnet10", width=4, blocks=1, steps=2)
    assert r["harness_hyper_s"] > 0 and r["bare_hyper_s"] > 0 and r["harness_median_s"] > 0
    assert r["overhead"] == r["harness_hyper_s"] / r["bare_hyper_s"] - 1


def test_paired_benchmark_builds_both_estimators_on_one_problem_and_counts_flops_exactly():
    """T1-T2 exact and unroll T=1 are one computation (equal FLOPs); timing is not asserted."""
    from harness.run.paired import estimator_entry, paired

    assert estimator_entry("t1t2:mode=exact,fd_scale=0.1") == {"name": "t1t2", "params": {"mode": "exact", "fd_scale": 0.1}}
    r = paired({"name": "mwn", "backbone": "resnet10", "params": {"width": 4, "batch_size": 16}},
               "t1t2:mode=exact", "unroll:T=1", rounds=2, warmup=1)
    assert r["flops_ratio"] == 1.0 and r["a_ms"] > 0 and r["b_ms"] > 0
    lo, hi = r["time_ratio_95"]
    assert lo <= r["time_ratio"] <= hi


PAIRED_MEMORY = """
import gc, json, pathlib, torch
from harness.measure.memory import AllocatorMode, release_free_heap
assert AllocatorMode.for_live_bytes()
from harness.plan.suite import build_suite
from harness.run.cell_process import probe_trainer
from harness.run.paired import paired
wl = {"name": "mwn", "backbone": "resnet10", "params": {"width": 8, "batch_size": 16}}
r = paired(wl, "unroll:T=3", "unroll:T=1", rounds=1, warmup=1, memory=True)
AllocatorMode.for_live_bytes()
# independently: the kernel's high-water mark around one hyper-step of a fresh copy
cell = build_suite({"workloads": [wl], "estimators": [{"name": "unroll", "params": {"T": 3}}],
                    "train_steps": 0, "warmup_steps": 1}).cells[0]
trainer = probe_trainer(cell, torch.device("cpu"))
status = lambda f: int(next(l for l in pathlib.Path("/proc/self/status").read_text().splitlines()
                            if l.startswith(f + ":")).split()[1]) * 1024
gc.collect(); release_free_heap()
pathlib.Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
trainer.hyper_step()
r["independent_a_peak"] = status("VmHWM") - before
print(json.dumps({k: v for k, v in r.items() if k != "time_ratio_95"}))
"""


@pytest.mark.skipif(rss_probe_unavailable() is not None, reason="needs Linux's /proc resident-set probe")
def test_paired_memory_reads_each_hyper_steps_live_byte_peak():
    """Unroll T=3 keeps three steps' graphs where T=1 keeps one; A's peak equals a
    high-water mark read around a fresh copy's hyper-step in the same process."""
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", PAIRED_MEMORY], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(r["a_peak_bytes"] - r["independent_a_peak"]) <= 0.10 * r["independent_a_peak"]
    assert r["memory_ratio"] == r["a_peak_bytes"] / r["b_peak_bytes"] and r["memory_ratio"] > 1.5


def test_paired_memory_refuses_a_process_not_in_live_bytes_mode():
    from harness.measure.memory import AllocatorMode
    from harness.run.paired import paired

    assert not AllocatorMode.live_bytes
    with pytest.raises(RuntimeError, match="for_live_bytes"):
        paired({"name": "toy1d", "backbone": "none", "params": {}}, "unroll", "plain", rounds=1, warmup=0,
               memory=True)


def test_paired_median_interval_has_its_binomial_coverage():
    """The interval is order statistics (k, n+1-k) with the largest k whose coverage
    1 - 2 P(Binom(n, 1/2) < k) is >= 95% (scipy's binomial here); on exponential samples
    (true median ln 2) it covers the median in about that share of draws."""
    import math

    from scipy.stats import binom

    from harness.run.paired import median_interval

    for n in (6, 10, 30, 61):
        k = max(j for j in range(1, n // 2 + 1) if 1 - 2 * binom.cdf(j - 1, n, 0.5) >= 0.95)
        assert median_interval([float(i) for i in range(1, n + 1)][::-1]) == (k, n + 1 - k)
    gen = torch.Generator().manual_seed(0)
    samples = torch.empty(4000, 30).exponential_(generator=gen)
    covered = [lo <= math.log(2) <= hi for lo, hi in (median_interval(row.tolist()) for row in samples)]
    assert 0.94 < sum(covered) / len(covered) < 0.975  # exact coverage at n=30: 0.957
