"""Where cells run: this machine, one at a time or `--jobs N` at once, or a Ray cluster.

An executor takes cells and yields their results as they finish (in any order); the
runner writes each one to the results store at once, so whichever way cells run, a
finished cell is never lost. Every cell still runs in its own fresh process
(`harness.run.isolation`): on Ray, the task's worker forks it.

An executor decides where a cell runs, never on which device: that is the cell's own
process's decision (`cell_process.resolve_device`). It only refuses, before any cell runs,
cells its machines cannot serve (`device: cuda` without a GPU), and on Ray reserves a GPU
for a cell that will use one (`cuda`, or `auto` where the cluster has GPUs).
"""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from harness.core.errors import ConfigError
from harness.core.registry import Registry
from harness.core.result import CellResult
from harness.plan.cell import Cell

ResultFn = Callable[[Cell], CellResult]


class ExecutorLost(RuntimeError):
    """The machinery behind an executor went away mid-run (the Ray head died): no cell after
    this can finish. The runner names the cells left without a row and how to continue."""
EXECUTORS: Registry[Callable[..., "Executor"]] = Registry("executor")


class Executor:
    name: str

    def admit(self, cells: list[Cell]) -> None:
        """Refuse (ConfigError) cells no machine of this executor can run."""

    def run(self, cells: Iterable[Cell], result: ResultFn) -> Iterator[tuple[Cell, CellResult | Exception]]:
        """(cell, its result) as cells finish; an exception in place of the result when
        the machinery (not the cell, which makes its own failure results) lost it."""
        raise NotImplementedError

    def close(self) -> None:
        pass


@EXECUTORS.register("local")
@dataclass
class LocalExecutor(Executor):
    """`jobs` cells at once on this machine (default 1: timings need the machine alone)."""
    jobs: int = 1
    name: str = "local"

    def admit(self, cells):
        import torch

        if any(c.device == "cuda" for c in cells) and not torch.cuda.is_available():
            raise ConfigError("device: cuda requested but torch.cuda.is_available() is False on this "
                              "machine (use device: cpu or auto)")

    def run(self, cells, row):
        if self.jobs == 1:
            for cell in cells:
                yield cell, row(cell)
            return
        queue = list(cells)
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="hgbench-cell") as pool:
            pending = {}
            while queue or pending:
                while queue and len(pending) < self.jobs:
                    cell = queue.pop(0)
                    pending[pool.submit(row, cell)] = cell
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    cell = pending.pop(future)
                    exc = future.exception()
                    yield cell, exc if exc is not None else future.result()


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise ConfigError(f"--ray-address {address}: cannot connect to Ray ({e}); start a head with "
                          "`ray start --head` and give its HOST:PORT") from None


def _ray_cell(row: ResultFn, cell: Cell, plugins: str) -> CellResult:
    """Runs in a Ray worker: the driver's plugins, then the cell in its own process."""
    from harness.core.plugins import ENV

    os.environ[ENV] = plugins
    return row(cell)


@EXECUTORS.register("ray")
@dataclass
class RayExecutor(Executor):
    """Each cell a Ray task (`num_gpus=1` for CUDA cells, `cpus_per_cell` CPUs otherwise);
    rows come back to the driver as tasks finish. `address` None starts a local Ray."""
    address: str | None = None
    cpus_per_cell: float = 0.0  # 0: all of this machine's CPUs, so a same-size node runs one cell at a time
    name: str = "ray"

    def __post_init__(self):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray: Ray is not installed; `pip install -e .[ray]` "
                              "(make setup does)") from None
        self._ray = ray
        self._started = False
        if self.address and ":" in self.address and "://" not in self.address:
            _reachable(self.address)  # ray.init would retry an unreachable head for minutes
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise ConfigError(f"--ray-address {self.address}: cannot connect to Ray ({e}); "
                                  "start a head with `ray start --head`") from None
            self._started = True
        # A request no node can meet would wait forever: fit the default to the largest node.
        largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
        if self.cpus_per_cell and self.cpus_per_cell > largest:
            self.close()
            raise ConfigError(f"--cpus-per-cell {self.cpus_per_cell:g}: no Ray node has that many CPUs "
                              f"(largest: {largest:g})")
        self.cpus = self.cpus_per_cell or min(float(os.cpu_count() or 1), largest or 1.0)
        self.gpus = ray.cluster_resources().get("GPU", 0.0)

    def uses_gpu(self, cell: Cell) -> bool:
        """Whether the cell's process will find CUDA, so its task must hold a GPU: `cuda`,
        or `auto` on a cluster with GPUs (on one without, `auto` decides on the CPU)."""
        return cell.device == "cuda" or (cell.device == "auto" and self.gpus >= 1)

    def admit(self, cells):
        if any(c.device == "cuda" for c in cells) and self.gpus < 1:
            raise ConfigError("device: cuda cells need a GPU, and the Ray cluster has none")

    def run(self, cells, row):
        from harness.core.plugins import plugin_spec

        ray = self._ray
        task = ray.remote(_ray_cell)
        pending = {}
        for cell in cells:
            options = {"num_gpus": 1, "num_cpus": 1} if self.uses_gpu(cell) else {"num_cpus": self.cpus}
            pending[task.options(**options, max_retries=0).remote(row, cell, plugin_spec())] = cell
        while pending:
            try:
                done, _ = ray.wait(list(pending), num_returns=1)
            except Exception as e:  # the head or its GCS is gone: nothing pending can come back
                raise ExecutorLost(f"the Ray cluster at {self.address or 'the local Ray'} went away "
                                   f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})") from None
            for ref in done:
                cell = pending.pop(ref)
                try:
                    yield cell, ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker itself died
                    yield cell, RuntimeError(f"Ray task failed: {type(e).__name__}: "
                                             f"{(str(e).splitlines() or [''])[0]}")

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
