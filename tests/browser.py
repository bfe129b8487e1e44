"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe):
no web-driver package, no port. Enough to open a page, collect console errors, exceptions
and dialogs, and evaluate JavaScript in it."""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_fd(fd: int) -> int:
    """A copy of fd numbered >= 10, so placing the pipes at 3 and 4 cannot clobber them."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Chromium:
    """`with Chromium(exe) as browser: page = browser.open(url)`."""

    def __init__(self, exe: str, timeout_s: float = 60.0):
        self.exe, self.timeout_s = exe, timeout_s
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> "Chromium":
        to_chrome_r, to_chrome_w = map(_high_fd, os.pipe())
        from_chrome_r, from_chrome_w = map(_high_fd, os.pipe())
        self._profile = tempfile.mkdtemp(prefix="hgbench-chromium-")

        def place_pipes() -> None:  # Chromium reads commands on fd 3 and writes on fd 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen([self.exe, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(3, 4), preexec_fn=place_pipes)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._write, self._read = to_chrome_w, from_chrome_r
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params) -> dict[str, Any]:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The first event `method`; dialogs met on the way are recorded and dismissed (an
        open alert would block the page's loading)."""
        deadline = time.monotonic() + self.timeout_s
        seen = 0
        while True:
            while seen < len(self.events):
                event = self.events[seen]
                seen += 1
                if event.get("method") == "Page.javascriptDialogOpening" and not event.get("handled"):
                    event["handled"] = True
                    self.call("Page.handleJavaScriptDialog", event.get("sessionId"), accept=True)
                elif event.get("method") == method:
                    return event
            self.events.append(self._message(deadline))

    def open(self, url: str, width: int | None = None) -> "Page":
        """`width`: the viewport's CSS width in pixels (a desktop window of that size)."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", session)
        if width:
            self.call("Emulation.setDeviceMetricsOverride", session, width=width, height=900,
                      deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired")
        return Page(self, session)


class Page:
    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def evaluate(self, expression: str) -> Any:
        result = self.browser.call("Runtime.evaluate", self.session, expression=expression,
                                   returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, error log entries and dialogs so far."""
        out = []
        for e in self.browser.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Page.javascriptDialogOpening":
                out.append(f"dialog: {params.get('message')}")
        return out
