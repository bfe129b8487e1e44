"""Test-session settings: a results column the schema does not list is an error here (in a
run it is a warning), so a new measurement cannot be dropped or slip in undocumented."""
import os

from harness.store.results import STRICT_ENV

os.environ[STRICT_ENV] = "1"  # inherited by every cell process and CLI subprocess
