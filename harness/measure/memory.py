"""Memory probes for one step: saved-for-backward bytes, peak RSS (CPU), CUDA and NVML peaks.

Each probe is a context manager that fills in its result on exit, so probes compose and
the measured code stays untouched.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import statistics
import threading
from pathlib import Path
from typing import Any

import torch

from harness.core.schema import GROWTH_MIN_BYTES, GROWTH_MIN_FRACTION

# What "peak memory" means on the CPU: the peak of LIVE bytes, not what the allocator keeps.
# glibc keeps freed heap memory resident and reuses it, so a step's resident-set rise mixes
# its live tensors with chunks freed earlier (100-200 MiB on a ResNet-32 step here) and
# misses memory that a freed chunk was reused for. Two settings of glibc's allocator fix
# that (`mallopt`, from the start of the cell's process, before any tensor exists):
# - M_MMAP_THRESHOLD = 64 KiB: every allocation of 64 KiB or more (every tensor that
#   matters) is its own mapping, handed back to the kernel the moment it is freed, so the
#   resident set follows the live bytes; smaller ones stay on the heap (the non-tensor part).
# - M_TRIM_THRESHOLD = 64 KiB: free heap memory above that is returned at once.
# That mode costs speed (a system call per large allocation; about 3x slower steps here), so
# the memory pass runs first in the cell, then `for_speed()` gives the allocator the
# thresholds its own dynamic tuning reaches (32 MiB / 64 MiB) for timing and training.
# Setting the thresholds later does not help the memory pass: chunks freed earlier stay in
# the heap and are reused (the `release_free_heap` below only lowers what they hold).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
LIVE_THRESHOLD = 64 * 1024
SPEED_MMAP_THRESHOLD, SPEED_TRIM_THRESHOLD = 32 * 2 ** 20, 64 * 2 ** 20


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))


class AllocatorMode:
    """The process's allocator setting, as the memory probes need to know it."""
    live_bytes = False  # True while every large allocation is its own mapping

    @classmethod
    def for_live_bytes(cls) -> bool:
        """Call at the start of a fresh process (a cell's), before tensors exist."""
        cls.live_bytes = _mallopt(LIVE_THRESHOLD, LIVE_THRESHOLD)
        return cls.live_bytes

    @classmethod
    def for_speed(cls) -> None:
        if cls.live_bytes:
            _mallopt(SPEED_MMAP_THRESHOLD, SPEED_TRIM_THRESHOLD)
        cls.live_bytes = False

    @classmethod
    def as_timed(cls) -> bool:
        """The thresholds cells are timed under, in any process (one that calibrates a time
        model for them): before glibc's own tuning reaches them, each new tensor of 128 KiB
        or more is a fresh mapping, page-faulted in as it is written, and an add of 1 MiB
        tensors read 10-13 GB/s in one calibration and 73-92 GB/s in the next."""
        cls.live_bytes = False
        return _mallopt(SPEED_MMAP_THRESHOLD, SPEED_TRIM_THRESHOLD)


def release_free_heap() -> bool:
    """Return free heap memory to the kernel (glibc's malloc_trim); False where unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


class _Packed:
    """What autograd holds instead of a saved tensor; its death releases the storage's bytes."""

    __slots__ = ("tensor", "probe", "key")

    def __init__(self, tensor: torch.Tensor, probe: "SavedTensorBytes", key):
        self.tensor, self.probe, self.key = tensor, probe, key

    def __del__(self):
        self.probe._release(self.key)


class SavedTensorBytes:
    """Peak bytes of the tensors autograd saves for backward while the block runs.

    Each underlying storage is counted once, however many saved tensors view it, and its
    bytes are released when the last saved reference is freed (the graph is freed). This is
    the device-independent size of the graph an estimator builds.
    """

    def __init__(self):
        self.peak_bytes = 0
        self.current = 0
        self._refs: dict[Any, list[int]] = {}  # key -> [bytes, references]
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> _Packed:
        try:
            storage = t.untyped_storage()
            key, nbytes = (t.device, storage.data_ptr(), storage.nbytes()), storage.nbytes()
        except RuntimeError:  # a tensor without a plain storage (forward-mode AD's zero tangents)
            key, nbytes = ("tensor", id(t)), t.numel() * t.element_size()
        entry = self._refs.get(key)
        if entry is None:
            self._refs[key] = [nbytes, 1]
            self.current += nbytes
            self.peak_bytes = max(self.peak_bytes, self.current)
        else:
            entry[1] += 1
        return _Packed(t, self, key)

    @staticmethod
    def _unpack(p: _Packed) -> torch.Tensor:
        return p.tensor

    def _release(self, key) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._refs[key]

    def __enter__(self) -> "SavedTensorBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_probe_unavailable() -> str | None:
    """Why the peak-RSS probe cannot run here, or None when it can."""
    if not _STATUS.exists() or not os.access(_CLEAR_REFS, os.W_OK):
        return "needs Linux /proc/self/clear_refs and VmHWM (peak RSS probe unavailable)"
    return None


