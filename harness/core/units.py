"""Memory sizes as people write them (`512MB`, `1.5GB`, `8GiB`) and as tables print them.

Suites (`memory_frontier`) and the report (`--budget`) read sizes; the report prints them.
Sizes are bounded so that a typo of a few hundred digits is an error, not an overflow.
"""
from __future__ import annotations

import math
import re
from typing import Any

from harness.core.errors import ConfigError

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
MAX_SIZE = 2 ** 62  # about 4.6 EB: far above any machine, within a 64-bit integer column


def parse_size(value: Any, where: str) -> int:
    """Bytes from an integer or a string such as `512MB`, `1.5GB` or `8GiB`."""
    size = None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        size = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]{1,30}\.?[0-9]{0,30})\s*([kmgt]i?b|b)?\s*", value.lower())
        if m and m.group(1) != "." and float(m.group(1)) > 0:
            size = int(float(m.group(1)) * _UNITS[m.group(2) or ""])
    if size is None:
        raise ConfigError(f"{where}: {value!r} is not a memory size (bytes, or e.g. 512MB, 1.5GB, 8GiB)")
    if size > MAX_SIZE:
        raise ConfigError(f"{where}: {value!r} is larger than any machine (at most {MAX_SIZE} bytes, 4 EiB)")
    return size


def parse_sizes(values: Any, where: str) -> list[int]:
    if values is None:
        return []
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: expected a list of memory sizes, e.g. [1GB, 4GB]")
    return sorted({parse_size(v, f"{where}[{i}]") for i, v in enumerate(values)})


def ratio(num: Any, den: Any) -> float | None:
    """num / den, or None where it means nothing: a missing or non-finite operand, or a zero
    denominator (a plain step of 0 bytes makes no multiple)."""
    try:
        num, den = float(num), float(den)
    except (TypeError, ValueError):
        return None
    return num / den if den and math.isfinite(num) and math.isfinite(den) else None


def format_size(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"
