"""One cell's result: `CellResult`.

The cell's own process makes it (or, when that process died, the process that watched it);
the run stage stamps when it started and how long it took, and every later stage (the
executor, the sweep, the run folder, the store) passes it on unchanged. Its parts are
kept apart, so no stage has to pick a row apart again: which cell it is, where it ran,
what it measured, how it ended, and its training curve, which goes to curves.csv, not
into the row.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from harness.core.params import INT_LIMIT
from harness.core.schema import (CURVE_POINT_COLUMNS, IDENTITY, KEY, PROVENANCE, SETTING_COLUMN, STATUSES,
                                 row_key)

def storable(column: str, value: Any) -> Any:
    """`value` as a results column stores it (numpy scalars become Python numbers), or
    ValueError naming the column: the tables hold text, booleans, 64-bit integers and
    floats, and nothing else survives both the csv and the parquet file."""
    if hasattr(value, "item") and type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if value is None or isinstance(value, (bool, str, float)):
        if isinstance(value, str) and not _utf8(value):
            raise ValueError(f"column {column}: text that is not valid UTF-8 cannot be stored")
        return value
    if isinstance(value, int):
        if -INT_LIMIT <= value <= INT_LIMIT:
            return value
        raise ValueError(f"column {column}: the integer {str(value)[:30]}... does not fit 64 bits")
    raise ValueError(f"column {column}: a {type(value).__module__}.{type(value).__name__} cannot be stored "
                     "(results columns hold numbers, booleans or text; convert it, e.g. float(x))")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# The columns measurements may not set: those of the other parts, and the store's own.
_NOT_MEASURED = frozenset({*IDENTITY, *SETTING_COLUMN.values(), "status", "error", *PROVENANCE, "wall_s",
                           "shared_machine_cells"})


@dataclass(frozen=True)
class CellResult:
    identity: Mapping[str, Any]                 # the cell's IDENTITY and setting columns
    status: str                                 # one of schema.STATUSES
    error: str = ""                             # empty when ok
    measurements: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)  # schema.PROVENANCE, where it ran
    curve: tuple[Mapping[str, Any], ...] = ()   # schema.CURVE_POINT_COLUMNS per evaluation
    wall_s: float | None = None                 # the whole cell, process start-up included

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        missing = [c for c in IDENTITY if c not in self.identity]
        if missing:
            raise ValueError(f"a result's identity lacks {', '.join(missing)}")
        object.__setattr__(self, "measurements", {k: storable(k, v) for k, v in self.measurements.items()})
        clash = sorted(set(self.measurements) & _NOT_MEASURED)
        if clash:
            raise ValueError(f"measurements may not set {', '.join(clash)} (identity, status or provenance)")
        unknown = sorted(set(self.provenance) - set(PROVENANCE))
        if unknown:
            raise ValueError(f"provenance columns not in schema.PROVENANCE: {', '.join(unknown)}")
        for point in self.curve:
            if set(point) - set(CURVE_POINT_COLUMNS):
                raise ValueError(f"a curve point has columns not in schema.CURVE_POINT_COLUMNS: {sorted(point)}")

    @classmethod
    def failed(cls, identity: Mapping[str, Any], status: str, error: str,
               provenance: Mapping[str, Any] | None = None) -> "CellResult":
        """A cell that measured nothing (its process died, or the executor lost it)."""
        return cls(identity=dict(identity), status=status, error=error, provenance=dict(provenance or {}))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def key(self) -> tuple:
        return row_key(self.identity)

    def stamped(self, provenance: Mapping[str, Any], wall_s: float) -> "CellResult":
        """This result with the facts of the machine and the run that only the process
        that started the cell knows (its start time, its whole wall time). Facts the
        cell's own process recorded win: they were taken where it ran."""
        return replace(self, provenance={**provenance, **self.provenance}, wall_s=wall_s)

    def row(self) -> dict[str, Any]:
        """The results.csv row: identity, status, measurements, provenance, wall time."""
        return {**self.identity, "status": self.status, "error": self.error, **self.measurements,
                **self.provenance, "wall_s": self.wall_s}

    def curve_rows(self) -> list[dict[str, Any]]:
        """The curves.csv rows: the cell key with each point."""
        key = dict(zip(KEY, self.key()))
        return [{**key, **point} for point in self.curve]

