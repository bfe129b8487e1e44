"""Suites: YAML files that expand into cells (workload x backbone x params x estimator x seed).

Every list under `backbone`, `params` or `seeds` expands into a cartesian product. All
validation happens here, before any cell runs, and every error names the offending field.
"""
from __future__ import annotations

import itertools
import math
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from estimators import ESTIMATORS
from harness.core.errors import ConfigError
from harness.core.params import check_names, resolve, short_repr
from harness.core.schema import FREE_ON_RESUME, SETTING_COLUMN, SETTINGS, row_key, setting_value
from harness.core.spec import RunSpec, seeds_of
from harness.plan.cell import Cell, make_cell
from workloads import WORKLOADS

TOP_KEYS = {*SETTINGS, "seeds", "workloads", "estimators", "fidelity", "memory_frontier"}
# A workload entry may narrow the run to some of the suite's estimators, its own seeds, and
# its own values of the settings below (e.g. long meta-training for the accuracy-bearing
# cells, train_steps 0 for cost-only ones, a memory budget for one cell).
WORKLOAD_KEYS = {"name", "backbone", "params", "estimators", "seeds", "settings"}
ENTRY_SETTINGS = tuple(k for k in SETTINGS if k not in ("name", "device"))
MAX_CELLS = 10_000  # a suite expanding to more is refused before any cell is built
MAX_DEPTH = 32      # levels of nesting in a suite (a real one uses four)


@dataclass(frozen=True)
class Suite:
    spec: RunSpec                 # every setting, resolved once
    cells: tuple[Cell, ...]
    raw: Mapping[str, Any] = field(default_factory=dict)  # the effective suite (after --set)
    text: str = ""                                          # the suite file as written

    @property
    def name(self) -> str:
        return self.spec.name

    def record(self) -> str:
        """What a run folder keeps as suite.yaml: the file itself, or, with --set, the
        effective suite (comments are lost, so the file and the overrides head it)."""
        if not self.spec.overrides:
            return self.text
        head = [f"# The effective suite: {self.spec.source} with", *(f"#   --set {o}" for o in self.spec.overrides)]
        return "\n".join(head) + "\n" + yaml.safe_dump(dict(self.raw), sort_keys=False)

    def check_resumes(self, recorded: RunSpec | None, where: str) -> None:
        """A resume must run with the settings the folder's rows were measured with (the
        suite settings and fidelity: not part of a cell's key, so a change would mix two
        settings in one table). Adding cells (estimators, workloads, seeds) is a resume."""
        difference = recorded.difference(self.spec) if recorded is not None else None
        if difference:
            raise ConfigError(f"--resume: this suite's settings differ from the run's ({where}): {difference}; "
                              "resume with the same settings (file and --set), or choose another --out")


    def check_rows(self, rows: list[Mapping[str, Any]], where: str) -> None:
        """A resume must not give a cell other settings than its row was measured with (a
        workload entry's own `settings:`, which run.json does not hold)."""
        by_key = {row_key(r): r for r in rows}
        for cell in self.cells:
            row = by_key.get(cell.key())
            if row is None:
                continue
            for name in ENTRY_SETTINGS:
                col = SETTING_COLUMN[name]
                if name in FREE_ON_RESUME or col not in row:
                    continue
                have, want = _comparable(row[col]), _comparable(setting_value(name, getattr(cell, col)))
                if have != want:
                    show = lambda v: int(v) if isinstance(v, float) and v.is_integer() else v
                    raise ConfigError(f"--resume: cell {cell.label()} has {col}={show(want)} in this suite but its "
                                      f"row in {where} was measured with {col}={show(have)}; resume with the same "
                                      "suite, or choose another --out")


