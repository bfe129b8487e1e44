"""Cost of one hyper-step against a plain step of the same batch, in three separate passes.

Time, memory and FLOPs are measured in separate passes so that no probe disturbs another
(hooks slow steps down; timing must not include the probes' own work). Ratios ("x plain")
come from the same process and the same batches, so they survive a noisy machine.
"""
from __future__ import annotations

import gc
import statistics
from typing import Any

import torch

from harness.measure.flops import count_flops
from harness.measure.memory import CudaPeak, NvmlPeak, PeakRSS, SavedTensorBytes
from harness.train.metaloop import MetaTrainer
from harness.measure.timing import Measurement, time_call


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def time_steps(trainer: MetaTrainer, device: torch.device, repeats: int) -> dict[str, Measurement]:
    """Interleaved: plain step, hyper-step, real inner step, `repeats` times."""
    plain, hyper, inner = [], [], []
    for _ in range(repeats):
        plain.append(time_call(trainer.plain_step, device))
        hyper.append(time_call(trainer.hyper_step, device))
        inner.append(time_call(trainer.inner_step, device))
    return {"plain": Measurement(tuple(plain)), "hyper": Measurement(tuple(hyper)),
            "inner": Measurement(tuple(inner))}


def time_pass(trainer: MetaTrainer, device: torch.device, repeats: int) -> dict[str, Any]:
    m = time_steps(trainer, device, repeats)
    h, i, p = m["hyper"], m["inner"], m["plain"]
    step = Measurement(tuple(a + b for a, b in zip(h.times_s, i.times_s)))
    return {"step_time_s": step.median, "step_time_iqr_s": step.iqr, "step_time_min_s": step.min,
            "hyper_time_s": h.median, "hyper_time_iqr_s": h.iqr, "inner_time_s": i.median,
            "plain_time_s": p.median,
            "time_x_plain": statistics.median(a / b for a, b in zip(h.times_s, p.times_s))}


def _peak(fn, device: torch.device) -> dict[str, Any]:
    """Peak memory of fn() above what was allocated before it, by the device's probe."""
    if device.type == "cuda":
        gc.collect()  # (PeakRSS collects on its own)
        before = torch.cuda.memory_allocated(device)
        with CudaPeak(device) as cp, NvmlPeak(device) as nv:
            fn()
        return {"delta": cp.alloc_bytes - before, "peak_alloc_bytes": cp.alloc_bytes,
                "peak_reserved_bytes": cp.reserved_bytes, "nvml_peak_bytes": nv.peak_bytes,
                "note": nv.note}
    with PeakRSS() as rss:
        fn()
    return {"delta": rss.delta_bytes, "peak_rss_delta_bytes": rss.delta_bytes, "note": rss.note}


def memory_pass(trainer: MetaTrainer, device: torch.device) -> dict[str, Any]:
    hyper = _peak(trainer.hyper_step, device)
    plain = _peak(trainer.plain_step, device)
    with SavedTensorBytes() as graph:
        trainer.hyper_step()
    with SavedTensorBytes() as plain_graph:
        trainer.plain_step()
    out = {k: v for k, v in hyper.items() if k not in ("delta", "note")}
    out.update({"plain_peak_bytes": plain["delta"], "mem_x_plain": _ratio(hyper["delta"], plain["delta"]),
                "graph_bytes": graph.peak_bytes, "plain_graph_bytes": plain_graph.peak_bytes,
                "graph_x_plain": _ratio(graph.peak_bytes, plain_graph.peak_bytes),
                "memory_note": hyper["note"] or ""})
    return out


def flops_pass(trainer: MetaTrainer) -> dict[str, Any]:
    hyper, plain = count_flops(trainer.hyper_step), count_flops(trainer.plain_step)
    return {"hyper_flops": hyper, "plain_flops": plain, "flops_x_plain": _ratio(hyper, plain)}


def profile(trainer: MetaTrainer, device: torch.device, timed_steps: int) -> dict[str, Any]:
    """The three passes on one warmed-up trainer, in the order that keeps them apart (time
    first, before any probe has run), and the problem's own facts: one cost row."""
    out = time_pass(trainer, device, timed_steps)
    out.update(memory_pass(trainer, device))
    out.update(flops_pass(trainer))
    trainer.check_finite()
    out.update(trainer.problem.describe(), batch_size=trainer.batch_samples())
    return out
