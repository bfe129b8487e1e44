"""Wall time of one call, synchronised on CUDA, and robust summaries of repeated calls."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for fn(). On CUDA, CUDA events bracket the work and the host waits for them,
    so queued kernels are counted; an unsynchronised host clock would time only the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass(frozen=True)
class Measurement:
    times_s: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times_s)

    @property
    def iqr(self) -> float:
        if len(self.times_s) < 2:
            return 0.0
        q = statistics.quantiles(self.times_s, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times_s)

    @property
    def min(self) -> float:
        return min(self.times_s)