def _comparable(value: Any) -> Any:
    """A setting as a row read back from CSV holds it: empty is None, numbers as floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _normalized(raw: Any) -> Any:
    """`- plain` is short for `- {name: plain}` in the workloads and estimators lists."""
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    for key in ("workloads", "estimators"):
        if isinstance(raw.get(key), list):
            raw[key] = [{"name": e} if isinstance(e, str) else e for e in raw[key]]
    return raw


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {short_repr(value)}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(f"{where}: keys must be strings, got {k!r}")
    return value


def _choices(params: Mapping[str, Any], where: str) -> list[list[Any]]:
    """The values each parameter takes (a list expands into a cartesian product)."""
    choices = [v if isinstance(v, list) else [v] for v in params.values()]
    for k, c in zip(params, choices):
        if not c:
            raise ConfigError(f"{where}.{k}: an empty list gives no cells")
    return choices


def _count(params: Mapping[str, Any], where: str) -> int:
    return math.prod(len(c) for c in _choices(params, where))


def _product(params: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """Cartesian product over the values that are lists."""
    return [dict(zip(params, combo)) for combo in itertools.product(*_choices(params, where))]


def check_depth(node: Any, where: str = "suite") -> None:
    """Refuse nesting deeper than MAX_DEPTH (walked without recursion)."""
    stack = [(node, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep; a suite needs four")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _entries(raw: dict, field: str) -> list[dict]:
    entries = raw.get(field)
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{field}: expected a non-empty list of entries with a `name`")
    out = []
    for i, e in enumerate(entries):
        where = f"{field}[{i}]"
        if isinstance(e, str):
            e = {"name": e}
        e = _mapping(e, where)
        if not isinstance(e.get("name"), str):
            raise ConfigError(f"{where}.name: missing or not a string")
        out.append(e)
    return out


def _check_keys(entry: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed, key=str)
    if unknown:
        name = str(unknown[0]) if len(str(unknown[0])) <= 40 else f"{str(unknown[0])[:20]}..."
        raise ConfigError(f"{where}.{name}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _entry_estimators(e: Mapping, names: list[str], where: str) -> list[tuple[str, dict[str, str]]]:
    """What a workload entry keeps of the suite's estimators: `estimators: [plain, evograd]`
    keeps every variant of those names, `unroll:T=5,backend=func` only the variants with those
    values (compared as text); every one of the suite's when the entry names none."""
    chosen = e.get("estimators")
    if chosen is None:
        return [(n, {}) for n in dict.fromkeys(names)]
    if not isinstance(chosen, list) or not chosen or not all(isinstance(n, str) for n in chosen):
        raise ConfigError(f"{where}.estimators: expected a non-empty list of estimator names from the "
                          f"suite's estimators ({', '.join(dict.fromkeys(names))}), or NAME:key=value,...")
    out = []
    for text in chosen:
        name, _, rest = text.partition(":")
        pairs = [p.partition("=") for p in rest.split(",") if p.strip()]
        if name not in names or any(not sep or not k.strip() for k, sep, _ in pairs):
            raise ConfigError(f"{where}.estimators: {text!r} is not among the suite's estimators "
                              f"({', '.join(dict.fromkeys(names))}); list it under `estimators:` first, "
                              "or write NAME:key=value,...")
        out.append((name, {k.strip(): v.strip() for k, _, v in pairs}))
    return out


def _keeps(kept: list[tuple[str, dict[str, str]]], name: str, params: Mapping[str, Any]) -> bool:
    return any(name == n and all(str(params.get(k)) == v for k, v in want.items()) for n, want in kept)


def _entry_settings(e: Mapping, spec: RunSpec, where: str) -> dict[str, Any]:
    """The suite's settings with the entry's own `settings:` in their place, checked as the
    suite's are."""
    own = _mapping(e.get("settings"), f"{where}.settings")
    for k in own:
        if k not in ENTRY_SETTINGS:
            raise ConfigError(f"{where}.settings.{str(k)[:40]}: not a setting a workload entry may set "
                              f"(allowed: {', '.join(ENTRY_SETTINGS)})")
    values = resolve([SETTINGS[k] for k in own], own, f"{where}.settings")
    return {**spec.settings, **values}


def _check_size(raw: dict, seeds: tuple[int, ...]) -> None:
    """Count the cells before building any: names checked, then the product's size."""
    estimators: dict[str, int] = {}
    for i, e in enumerate(_entries(raw, "estimators")):
        where = f"estimators[{i}]"
        _check_keys(e, {"name", "params"}, where)
        params = _mapping(e.get("params"), f"{where}.params")
        check_names(ESTIMATORS.get(e["name"], f"{where}.name").params, params, f"{where}.params")
        estimators[e["name"]] = estimators.get(e["name"], 0) + _count(params, f"{where}.params")
    total = 0
    for i, e in enumerate(_entries(raw, "workloads")):
        where = f"workloads[{i}]"
        _check_keys(e, WORKLOAD_KEYS, where)
        params = _mapping(e.get("params"), f"{where}.params")
        check_names(WORKLOADS.get(e["name"], f"{where}.name").params, params, f"{where}.params")
        backbones = e.get("backbone")
        if isinstance(backbones, list) and not backbones:
            raise ConfigError(f"{where}.backbone: an empty list gives no cells")
        kept = {n for n, _ in _entry_estimators(e, list(estimators), where)}
        entry_seeds = seeds_of(e["seeds"], f"{where}.seeds") if "seeds" in e else seeds
        total += (_count(params, f"{where}.params") * (len(backbones) if isinstance(backbones, list) else 1)
                  * len(entry_seeds) * sum(n for name, n in estimators.items() if name in kept))
    if total > MAX_CELLS:
        raise ConfigError(f"suite: expands to {total:,} cells, more than the limit of {MAX_CELLS:,}; "
                          "split it into several suites")


