"""Where a result came from: versions and the code revision."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import torch

import harness

REPO = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """The commit of this checkout, with `+dirty` when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        sha = git("rev-parse", "HEAD")
        return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, str]:
    return {"hgbench_version": harness.__version__, "torch_version": torch.__version__,
            "git_sha": git_sha()}
