"""The measuring instruments measure what they claim (exact graphs, known allocations,
analytic FLOPs); GPU-only probes are skipped with their reason, never faked."""
from __future__ import annotations

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
    assert probe.note is None, probe.note
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
