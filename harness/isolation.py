"""Each cell in its own fresh process (spawn): its peak memory is its own, and a crash, an
out-of-memory kill or a hang ends only that cell."""
from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing as mp
import os
import signal
from typing import Any, Callable

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """A cell must not outlive the driver (killed, even with -9): Linux's parent-death
    signal ends it; elsewhere the pipe's closing ends it at its next send."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _child(fn: Callable[[Any], dict], arg: Any, conn, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    from harness.plugins import load_plugins

    load_plugins()
    conn.send(fn(arg))
    conn.close()


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_isolated(fn: Callable[[Any], dict], arg: Any, timeout_s: float) -> dict[str, Any]:
    """fn(arg) in a spawned process; its dict, or a `timeout` / `error` result of our own.

    `fn` must be importable (spawn pickles it by reference) and catch its own exceptions.
    """
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, arg, send, os.getpid()), daemon=True)
    proc.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            proc.kill()
            proc.join()
            return {"status": "timeout", "error": f"cell did not finish within timeout_s={timeout_s:g}"}
        try:
            result = receive.recv()
        except EOFError:  # the child died before sending anything
            result = None
        proc.join()
    finally:
        receive.close()
        if proc.is_alive():
            proc.kill()
            proc.join()
    if result is not None:
        return result
    code = proc.exitcode
    how = f"killed by {_signal_name(code)}" if code is not None and code < 0 else f"exited with code {code}"
    return {"status": "error", "error": f"cell process {how} before reporting a result"}
