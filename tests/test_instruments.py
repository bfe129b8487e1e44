"""The measuring instruments measure what they claim (exact graphs, known allocations,
analytic FLOPs); GPU-only probes are skipped with their reason, never faked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from harness.measure.flops import count_flops
from harness.measure.memory import CudaPeak, NvmlPeak, PeakRSS, SavedTensorBytes, rss_probe_unavailable

needs_rss = pytest.mark.skipif(rss_probe_unavailable() is not None, reason=str(rss_probe_unavailable()))


def test_saved_bytes_count_a_known_graph_exactly_and_each_storage_once():
    a = torch.randn(1000, requires_grad=True)
    with SavedTensorBytes() as probe:
        b = a.exp()          # saves its result b (4000 bytes)
        c = b.sin()          # saves b again: the same storage, counted once
        d = (c * c).sum()    # saves c twice: 4000 bytes once
        e = b[:10].exp()     # a view of b is saved (its storage is b's) and e (40 bytes)
    assert probe.peak_bytes == 4000 + 4000 + 40
    (d + e.sum()).backward()
    del b, c, d, e
    assert probe.current == 0  # the freed graph released every byte


def test_saved_bytes_peak_is_the_largest_live_graph_not_the_sum():
    w = torch.randn(256, 256, requires_grad=True)
    with SavedTensorBytes() as probe:
        for _ in range(3):
            (torch.randn(64, 256) @ w).tanh().sum().backward()
    # each graph saves mm's input (64x256; w itself is not needed: the input wants no grad)
    # and tanh's output (64x256); graphs are freed by backward, so the peak is one graph
    assert probe.peak_bytes == 4 * (64 * 256 + 64 * 256)


@needs_rss
def test_rss_probe_sees_a_known_200_mb_allocation():
    with PeakRSS() as probe:
        x = torch.ones(50_000_000)  # 200 MB, touched
        del x
    assert probe.delta_bytes == pytest.approx(200e6, rel=0.10)


PROBE_AFTER_LARGER_STEP = textwrap.dedent("""
    import torch
    from harness.measure.memory import PeakRSS
    keep = []
    def step(mb):  # 1 MB blocks held at once, a small long-lived tensor after each
        blocks = []
        for _ in range(mb):
            blocks.append(torch.ones(262_144))
            keep.append(torch.ones(64))
        del blocks
    step(400)
    with PeakRSS() as probe:
        step(100)
    assert "retention" in probe.note, probe.note  # (not a cell's process: no live-bytes mode)
    print(probe.delta_bytes)
""")


@needs_rss
def test_rss_probe_sees_a_steps_own_peak_after_a_larger_step():
    """glibc keeps freed heap memory: without `release_free_heap` a 100 MB step after a
    400 MB one reads 0 MB on this machine. A fresh process, so no earlier test's heap state
    matters, and no MALLOC_ tunables, so the probe alone must see the peak."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE_AFTER_LARGER_STEP], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert int(out) == pytest.approx(100 * 2 ** 20, rel=0.10)


LIVE_BYTES_PROBE = textwrap.dedent("""
    import json, torch
    from harness.measure.memory import AllocatorMode, PeakRSS
    assert AllocatorMode.for_live_bytes()
    MiB = 2 ** 18  # float32 elements in one MiB
    # earlier work that leaves freed chunks behind, as a cell's warm-up steps do
    for _ in range(3):
        junk = [torch.ones(MiB) for _ in range(100)]
        del junk
    def one_after_the_other(pieces):  # 64 MiB freed, then 192 MiB live: the peak is 192 MiB
        a = [torch.ones(64 * MiB // pieces) for _ in range(pieces)]
        del a
        b = [torch.ones(192 * MiB // pieces) for _ in range(pieces)]
        return len(b)
    def both_alive():                 # 64 + 192 MiB at once: 256 MiB
        a, b = torch.ones(64 * MiB), torch.ones(192 * MiB)
        return float(a[0] + b[0])
    out = {}
    for name, step in (("whole", lambda: one_after_the_other(1)), ("pieces", lambda: one_after_the_other(64)),
                       ("both", both_alive)):
        with PeakRSS() as probe:
            step()
        assert probe.note is None, probe.note
        out[name] = probe.delta_bytes
    print(json.dumps(out))
""")


