"""Test-session settings: a results column the schema does not list is an error here (in a
run it is a warning), so a new measurement cannot be dropped or slip in undocumented."""
import os

from harness.store.results import STRICT_ENV

os.environ[STRICT_ENV] = "1"  # inherited by every cell process and CLI subprocess


import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _registries_restored():
    """A plugin a test loads in-process (HGBENCH_PLUGINS) registers into the process-wide
    registries; undo that after the test, and forget the plugin's module so a later test that
    loads it registers it afresh, so that no test sees another's plugins."""
    from estimators import ESTIMATORS
    from workloads import WORKLOADS
    from workloads.backbones import BACKBONES

    registries = (ESTIMATORS, WORKLOADS, BACKBONES)
    saved = [dict(r._items) for r in registries]
    modules = set(sys.modules)
    yield
    if any(r._items != s for r, s in zip(registries, saved)):
        for r, s in zip(registries, saved):
            r._items.clear()
            r._items.update(s)
        for name in set(sys.modules) - modules:
            if name.startswith("tests."):
                del sys.modules[name]
