"""Where a result came from: code revision, versions, machine and numerics settings."""
from __future__ import annotations

import functools
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import harness

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str, bool | None]:
    """(commit, dirty) of this checkout; ("unknown", None) outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_provenance() -> dict[str, Any]:
    """Facts of the machine and checkout a cell runs on: taken on that machine (a Ray
    worker's own CPU, host and code), never the driver's."""
    sha, dirty = git_state()
    return {"hgbench_version": harness.__version__, "git_sha": sha, "git_dirty": dirty,
            "torch_version": torch.__version__, "cuda_version": torch.version.cuda or "",
            "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cpu_model": cpu_model(), "hostname": socket.gethostname()}


def process_provenance(device: torch.device) -> dict[str, Any]:
    """Facts of the process that ran the cell: device, threads, numerics flags."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"device_type": device.type, "device_name": name, "num_threads": torch.get_num_threads(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "deterministic": torch.are_deterministic_algorithms_enabled()}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