@needs_rss
def test_live_bytes_probe_reads_the_peak_of_known_allocations_within_5_percent():
    """A cell's own process in live-bytes mode (AllocatorMode): tensors of 64 and 192 MiB,
    one freed before the other (as two tensors and as 64 pieces each, which glibc would
    otherwise serve from its heap), and both alive at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", LIVE_BYTES_PROBE], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    peaks = json.loads(out)
    assert peaks["whole"] == pytest.approx(192 * 2 ** 20, rel=0.05)
    assert peaks["pieces"] == pytest.approx(192 * 2 ** 20, rel=0.05)
    assert peaks["both"] == pytest.approx(256 * 2 ** 20, rel=0.05)


@needs_rss
@pytest.mark.parametrize("estimator", ["unroll", "evograd", "plain"])
def test_a_cells_cpu_peak_lies_between_its_saved_tensors_and_those_plus_weights_and_one_batch(estimator, tmp_path):
    """In a cell's own process the hyper-step's peak is at least what autograd saves for
    backward (those bytes are resident) and at most that plus one copy of the weights and
    one batch of activations (the plain step's saved tensors)."""
    from harness.plan.suite import build_suite
    from harness.run.cell_process import execute_cell
    from harness.run.isolation import run_isolated

    cell = build_suite({"workloads": [{"name": "mwn", "backbone": "resnet10",
                                       "params": {"width": 8, "batch_size": 32}}],
                        "estimators": [estimator], "train_steps": 0, "warmup_steps": 1,
                        "timed_steps": 1}).cells[0]
    row = run_isolated(execute_cell, cell, 300).row()
    assert row["status"] == "ok", row.get("error")
    assert row["memory_method"].startswith("peak live bytes") and not row["memory_note"]
    peak, saved = row["peak_rss_delta_bytes"], row["graph_bytes"]
    weights, activations = 4 * row["n_params"], row["plain_graph_bytes"]
    assert saved <= peak <= saved + weights + activations, (peak, saved, weights, activations)
    assert row["plain_peak_bytes"] >= activations  # the plain step holds its own activations


def test_flops_of_linear_forward_and_backward_match_the_analytic_count():
    B, i, o = 32, 64, 48
    layer = nn.Linear(i, o)
    x = torch.randn(B, i, requires_grad=True)
    fwd = count_flops(lambda: layer(x))
    assert fwd == 2 * B * i * o
    both = count_flops(lambda: layer(x).sum().backward())
    assert both == 3 * 2 * B * i * o  # forward, grad of input, grad of weight


def test_flops_of_conv2d_forward_and_backward_match_the_analytic_count():
    B, cin, cout, k, hw = 4, 3, 8, 3, 16
    conv = nn.Conv2d(cin, cout, k, padding=1, bias=False)
    x = torch.randn(B, cin, hw, hw, requires_grad=True)
    per_pass = 2 * B * cout * hw * hw * cin * k * k
    assert count_flops(lambda: conv(x)) == per_pass
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * per_pass


def test_nvml_probe_reports_no_number_without_a_driver():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: covered by the CUDA test")
    with NvmlPeak(torch.device("cuda", 0)) as probe:
        pass
    assert probe.peak_bytes is None and probe.note.startswith("NVML unavailable")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_peak_sees_a_known_allocation():
    dev = torch.device("cuda")
    with CudaPeak(dev) as probe:
        x = torch.ones(25_000_000, device=dev)  # 100 MB
        del x
    assert probe.alloc_bytes >= 100e6 and probe.reserved_bytes >= probe.alloc_bytes
    with NvmlPeak(dev) as nv:
        y = torch.ones(25_000_000, device=dev)
        del y
    assert nv.peak_bytes is not None and nv.peak_bytes >= 100e6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_each_measured_pass_starts_its_cuda_peak_afresh():
    """The official EvoGrad code logs max_memory_allocated without resetting it, so its
    figures are cumulative: every pass here resets first, so a small pass after a big one
    reads its own peak, and reserved and NVML figures come beside the allocated one."""
    from harness.measure.passes import _peak

    dev = torch.device("cuda")
    big = _peak(lambda: torch.empty(64 * 2 ** 20, dtype=torch.uint8, device=dev), dev)
    small = _peak(lambda: torch.empty(2 ** 20, dtype=torch.uint8, device=dev), dev)
    assert big["delta"] >= 64 * 2 ** 20 and 2 ** 20 <= small["delta"] < 4 * 2 ** 20
    assert small["peak_reserved_bytes"] >= small["peak_alloc_bytes"]
    assert small["nvml_peak_bytes"] is None or small["nvml_peak_bytes"] > small["peak_alloc_bytes"]
