"""Each cell in its own fresh process: its peak memory is its own, and a crash, an
out-of-memory kill or a hang ends only that cell.

Cells are forked from a forkserver that has imported torch and hgbench and run nothing
else, so each cell starts clean without paying ~3 s of imports (16 cells of `make bench`:
about 45 s). The server is started before any cell runs and holds no tensors or threads.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import select
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable


# Imported once in the forkserver; every cell forks with these already loaded.
PRELOAD = ["harness.run.cell_process"]
# After its result arrives, how long the child may take to exit before it is killed (a
# thread it left running must not hold the sweep).
EXIT_GRACE_S = 10.0


@dataclass(frozen=True)
class Lost:
    """What became of a process that returned no result."""
    status: str   # `timeout` or `error` (schema.STATUSES)
    error: str


def _die_with_driver(driver_pid: int) -> None:
    """A cell must not outlive the driver (killed, even with -9). Its parent is the
    forkserver, which itself lives as long as any cell holds its "alive" pipe, so the cell
    watches the driver: a thread blocked on the driver's pidfd (no cost while it waits)
    kills the cell the moment the driver is gone; without pidfds it polls once a second."""
    def watch() -> None:
        try:
            fd = os.pidfd_open(driver_pid)
            select.select([fd], [], [])
        except (AttributeError, OSError):
            while _alive(driver_pid):
                time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    if not _alive(driver_pid):
        os._exit(1)
    threading.Thread(target=watch, name="hgbench-driver-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _child(fn: Callable[[Any], Any], arg: Any, conn, plugins: str, driver_pid: int) -> None:
    _die_with_driver(driver_pid)
    from harness.core.plugins import load_plugins

    load_plugins(plugins)  # the driver's, not the forkserver's environment at its start
    conn.send(fn(arg))
    conn.close()


def _context(preload: tuple[str, ...] = ()):
    """The forkserver context. `preload`: modules the run's workloads import (`Workload.preload`,
    e.g. scikit-learn's datasets, 1.7 s; transformers' XLM-R, 3 s), imported once in the
    server instead of once per cell. They count only before the server starts, so the sweep
    passes the union over all its cells with the first."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(dict.fromkeys([*PRELOAD, *preload])))
    return ctx


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_isolated(fn: Callable[[Any], Any], arg: Any, timeout_s: float, preload: tuple[str, ...] = (),
                 what: str = "cell") -> Any:
    """fn(arg) in a fresh process: what it returned, or `Lost` saying what became of the
    process (`what` names it in the message: a cell, a check).

    `fn` must be importable (it is pickled by reference) and catch its own exceptions.
    """
    from harness.core.plugins import plugin_spec

    ctx = _context(preload)
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, arg, send, plugin_spec(), os.getpid()), daemon=True)
    proc.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            proc.kill()
            return Lost("timeout", f"{what} did not finish within timeout_s={timeout_s:g}")
        try:
            return receive.recv()
        except EOFError:  # the child died before sending anything
            pass
    finally:
        receive.close()
        proc.join(EXIT_GRACE_S)  # (a process that sent its result but left a thread running is killed)
        if proc.is_alive():
            proc.kill()
            proc.join()
    code = proc.exitcode
    how = f"killed by {_signal_name(code)}" if code is not None and code < 0 else f"exited with code {code}"
    return Lost("error", f"{what} process {how} before reporting a result")
