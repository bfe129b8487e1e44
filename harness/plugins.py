"""Extra estimators and workloads from your own modules, without editing hgbench.

`HGBENCH_PLUGINS=pkg.mine,other` imports those modules (which register components into
`ESTIMATORS` / `WORKLOADS`) in the CLI and in every cell's process. Plugins come from the
environment, never from a suite file, so a suite cannot make hgbench import code.
"""
from __future__ import annotations

import importlib
import os

from harness.errors import ConfigError

ENV = "HGBENCH_PLUGINS"


def plugin_spec() -> str:
    return os.environ.get(ENV, "")


def load_plugins(spec: str | None = None) -> list[str]:
    """Import the plugin modules named in `spec` (default: the environment's)."""
    spec = plugin_spec() if spec is None else spec
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"{ENV}: cannot import {name!r} ({e}); fix the module path or unset {ENV}") from None
    return names
