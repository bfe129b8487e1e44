"""Extra estimators and workloads from your own modules, without editing hgbench.

Two ways, both loaded in the CLI and in every cell's process:
- an installed package that declares an entry point in the `hgbench.plugins` group (as
  pytest and benchopt plugins do): `[project.entry-points."hgbench.plugins"] mine = "pkg.mine"`;
- `HGBENCH_PLUGINS=pkg.mine,other`, for a module that is not installed.
Each plugin module registers components into `ESTIMATORS` / `WORKLOADS` when imported.
Plugins come from the environment, never from a suite file, so a suite cannot make hgbench
import code.
"""
from __future__ import annotations

import importlib
import os
import re
from importlib import metadata

from harness.core.errors import ConfigError

ENV = "HGBENCH_PLUGINS"
GROUP = "hgbench.plugins"


def plugin_spec() -> str:
    return os.environ.get(ENV, "")


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=GROUP), key=lambda ep: ep.name)


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _failure(e: BaseException) -> str:
    """What a plugin's import did instead of loading, in a few words."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r}) while being imported"
    if isinstance(e, KeyboardInterrupt):
        raise e
    where = f" at line {e.lineno}" if isinstance(e, SyntaxError) and e.lineno else ""
    return f"{type(e).__name__}{where}: {' '.join(str(e).split())[:200]}"


def load_plugins(spec: str | None = None) -> list[str]:
    """Import every installed `hgbench.plugins` entry point, then the modules named in `spec`
    (default: the environment's); the names loaded, in order. Whatever a plugin does on
    import (raises anything, calls sys.exit, registers a name that is taken) is one
    ConfigError naming it: hgbench never goes on, or exits 0, with a plugin half loaded."""
    loaded = []
    for ep in _entry_points():
        try:
            ep.load()
        except BaseException as e:  # a broken installed plugin: say which, and how to get past it
            raise ConfigError(f"{GROUP} entry point {ep.name!r} ({ep.value}) failed to load "
                              f"({_failure(e)}); fix or uninstall its package") from None
        loaded.append(ep.value)
    spec = plugin_spec() if spec is None else spec
    for name in (n.strip() for n in spec.split(",")):
        if not name or name in loaded:
            continue
        if not _DOTTED.fullmatch(name):
            raise ConfigError(f"{ENV}: {name[:80]!r} is not a module name (dotted identifiers such as "
                              f"mypkg.estimators); fix {ENV} or unset it")
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"{ENV}: cannot import {name!r} ({e}); fix the module path or unset {ENV}") from None
        except BaseException as e:
            raise ConfigError(f"{ENV}: plugin {name!r} failed to load ({_failure(e)}); fix it or unset {ENV}") from None
        loaded.append(name)
    return loaded
