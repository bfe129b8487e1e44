"""A hyper-step's peak memory and time predicted without allocating its tensors.

The step runs under `FakeTensorMode`: every op computes its outputs' shapes, dtypes and
devices and nothing else. `FakeAllocations` (a dispatch mode above it) adds the bytes of each
new storage an op creates and subtracts them when the storage dies (a weakref on it), which
is what the live-bytes probe measures for real. Three things torch's own tools do not do here:
- the problem is built for real (its data splits use data-dependent ops, `aten._unique2`,
  which fake tensors cannot run), then one throw-away copy is stepped under fake tensors:
  the model, the optimisers and the data are real and already allocated (they are what
  the measured peaks sit above), every tensor a step creates is fake;
- scalar reads (`float(norm(v))` for a finite-difference step, `.item()`) have no value to
  read; they are answered with 1 (counted in `scalar_reads`): shapes, and so bytes, never
  depend on them;
- `MemTracker` refuses several forwards of one module in one iteration, which every estimator
  does, and `RuntimeEstimator` times ops on a GPU (real kernels or a GPU roofline), so time
  comes from a model in `TIME_MODELS`: by default a roofline calibrated at start-up
  (`Roofline`, nothing run but its calibration), or each distinct kernel call timed once for
  real on this CPU (`MeasuredKernels`, what `RuntimeEstimator`'s operator-level benchmark does
  on a GPU).
"""
from __future__ import annotations

import statistics
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from harness.measure.pass_counts import PassCounter

CUDA_BLOCK_BYTES = 512  # the caching allocator hands out blocks in multiples of 512 bytes


def cuda_footprint(nbytes: int) -> int:
    """Bytes the caching allocator's `memory_allocated` counts for a storage."""
    return _round_up(nbytes, CUDA_BLOCK_BYTES)


def cpu_live_footprint(nbytes: int) -> int:
    """Resident bytes of a storage in live-bytes mode (`AllocatorMode`): from the mmap
    threshold up, its own mapping of whole 4 KiB pages, holding the 64-byte alignment torch
    asks for and malloc's header; below it, heap bytes (a 16-byte header, 64-byte aligned)."""
    from harness.measure.memory import LIVE_THRESHOLD

    if nbytes >= LIVE_THRESHOLD:
        return _round_up(nbytes + 64 + 16, 4096)
    return _round_up(nbytes, 64) + 16


FOOTPRINTS: dict[str, Callable[[int], int]] = {"cuda": cuda_footprint, "cpu": cpu_live_footprint}

# What a prediction leaves out, by device (the `predicted_note` column).
EXCLUDED = {
    "cuda": ("CUDA allocator model: each storage rounded up to 512-byte blocks (allocated "
             "bytes, as max_memory_allocated counts them, with what the build places on the device "
             "and the warm-up leaves there as resident: weights, buffers, hyperparameters, optimiser "
             "state, the data a workload keeps on the device); reserved segments (the allocator's "
             "cache and fragmentation), cuDNN/cuBLAS workspaces and the CUDA context excluded; "
             "op choices are the CPU kernels' (fused attention and cuDNN batch-norm buffers "
             "differ on a GPU)"),
    "cpu": ("live-bytes model: storages of 64 KiB or more as whole 4 KiB pages, smaller ones as heap bytes; "
            "convolutions' scratch measured once per distinct call; other kernels' scratch, Python "
            "objects and autograd's graph nodes excluded"),
}

# Ops that only read metadata or make views: no bytes move and, in the time model, no kernel.
_NO_KERNEL = {"view", "_unsafe_view", "as_strided", "t", "transpose", "permute", "expand", "unsqueeze",
              "squeeze", "alias", "detach", "slice", "select", "reshape", "unbind", "split", "chunk",
              "split_with_sizes", "view_as_real", "view_as_complex", "_reshape_alias", "lift_fresh"}


_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
             torch.ops.aten._index_put_impl_.default}


