"""Each cell in its own fresh process (spawn): its peak memory is its own, and a crash, an
out-of-memory kill or a hang ends only that cell."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from harness.memory import MALLOC_ENV


@contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """Spawned children copy os.environ at start; glibc reads its tunables only then."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _child(fn: Callable[[Any], dict], arg: Any, conn) -> None:
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
    with _environment(MALLOC_ENV):
        proc = ctx.Process(target=_child, args=(fn, arg, send), daemon=True)
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