def resident_bytes(device: torch.device) -> int | None:
    """What the process holds now: CUDA's allocated bytes, or the CPU's resident set (None
    where /proc is missing). Read between steps to see memory that grows per step."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return None if rss_probe_unavailable() else _status_kib("VmRSS") * 1024


def growth_per_step(readings: list[int | None], peak_bytes: int | None) -> dict[str, Any]:
    """The median rise between successive readings and whether it flags the cell (higher#6,
    TorchOpt#218: graphs or optimiser state kept alive by every step). Needs three readings."""
    if len(readings) < 3 or any(r is None for r in readings):
        return {"memory_growth_bytes_per_step": None, "memory_grows": None}
    rise = statistics.median(b - a for a, b in zip(readings, readings[1:]))
    limit = max(GROWTH_MIN_BYTES, GROWTH_MIN_FRACTION * (peak_bytes or 0))
    return {"memory_growth_bytes_per_step": int(rise), "memory_grows": bool(rise > limit)}


class PeakRSS:
    """Peak resident set of this process during the block, above the resident set before it.

    Linux: writing 5 to /proc/self/clear_refs resets the high-water mark VmHWM. Free heap
    memory is first returned to the kernel (`release_free_heap`). In `AllocatorMode`'s
    live-bytes mode the figure is the peak of the block's live bytes (tensors and the rest);
    otherwise the allocator's retention mixes in and `note` says so. Where the probe is
    missing, `delta_bytes` stays None and `note` says why.
    """

    def __init__(self):
        self.delta_bytes: int | None = None
        self.note = rss_probe_unavailable()

    def __enter__(self) -> "PeakRSS":
        if self.note is None:
            gc.collect()
            if not release_free_heap():
                self.note = "no malloc_trim (not glibc): reused heap memory may be undercounted"
            elif not AllocatorMode.live_bytes:
                self.note = ("resident-set rise with the allocator's retention (not live bytes: "
                             "the process was not started in live-bytes mode)")
            _CLEAR_REFS.write_text("5")
            self._before = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if rss_probe_unavailable() is None:
            self.delta_bytes = max(0, _status_kib("VmHWM") - self._before) * 1024


class CudaPeak:
    """`max_memory_allocated` / `max_memory_reserved` over the block (caching allocator)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.alloc_bytes: int | None = None
        self.reserved_bytes: int | None = None

    def __enter__(self) -> "CudaPeak":
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        self.alloc_bytes = torch.cuda.max_memory_allocated(self.device)
        self.reserved_bytes = torch.cuda.max_memory_reserved(self.device)


class NvmlPeak:
    """Device-level used memory (all processes, CUDA context included), sampled by a thread.

    Needs `nvidia-ml-py` and an NVIDIA driver; otherwise `peak_bytes` stays None with a note.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.001):
        self.device, self.interval_s = device, interval_s
        self.peak_bytes: int | None = None
        self.note: str | None = None
        self._stop = threading.Event()

    def __enter__(self) -> "NvmlPeak":
        try:
            import pynvml
            pynvml.nvmlInit()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception as e:  # no driver, no library, no device
            self.note = f"NVML unavailable: {e}"
            return self
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
            self.peak_bytes = max(self.peak_bytes or 0, int(used))
            if self._stop.wait(self.interval_s):
                return

    def __exit__(self, *exc) -> None:
        if self.note is None:
            torch.cuda.synchronize(self.device)
            self._stop.set()
            self._thread.join()
            self._nvml.nvmlShutdown()