def _masks_as_indices(indices):
    """A real boolean mask in an index list as the integer indices it selects (computed for
    real), so that a fake tensor indexed by it has a known shape; what the mask would do."""
    out = []
    for i in indices:
        if isinstance(i, torch.Tensor) and not isinstance(i, FakeTensor) and i.dtype in (torch.bool, torch.uint8):
            with _disable_current_modes():
                out.extend(torch.nonzero(i).unbind(1))
        else:
            out.append(i)
    return out


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block


@dataclass(frozen=True)
class Roofline:
    """Per-op time as max(FLOPs / peak FLOP/s, bytes moved / bandwidth) plus a fixed
    dispatch overhead, the rates measured on this machine by `calibrate`. Bandwidth has two
    tiers: ops that touch less than `cache_bytes` run from the CPU's caches (an estimator's
    weight-sized updates at these widths), larger ones from DRAM. A model, not a
    measurement: its error against measured steps is reported beside it."""
    flops_per_s: float
    cache_bytes_per_s: float
    dram_bytes_per_s: float
    overhead_s: float
    cache_bytes: int = 8 * 2 ** 20

    name = "roofline"

    @property
    def note(self) -> str:
        """What it was calibrated to, in the row: this VM's rates moved 1.5-2x between
        calibrations a second apart, and a prediction moves with them."""
        return (f"a roofline calibrated on this CPU ({self.flops_per_s / 1e9:.0f} GFLOP/s; "
                f"{self.cache_bytes_per_s / 1e9:.0f} GB/s under {self.cache_bytes // 2 ** 20} MiB, "
                f"{self.dram_bytes_per_s / 1e9:.0f} GB/s above; {self.overhead_s * 1e6:.1f} us per op); "
                "0.29-0.70 of MW-Net hyper-steps timed in the same process, less at smaller widths")

    def op_time(self, flops: int, nbytes: int) -> float:
        bandwidth = self.cache_bytes_per_s if nbytes < self.cache_bytes else self.dram_bytes_per_s
        return max(flops / self.flops_per_s, nbytes / bandwidth) + self.overhead_s

    def call_time(self, func, args, kwargs, ins, outs, out) -> float:
        formula = flop_registry.get(func._overloadpacket)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        return self.op_time(flops, sum(t.numel() * t.element_size() for t in (*ins, *outs)))

    @classmethod
    def calibrate(cls, device: torch.device = torch.device("cpu"), min_s: float = 0.05) -> "Roofline":
        """Best of repeated runs (at least 5 and `min_s` seconds each) of a convolution (peak
        FLOP/s), an add of cache-sized and of DRAM-sized tensors (bandwidths, 3 tensors'
        bytes moved) and a tiny add (per-op overhead), on this process's threads and under
        the allocator thresholds the measured cells are timed with (`AllocatorMode.as_timed`)."""
        from harness.measure.memory import AllocatorMode

        def best(fn: Callable[[], object], per_run: int = 1) -> float:
            fn()
            times: list[float] = []
            while len(times) < 5 or sum(times) < min_s:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times) / per_run

        AllocatorMode.as_timed()
        x, w = torch.randn(32, 64, 32, 32, device=device), torch.randn(64, 64, 3, 3, device=device)
        conv_flops = 2 * 32 * 64 * 32 * 32 * 64 * 9
        small, big, tiny = (torch.randn(n, device=device) for n in (2 ** 18, 2 ** 23, 8))
        with torch.no_grad():
            conv_s = best(lambda: torch.nn.functional.conv2d(x, w, padding=1))
            small_s = best(lambda: [small + small for _ in range(20)], 20)
            big_s = best(lambda: big + big)
            add_s = best(lambda: [tiny + 1 for _ in range(1000)], 1000)
        return cls(flops_per_s=conv_flops / conv_s, cache_bytes_per_s=3 * small.numel() * 4 / small_s,
                   dram_bytes_per_s=3 * big.numel() * 4 / big_s, overhead_s=add_s)


