"""Timing summaries (no wall-time assertions: timing belongs to benchmarks)."""
from __future__ import annotations

import pytest
import torch

from harness.measure.timing import Measurement, measure, time_call


def test_measurement_summaries():
    m = Measurement((4.0, 1.0, 3.0, 2.0, 5.0))
    assert m.median == 3.0 and m.min == 1.0 and m.iqr == 2.0
    assert Measurement((2.0,)).iqr == 0.0


def test_measure_runs_warmup_untimed_then_times_each_repeat():
    calls = []
    m = measure(lambda: calls.append(1), torch.device("cpu"), warmup=3, repeats=4)
    assert len(calls) == 7 and len(m.times_s) == 4 and all(t >= 0 for t in m.times_s)


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
    from harness.run.paired import _estimator, paired

    assert _estimator("t1t2:mode=exact,fd_scale=0.1") == {"name": "t1t2", "params": {"mode": "exact", "fd_scale": 0.1}}
    r = paired({"name": "mwn", "backbone": "resnet10", "params": {"width": 4, "batch_size": 16}},
               "t1t2:mode=exact", "unroll:T=1", rounds=2, warmup=1)
    assert r["flops_ratio"] == 1.0 and r["a_ms"] > 0 and r["b_ms"] > 0
