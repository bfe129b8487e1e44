"""Declared, typed parameters for estimators and workloads.

Each component declares its parameters once (name, type, default, allowed values, range);
the same declaration validates suites, fills defaults and feeds `hgbench list`, so the
documentation cannot drift from what the code accepts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from harness.core.errors import ConfigError

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
INT_LIMIT = 2 ** 63 - 1  # every integer must fit a 64-bit column (torch, parquet)
SIZE_LIMIT = 2 ** 24     # a count or size (positive integer): far above any real one
STR_LIMIT = 4096         # characters of a text parameter (a path fits; a pasted file does not)


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    doc: str = ""
    choices: Sequence[Any] | None = None
    check: Callable[[Any], bool] | None = None
    check_doc: str = ""  # the condition `check` enforces, for messages ("> 0")
    max: Any = None      # the largest value accepted (integers: at most INT_LIMIT in any case;
                         # text: the most characters, STR_LIMIT unless given)

    def coerce(self, value: Any, where: str) -> Any:
        """Return `value` as this parameter's type, or raise ConfigError naming `where`."""
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            try:
                value = float(value) if ok else value
            except OverflowError:
                ok = False
            if ok and not math.isfinite(value):
                raise ConfigError(f"{where}: {value!r} must be a finite number")
        else:
            ok = isinstance(value, self.type)
        if not ok:
            raise ConfigError(
                f"{where}: expected {_TYPE_NAMES.get(self.type, self.type.__name__)}, got {short_repr(value)}")
        if self.type is str:
            if len(value) > (self.max or STR_LIMIT):
                raise ConfigError(f"{where}: {short_repr(value)} is too long (at most {self.max or STR_LIMIT} characters)")
            limit = None
        else:
            limit = self.max if self.max is not None else (INT_LIMIT if self.type is int else None)
        if limit is not None and value > limit:
            raise ConfigError(f"{where}: {short_repr(value)} is too large (at most {limit})")
        if self.type is int and value < -INT_LIMIT:
            raise ConfigError(f"{where}: {short_repr(value)} is too small (at least {-INT_LIMIT})")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        if self.check is not None and not self.check(value):
            raise ConfigError(f"{where}: {value!r} must be {self.check_doc}")
        return value

    def describe(self) -> str:
        allowed = f" [{'|'.join(map(str, self.choices))}]" if self.choices else ""
        cond = f" ({self.check_doc})" if self.check_doc else ""
        return f"{self.name}={self.default!r}{allowed}{cond}  {self.doc}".rstrip()


def short_repr(value: Any) -> str:
    """repr(value), cut to a readable length: a 400-digit number is named, not printed."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def positive(name: str, type_: type, default: Any, doc: str = "", max: Any = None) -> Param:
    """A positive number; integers are counts or sizes, bounded by SIZE_LIMIT unless `max`."""
    limit = max if max is not None or type_ is not int else SIZE_LIMIT
    return Param(name, type_, default, doc, check=lambda v: v > 0, check_doc="> 0", max=limit)


def at_least(name: str, type_: type, default: Any, doc: str, low: Any, max: Any = None) -> Param:
    """A number that is at least `low` (a count that may be 0, a step that must be 1 or more)."""
    return Param(name, type_, default, doc, check=lambda v: v >= low, check_doc=f">= {low}", max=max)


def check_names(specs: Sequence[Param], given: Mapping[Any, Any], where: str) -> None:
    """Every name in `given` is a declared parameter (checked before values are combined)."""
    for key in given:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: parameter names must be strings, got {short_repr(key)}")
    known = [p.name for p in specs]
    unknown = sorted(set(given) - set(known))
    if unknown:
        name = unknown[0] if len(unknown[0]) <= 40 else f"{unknown[0][:20]}..."
        raise ConfigError(f"{where}.{name}: unknown parameter (known: {', '.join(known) or 'none'})")


def resolve(specs: Sequence[Param], given: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """Defaults overlaid with `given`, each value checked; unknown names are errors."""
    given = dict(given or {})
    check_names(specs, given, where)
    return {p.name: p.coerce(given[p.name], f"{where}.{p.name}") if p.name in given else p.default
            for p in specs}