def call_key(func, args, kwargs) -> tuple:
    """What decides a kernel call's cost and scratch: the op, its tensors' shapes, strides and
    dtypes, and its other arguments."""
    def part(a):
        if isinstance(a, torch.Tensor):
            return ("T", tuple(a.shape), tuple(a.stride()), a.dtype)
        return repr(a)
    return (str(func), *(part(a) for a in tree_flatten((args, kwargs))[0]))


def real_copies(args, kwargs, random_floats: bool = False):
    """The call's arguments with every tensor (fake or real) replaced by a new real one of its
    shape, strides and dtype: zeros, or floating-point ones drawn from a standard normal
    (`random_floats`; the rest zeros: a valid index, an all-false mask). A call run on them for
    real never writes to the step's own tensors (in-place ops, optimisers' buffers). Call with
    the fake modes disabled."""
    from torch.utils._pytree import tree_map

    def copy(t):
        if not isinstance(t, torch.Tensor):
            return t
        real = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype)
        flat = real.as_strided((real.untyped_storage().nbytes() // real.element_size(),), (1,))  # (expanded too)
        flat.normal_() if random_floats and (t.is_floating_point() or t.is_complex()) else flat.zero_()
        return real
    return tree_map(copy, (args, kwargs))


class MeasuredKernels:
    """A step's time as the sum of its kernel calls' times, each distinct call (`call_key`) run
    for real once on copies of its inputs (`real_copies`, floats drawn at random) and timed: a
    warm-up run, then the median of at least `min_repeats` runs and `min_total_s` of them (at
    most `max_repeats`). The cache is shared by every cell predicted in a process, so a
    suite's repeated shapes are timed once. `hgbench predict --time-model kernels`.

    Built to check the roofline's error; kept because it is the nearer model. Timed in one
    process beside each real MW-Net hyper-step of the cost suite (`tests/benchmarks/
    predict_time.py`), the ops' own times summed to 0.78-1.23 of the step's wall time (so
    off-kernel work, Python and autograd's engine, is not the error), and the two models gave
    (docs/results/2026-12-05-predict-time.md):
    - roofline: 0.29-0.70 of the wall time, nearly one factor per backbone (0.37, 0.44, 0.62
      at ResNet10/18/34): width-16 convolutions ran at 0.45-0.75 of the calibration's
      64-channel one, elementwise ops at 0.33-0.46 of its bandwidth, batch norm at 0.1;
    - kernels: 0.64-1.36 (medians 1.08, 0.75, 0.82): a kernel run alone on hot caches is
      faster than inside a step, and the machine's speed drifts between when a kernel is
      timed and when a later cell reuses that timing.
    Inputs' values matter: filled with ones, batch-norm backwards ran 3.6-20x slower than on
    real activations, hence random floats. Random ops run with the generator's state
    restored, so predicting never moves a stream."""
    name = "kernels"
    note = ("each distinct kernel call timed once for real on this CPU (median of repeats), summed; "
            "0.64-1.36 of MW-Net hyper-steps timed in the same process")

    def __init__(self, min_repeats: int = 5, min_total_s: float = 2e-3, max_repeats: int = 25):
        self.min_repeats, self.min_total_s, self.max_repeats = min_repeats, min_total_s, max_repeats
        self.measured: dict[tuple, float] = {}

    @classmethod
    def calibrate(cls, device: torch.device = torch.device("cpu")) -> "MeasuredKernels":
        """Nothing to measure up front; the kernels are timed under the allocator thresholds
        the measured cells are timed with (`AllocatorMode.as_timed`)."""
        from harness.measure.memory import AllocatorMode

        AllocatorMode.as_timed()
        return cls()

    def call_time(self, func, args, kwargs, ins, outs, out) -> float:
        key = call_key(func, args, kwargs)
        if key not in self.measured:
            self.measured[key] = self._time(func, args, kwargs)
        return self.measured[key]

    def _time(self, func, args, kwargs) -> float:
        with _disable_current_modes(), torch.random.fork_rng(devices=[]):
            real_args, real_kwargs = real_copies(args, kwargs, random_floats=True)
            func(*real_args, **real_kwargs)
            times: list[float] = []
            while len(times) < self.max_repeats and (len(times) < self.min_repeats
                                                      or sum(times) < self.min_total_s):
                t0 = time.perf_counter()
                func(*real_args, **real_kwargs)
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


# How a predicted step's time is modelled, by name (`hgbench predict --time-model`).
TIME_MODELS: dict[str, Any] = {"kernels": MeasuredKernels, "roofline": Roofline}


class FakeAllocations(TorchDispatchMode):
    """Live bytes of the storages fake ops create, their peak, and the modelled time of
    the ops (`time_model`: one of `TIME_MODELS`); `mark()` starts a segment (its peak and
    time above what was live then)."""

    def __init__(self, footprint: Callable[[int], int] = lambda n: n, time_model=None,
                 scratch: "KernelScratch | None" = None):
        super().__init__()
        self.footprint, self.time_model, self.scratch = footprint, time_model, scratch
        self.current = self.peak = self.base = 0
        self.time_s = 0.0
        self.scalar_reads = 0
        self._live: dict[int, tuple[weakref.ref, int]] = {}

    def mark(self) -> None:
        self.base = self.peak = self.current
        self.time_s = 0.0

    @property
    def segment_peak(self) -> int:
        return self.peak - self.base

    def _release(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current -= entry[1]

    def _track(self, t: torch.Tensor) -> None:
        self.track_storage(t.untyped_storage())

    def track_storage(self, storage) -> None:
        key = id(storage)
        if key in self._live:
            return
        nbytes = self.footprint(storage.nbytes()) if storage.nbytes() else 0
        self._live[key] = (weakref.ref(storage, lambda _r, key=key: self._release(key)), nbytes)
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if ins and not any(isinstance(t, FakeTensor) or t.is_floating_point() or t.is_complex() for t in ins):
            # Labels, masks and indices drawn for real stay real: their values decide shapes.
            with _disable_current_modes():
                out = func(*args, **kwargs)
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._track(t)
            return out
        if func in _INDEXING:
            args = (args[0], _masks_as_indices(args[1]), *args[2:])
        if func is torch.ops.aten._local_scalar_dense.default:
            self.scalar_reads += 1
            return True if args[0].dtype == torch.bool else 1 if not args[0].dtype.is_floating_point else 1.0
        out = func(*args, **kwargs)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for t in outs:
            self._track(t)
        if self.scratch is not None and func in KernelScratch.OPS:
            self.peak = max(self.peak, self.current + self.scratch(func, args, kwargs))
        if self.time_model is not None and func.namespace == "aten" and func._overloadpacket.__name__ not in _NO_KERNEL:
            self.time_s += self.time_model.call_time(func, args, kwargs, ins, outs, out)
        return out


# The device a problem is built on when `hgbench predict` runs it: a CPU, but one whose
# `torch.device` object no code names by accident, so that `DevicePlacements` can tell the
# build's own placements (`.to(device)`, `device=device`) from host-side work.
PLACEMENT_DEVICE = torch.device("cpu", 0)

# Calls that copy a tensor off the device. On the CPU stand-in they would return the
# placed storage itself; `DevicePlacements` gives them a copy, as a GPU does.
_HOST_MOVES = {torch.Tensor.cpu}


class DevicePlacements(TorchFunctionMode):
    """The storages a workload's build places on its device, held while they live: what the
    device holds before a step begins (the weights, buffers, hyperparameters and the data a
    workload keeps there). `hgbench predict` builds the problem for real on the CPU, so no
    tensor says which device it would be on; the build is given `PLACEMENT_DEVICE` and a
    tensor counts as placed when its call names that device or takes a placed tensor
    (propagated: `x.to(device).float()` is placed), except what `_HOST_MOVES` return: a
    host copy, which work after it does not place.
    A workload's host-side data (LFT's image domains, read a batch at a time) never passes
    through such a call and is not counted, as it takes no device memory on a GPU. A tensor
    made from another's `.device` with no tensor argument (`torch.zeros(n, device=x.device)`)
    reads as the plain CPU and is taken as host-side: no built-in workload's build does
    this. As on a GPU, `.to(PLACEMENT_DEVICE)` copies a host tensor (the device differs),
    so a split placed twice is held twice (MetaXL's synthetic meta split is its training
    split: two copies on a GPU, one on the CPU)."""

    def __init__(self, device: torch.device = PLACEMENT_DEVICE):
        super().__init__()
        self.device = device
        self._placed: dict[int, weakref.ref] = {}

    def holds(self, t: torch.Tensor) -> bool:
        return id(t.untyped_storage()) in self._placed

    def storages(self) -> list:
        """The placed storages still alive."""
        return [s for s in (ref() for ref in self._placed.values()) if s is not None]

    def _place(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key not in self._placed:
            self._placed[key] = weakref.ref(storage, lambda _r, key=key: self._placed.pop(key, None))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _HOST_MOVES:
            return out.clone() if self.holds(out) else out
        flat = tree_flatten((args, kwargs))[0]
        if any(isinstance(a, torch.device) and a == self.device for a in flat) or any(
                isinstance(a, torch.Tensor) and not a.is_meta and self.holds(a) for a in flat):
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and not t.is_meta:
                    self._place(t)
        return out


class KernelScratch:
    """Bytes a CPU kernel allocates and frees inside one call, which no output tracker sees:
    oneDNN's convolutions with few input channels (a LeNet's, a ResNet's stem) lower to
    im2col and a GEMM, whose column buffer is as large as the batch's patches (5.6-5.9 MiB
    above the outputs for the rotation's LeNet at batch 64). Measured, not modelled: each
    distinct call (op, shapes, strides, dtypes, arguments) runs for real on zeros, once to
    set up, then once more with its resident high-water mark read as on the live-bytes probe
    (`PeakRSS`'s clear_refs/VmHWM; free heap is left in place, as a step finds it, so that
    small scratch reusing it is not counted)."""
    OPS = frozenset({torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default})

    def __init__(self):
        from harness.measure.memory import rss_probe_unavailable

        self.unavailable = rss_probe_unavailable()
        self._measured: dict[tuple, int] = {}

    def __call__(self, func, args, kwargs) -> int:
        if self.unavailable is not None:
            return 0
        key = call_key(func, args, kwargs)
        if key not in self._measured:
            self._measured[key] = self._measure(func, args, kwargs)
        return self._measured[key]

    @staticmethod
    def _measure(func, args, kwargs) -> int:
        """The call's resident high-water mark above the resident set before it, less its
        outputs' footprint. Read against *before*, not against what is resident after: a
        call's frees may trim heap that was resident before it (in `hgbench predict`'s own
        process, not in live-bytes mode, one such trim read as 30 MB of scratch for SAMA's
        ResNet10 cell). Large allocations are made their own mappings for the call, so a
        scratch buffer shows in the high-water mark whatever the heap holds free. The call
        runs once before it is read: a kernel's first call in a process sets up what it
        keeps (oneDNN's primitives and thread pools), which read as 4.2-7.0 MB of scratch in
        the first cell a process predicted (a width-4 MW-Net unroll step: 7.5 MB against
        0.48 MB for the same cell predicted next); a measured cell's step comes after its
        warm-up, when that is done."""
        from harness.measure.memory import _CLEAR_REFS, AllocatorMode, _status_kib

        switched = not AllocatorMode.live_bytes and AllocatorMode.for_live_bytes()
        try:
            with _disable_current_modes():
                real_args, real_kwargs = real_copies(args, kwargs)
                func(*real_args, **real_kwargs)
                before = _status_kib("VmRSS")
                _CLEAR_REFS.write_text("5")
                out = func(*real_args, **real_kwargs)
                peak = max(0, _status_kib("VmHWM") - before) * 1024
                outputs = sum(cpu_live_footprint(t.untyped_storage().nbytes())
                              for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
                del out, real_args, real_kwargs
        finally:
            if switched:
                AllocatorMode.for_speed()
        return max(0, peak - outputs)


class _RealDraws:
    """A data stream drawn for real while the step around it is fake: sampling an episode
    or a batch uses data-dependent ops (`bincount`, `unique`) that fake tensors cannot run.
    The drawn batch's bytes are counted, as the measured peak counts a batch drawn inside
    the step."""

    def __init__(self, stream, alloc: "FakeAllocations"):
        self.stream, self.alloc = stream, alloc

    def __iter__(self):
        return self

    def __next__(self):
        with _disable_current_modes():
            batch = next(self.stream)
        for t in tree_flatten(batch)[0]:
            if isinstance(t, torch.Tensor):
                self.alloc._track(t)
        return batch


def predict_trainer(trainer, warmup_steps: int, device_type: str = "cpu", time_model=None,
                    placed: DevicePlacements | None = None) -> dict[str, Any]:
    """Predicted peaks (hyper-step; hyper-step then real step) and times of a throw-away
    trainer stepped under fake tensors: `warmup_steps` meta-iterations first (at least one,
    so that gradients and optimiser state exist, as they do when a cell is measured), then
    one hyper-step (its segment) and the real step after it (the meta-iteration's segment
    goes on through it). With `placed` (the build's placements), also what the device holds
    when the hyper-step begins (`predicted_resident_bytes`): the placed storages still
    alive and every tensor the warm-up left (gradients, optimiser state, drawn batches).
    The trainer is left holding fake tensors: never use it again."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from harness.train.metaloop import PeekableStream

    alloc = FakeAllocations(FOOTPRINTS[device_type], time_model, KernelScratch() if device_type == "cpu" else None)
    for storage in placed.storages() if placed is not None else ():
        alloc.track_storage(storage)
    trainer.train_stream = PeekableStream(_RealDraws(trainer.train_stream, alloc))
    trainer.val_stream = PeekableStream(_RealDraws(trainer.val_stream, alloc))
    # A problem's other streams (LFT's auxiliary seen-domain batches) are drawn in its losses.
    for name, value in list(vars(trainer.problem).items()):
        if hasattr(value, "__next__"):
            setattr(trainer.problem, name, _RealDraws(value, alloc))
    with FakeTensorMode(allow_non_fake_inputs=True), alloc:
        for _ in range(max(1, warmup_steps)):
            trainer.iteration(hyper=True)
        alloc.mark()
        resident = alloc.current
        counter = PassCounter(trainer.problem)
        with counter.counting():  # (autograd builds fake graphs as it builds real ones)
            trainer.hyper_step()
        hyper_peak, hyper_time = alloc.segment_peak, alloc.time_s
        passes = counter.counts.as_row()
        del counter  # it holds the kept gradients' nodes: gone before the real step
        # The meta-iteration is this hyper-step and the real step after it (the segment goes
        # on): one fake hyper-step fewer, which at LFT ResNet34 224 px T=20 is a minute.
        if trainer.estimator.real_step_first:  # (its meta-iteration is the real step, then the hyper-step)
            alloc.mark()
            trainer.iteration(hyper=True)
        else:
            trainer.inner_step()
        iter_peak, iter_time = alloc.segment_peak, alloc.time_s
    return {"predicted_peak_bytes": hyper_peak, "predicted_iter_peak_bytes": iter_peak,
            "predicted_resident_bytes": resident if placed is not None else None,
            "predicted_time_s": hyper_time if time_model is not None else None,
            "predicted_iter_time_s": iter_time if time_model is not None else None,
            "scalar_reads": alloc.scalar_reads, **passes}
