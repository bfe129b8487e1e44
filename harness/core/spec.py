"""A run's settings, resolved once: `RunSpec`.

A suite's top-level settings (`schema.SETTINGS`), its `fidelity:` mapping
(`schema.FIDELITY_SETTINGS`), its seeds and its `memory_frontier` budgets are resolved here
and nowhere else. The plan builds every cell from the spec; the run folder keeps it as
`run.json`; a resume compares the folder's spec with the new one and the report takes its
budgets from it, so no later stage parses a suite's YAML again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from harness.core.errors import ConfigError
from harness.core.params import resolve, short_repr
from harness.core.schema import FIDELITY_SETTINGS, FREE_ON_RESUME, SETTINGS
from harness.core.units import parse_sizes

RECORD_FILE = "run.json"  # the spec as a run folder keeps it
MAX_SEED = 2 ** 31


def seeds_of(raw: Any, where: str = "seeds") -> tuple[int, ...]:
    seeds = raw if isinstance(raw, list) else [raw]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < MAX_SEED for s in seeds):
        raise ConfigError(f"{where}: expected integers in [0, 2**31), got {short_repr(raw)}")
    return tuple(seeds)


def resolve_fidelity(raw: Any, where: str = "suite.fidelity") -> dict[str, Any]:
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{checkpoints: 3, reference_T: 20}}")
    return resolve(list(FIDELITY_SETTINGS.values()), raw, where)


@dataclass(frozen=True)
class RunSpec:
    """Every setting of a run, resolved and checked: what each of its cells measures with."""
    settings: Mapping[str, Any]            # SETTINGS by name, defaults filled in
    fidelity: Mapping[str, Any]            # FIDELITY_SETTINGS by name
    seeds: tuple[int, ...] = (0,)
    memory_frontier: tuple[int, ...] = ()  # bytes, ascending (the report's budgets)
    source: str = "<suite>"                # the suite file (or name) it came from
    overrides: tuple[str, ...] = ()        # the --set arguments applied to it

    @classmethod
    def resolve(cls, raw: Mapping[str, Any], source: str = "<suite>", overrides: tuple[str, ...] = ()) -> "RunSpec":
        """The spec of a suite mapping (its keys already checked by the plan)."""
        settings = resolve(list(SETTINGS.values()), {k: raw[k] for k in SETTINGS if k in raw}, "suite")
        return cls(settings=settings, fidelity=resolve_fidelity(raw.get("fidelity")),
                   seeds=seeds_of(raw.get("seeds", [0])),
                   memory_frontier=tuple(parse_sizes(raw.get("memory_frontier"), "suite.memory_frontier")),
                   source=source, overrides=tuple(overrides))

    @property
    def name(self) -> str:
        return self.settings["name"]

    def record(self) -> str:
        """The spec as JSON (`run.json`)."""
        return json.dumps({"settings": dict(self.settings), "fidelity": dict(self.fidelity),
                           "seeds": list(self.seeds), "memory_frontier": list(self.memory_frontier),
                           "source": self.source, "overrides": list(self.overrides)}, indent=2) + "\n"

    @classmethod
    def from_record(cls, text: str, where: str) -> "RunSpec":
        """A spec read back from `run.json`, every value checked again as at load: a damaged
        or hand-edited record is refused with one line naming `where`."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            overrides = data.get("overrides", [])
            if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                raise ValueError("overrides is not a list of strings")
            raw = {**dict(data["settings"]), "fidelity": data["fidelity"], "seeds": data["seeds"],
                   "memory_frontier": data["memory_frontier"] or None}
            return cls.resolve(raw, str(data.get("source", "<suite>")), tuple(overrides))
        except (ValueError, KeyError, TypeError, RecursionError, ConfigError) as e:
            raise ConfigError(f"{where}: not a readable run record ({e}); move the folder away or "
                              "choose another --out") from None

    def comparable(self) -> dict[str, Any]:
        """What every row was measured with: the settings a resume may not change."""
        return {**{k: v for k, v in self.settings.items() if k not in FREE_ON_RESUME},
                "fidelity": dict(self.fidelity)}

    def difference(self, other: "RunSpec") -> str | None:
        """The first setting (as `suite.KEY was A, is B`) in which `other` differs, if any."""
        return _first_difference(self.comparable(), other.comparable())


def _first_difference(a: Any, b: Any, path: str = "suite") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            d = _first_difference(a.get(key), b.get(key), f"{path}.{key}")
            if d:
                return d
        return None
    return None if a == b else f"{path} was {short_repr(a)}, is {short_repr(b)}"
