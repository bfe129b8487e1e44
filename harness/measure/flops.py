"""Exact, machine-independent FLOP counts of one call (`torch.utils.flop_counter`)."""
from __future__ import annotations

from typing import Callable

from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of every counted aten op fn() dispatches (forward, backward, double backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())
