"""Timing summaries (no wall-time assertions: timing belongs to benchmarks)."""
from __future__ import annotations

import pytest
import torch

from harness.measure.timing import Measurement, time_call


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