def _check_unique(cells: tuple[Cell, ...]) -> None:
    seen = set()
    for cell in cells:
        if cell.key() in seen:
            raise ConfigError(f"suite: cell {cell.label()} is listed twice (a repeated seed, workload, "
                              "backbone, estimator or parameter value); remove the repeat")
        seen.add(cell.key())


def build_suite(raw: Any, source: str = "<suite>", overrides: tuple[str, ...] = ()) -> Suite:
    check_depth(raw)
    raw = _mapping(raw, "suite")
    _check_keys(raw, TOP_KEYS, "suite")
    spec = RunSpec.resolve(raw, source, overrides)
    _check_size(raw, spec.seeds)

    estimator_variants = []
    for i, e in enumerate(_entries(raw, "estimators")):
        where = f"estimators[{i}]"
        _check_keys(e, {"name", "params"}, where)
        cls = ESTIMATORS.get(e["name"], f"{where}.name")
        for p in _product(_mapping(e.get("params"), f"{where}.params"), f"{where}.params"):
            estimator_variants.append((cls.name, resolve(cls.params, p, f"{where}.params")))
    names = [name for name, _ in estimator_variants]

    cells = []
    for i, e in enumerate(_entries(raw, "workloads")):
        where = f"workloads[{i}]"
        _check_keys(e, WORKLOAD_KEYS, where)
        workload = WORKLOADS.get(e["name"], f"{where}.name")
        kept = _entry_estimators(e, names, where)
        seeds = seeds_of(e["seeds"], f"{where}.seeds") if "seeds" in e else spec.seeds
        settings = _entry_settings(e, spec, where)
        workload_variants = []
        for p in _product(_mapping(e.get("params"), f"{where}.params"), f"{where}.params"):
            params = resolve(workload.params, p, f"{where}.params")
            workload.validate(params, f"{where}.params")
            backbones = e.get("backbone", workload.default_backbone(params))
            for b in backbones if isinstance(backbones, list) else [backbones]:
                if b not in workload.backbones:
                    raise ConfigError(f"{where}.backbone: {b!r} is not a backbone of {workload.name} "
                                      f"(known: {', '.join(workload.backbones)})")
                workload.validate_backbone(params, b, f"{where}.params")
                workload_variants.append((workload.name, b, params))
        for n, want in kept:
            if not any(_keeps([(n, want)], est, ep) for est, ep in estimator_variants):
                raise ConfigError(f"{where}.estimators: no variant of {n!r} in the suite's estimators has "
                                  + ", ".join(f"{k}={v}" for k, v in want.items()))
        cells += [make_cell(w, b, wp, est, ep, s, spec, settings)
                  for s in seeds for (w, b, wp) in workload_variants for (est, ep) in estimator_variants
                  if _keeps(kept, est, ep)]
    cells = tuple(sorted(cells, key=lambda c: spec.seeds.index(c.seed) if c.seed in spec.seeds else len(spec.seeds)))
    _check_unique(cells)
    return Suite(spec=spec, cells=cells, raw=raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` -> (['a', 'b', '0', 'c'], YAML-parsed value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE (e.g. train_steps=50)")
    try:
        parsed = yaml.safe_load(value)
    except (yaml.YAMLError, RecursionError):
        parsed = value
    return key.strip().split("."), parsed


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    node: Any = raw
    for i, part in enumerate(path):
        last = i == len(path) - 1
        where = ".".join(path[:i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {'.'.join(path)}: {where} is not an index of the list")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:i])} is not a mapping")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and part not in node:
                node[part] = {}
            node = node[part]


def load_suite(path: str | Path, overrides: list[str] = ()) -> Suite:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found (built-in suites: {', '.join(builtin_suites())})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply for YAML's reader (a suite needs four levels)") from None
    raw = _normalized(_mapping(raw, str(path)))
    for override in overrides:
        apply_override(raw, *parse_override(override))
    try:
        suite = build_suite(raw, str(path), tuple(overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return dataclasses.replace(suite, text=path.read_text())


SUITES_DIR = Path(__file__).resolve().parent / "suites"


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def find_suite(name_or_path: str) -> Path:
    """A path as given, or the name of a built-in suite (`default`)."""
    p = Path(name_or_path)
    if p.exists() or p.suffix:
        return p
    return SUITES_DIR / f"{name_or_path}.yaml"
