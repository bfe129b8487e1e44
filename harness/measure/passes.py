"""Cost of one hyper-step against a plain step of the same batch, in three separate passes.

Memory, time and FLOPs are measured in separate passes so that no probe disturbs another
(hooks slow steps down; timing must not include the probes' own work; the allocator mode
that makes the CPU memory figure a live-bytes figure is slow). Ratios ("x plain")
come from the same process and the same batches, so they survive a noisy machine.
"""
from __future__ import annotations

import gc
import statistics
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from harness.core.units import ratio
from harness.measure.flops import count_flops
from harness.measure.memory import (AllocatorMode, CudaPeak, NvmlPeak, PeakRSS, SavedTensorBytes, growth_per_step,
                                    release_free_heap, resident_bytes)
from harness.measure.pass_counts import count_passes
from harness.train.metaloop import MetaTrainer
from harness.measure.timing import Measurement, time_call


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


def memory_method(device: torch.device) -> str:
    """What the peak-memory columns measure on this device, in words (the `memory_method`
    column and the report's footnote)."""
    if device.type == "cuda":
        return "CUDA caching allocator's peak allocated bytes (torch.cuda.max_memory_allocated)"
    if AllocatorMode.live_bytes:
        return ("peak live bytes: resident-set rise with every allocation of 64 KiB or more its own "
                "mapping (glibc mallopt), so freed memory leaves the count")
    return "resident-set rise, allocator retention included"


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
    """Peaks of the hyper-step, the plain step, a real inner step (a plain meta-iteration)
    and a whole meta-iteration (hyper-step then real step), then the bytes autograd saves.
    The real steps move the probe copy on; it is never trained.

    Every peak starts with a garbage collection. What is alive now (modules, the model, the
    data: in a test or `--in-process` run, a whole interpreter's objects) is collected once
    and then frozen out of the collector's sight for the pass, so each of those collections
    scans only what the pass created (0.26 s each to a few ms in a test process)."""
    with _collector_frozen():
        return _memory_pass(trainer, device)


@contextmanager
def _collector_frozen() -> Iterator[None]:
    """What is alive now collected once, then out of the collector's sight for the block."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def hyper_step_peak(trainer: MetaTrainer, device: torch.device) -> int | None:
    """One hyper-step's peak, read as the memory pass reads it (for a paired comparison)."""
    with _collector_frozen():
        return _peak(trainer.hyper_step, device)["delta"]


def _memory_pass(trainer: MetaTrainer, device: torch.device) -> dict[str, Any]:
    hyper = _peak(trainer.hyper_step, device)
    plain = _peak(trainer.plain_step, device)
    inner = _peak(trainer.inner_step, device)
    iteration = _peak(lambda: trainer.iteration(hyper=True), device)
    with SavedTensorBytes() as plain_graph:
        trainer.plain_step()
    graph_bytes = None
    if trainer.estimator.saved_tensor_probe_applies:
        with SavedTensorBytes() as graph:
            trainer.hyper_step()
        graph_bytes = graph.peak_bytes
    out = {k: v for k, v in hyper.items() if k not in ("delta", "note")}
    out.update(growth_pass(trainer, device, hyper["delta"]))
    out.update({"plain_peak_bytes": plain["delta"], "mem_x_plain": ratio(hyper["delta"], plain["delta"]),
                "inner_peak_bytes": inner["delta"], "iter_peak_bytes": iteration["delta"],
                "iter_mem_x_plain": ratio(iteration["delta"], inner["delta"]),
                "graph_bytes": graph_bytes, "plain_graph_bytes": plain_graph.peak_bytes,
                "graph_x_plain": ratio(graph_bytes, plain_graph.peak_bytes),
                "memory_method": memory_method(device),
                "memory_note": "; ".join(n for n in (hyper["note"], trainer.estimator.measurement_note) if n)})
    return out


GROWTH_ITERATIONS = 4


def growth_pass(trainer: MetaTrainer, device: torch.device, peak_bytes: int | None) -> dict[str, Any]:
    """Whether memory still grows per meta-iteration after warm-up: what the process holds
    after each of `GROWTH_ITERATIONS` iterations (collected, free heap returned). Read in
    the memory pass: on the CPU only live-bytes mode makes the resident set follow live
    memory (in the allocator's speed mode the heap itself grew by 3-14 MB a step for ten
    steps after the switch, honest estimators included); on CUDA, allocated bytes."""
    readings = []
    for _ in range(GROWTH_ITERATIONS):
        trainer.iteration(hyper=True)
        gc.collect()
        if device.type != "cuda":
            release_free_heap()
        readings.append(resident_bytes(device))
    return growth_per_step(readings, peak_bytes)


def flops_pass(trainer: MetaTrainer) -> dict[str, Any]:
    hyper, plain = count_flops(trainer.hyper_step), count_flops(trainer.plain_step)
    inner = count_flops(trainer.inner_step)
    return {"hyper_flops": hyper, "plain_flops": plain, "inner_flops": inner,
            "flops_x_plain": ratio(hyper, plain)}


def flop_efficiency(row: dict[str, Any]) -> float | None:
    """Achieved FLOP/s of a whole meta-iteration (hyper-step + real step) over the plain
    step's, both timed in the same process: below 1, the estimator's work runs slower per
    FLOP than plain training does (small kernels, Python overhead, copies)."""
    try:
        achieved = (row["hyper_flops"] + row["inner_flops"]) / row["step_time_s"]
        return achieved / (row["plain_flops"] / row["plain_time_s"])
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def profile(trainer: MetaTrainer, device: torch.device, timed_steps: int) -> dict[str, Any]:
    """The three passes on one warmed-up trainer, one hyper-step's passes counted, and the
    problem's own facts: one cost row.

    Memory first: in a cell's fresh process the allocator is still in live-bytes mode (see
    `AllocatorMode`), which is slow; it is then set for speed before anything is timed."""
    out = memory_pass(trainer, device)
    AllocatorMode.for_speed()
    out.update(time_pass(trainer, device, timed_steps))
    out.update(flops_pass(trainer))
    out.update(count_passes(trainer))
    out["flop_efficiency"] = flop_efficiency(out)
    trainer.check_finite()
    out.update(trainer.problem.describe(), batch_size=trainer.batch_samples())
    return out
