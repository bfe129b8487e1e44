"""Suites: YAML files that expand into cells (workload x backbone x params x estimator x seed).

Every list under `backbone`, `params` or `seeds` expands into a cartesian product. All
validation happens here, before any cell runs, and every error names the offending field.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from estimators import ESTIMATORS
from harness.core.errors import ConfigError
from harness.core.params import resolve
from harness.core.schema import SETTINGS
from harness.core.units import parse_sizes
from harness.plan.cell import Cell, make_cell
from harness.plan.fidelity import resolve_spec as resolve_fidelity
from workloads import WORKLOADS

TOP_KEYS = {*SETTINGS, "seeds", "workloads", "estimators", "fidelity", "memory_frontier"}


@dataclass(frozen=True)
class Suite:
    source: str
    settings: Mapping[str, Any]
    cells: tuple[Cell, ...]

    @property
    def name(self) -> str:
        return self.settings["name"]


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(f"{where}: keys must be strings, got {k!r}")
    return value


def _product(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product over the values that are lists."""
    keys = list(params)
    choices = [params[k] if isinstance(params[k], list) else [params[k]] for k in keys]
    for k, c in zip(keys, choices):
        if not c:
            raise ConfigError(f"params.{k}: an empty list gives no cells")
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]


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
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _seeds(raw: dict) -> list[int]:
    seeds = raw.get("seeds", [0])
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2 ** 31 for s in seeds):
        raise ConfigError(f"seeds: expected integers in [0, 2**31), got {raw.get('seeds')!r}")
    return seeds


def build_suite(raw: Any, source: str = "<suite>") -> Suite:
    raw = _mapping(raw, "suite")
    _check_keys(raw, TOP_KEYS, "suite")
    settings = resolve(list(SETTINGS.values()), {k: raw[k] for k in SETTINGS if k in raw}, "suite")
    seeds = _seeds(raw)
    fidelity = resolve_fidelity(raw.get("fidelity"))
    parse_sizes(raw.get("memory_frontier"), "suite.memory_frontier")  # read by the report

    workload_variants = []
    for i, e in enumerate(_entries(raw, "workloads")):
        where = f"workloads[{i}]"
        _check_keys(e, {"name", "backbone", "params"}, where)
        workload = WORKLOADS.get(e["name"], f"{where}.name")
        for p in _product(_mapping(e.get("params"), f"{where}.params")):
            params = resolve(workload.params, p, f"{where}.params")
            workload.validate(params, f"{where}.params")
            backbones = e.get("backbone", workload.default_backbone(params))
            for b in backbones if isinstance(backbones, list) else [backbones]:
                if b not in workload.backbones:
                    raise ConfigError(f"{where}.backbone: {b!r} is not a backbone of {workload.name} "
                                      f"(known: {', '.join(workload.backbones)})")
                workload_variants.append((workload.name, b, params))

    estimator_variants = []
    for i, e in enumerate(_entries(raw, "estimators")):
        where = f"estimators[{i}]"
        _check_keys(e, {"name", "params"}, where)
        cls = ESTIMATORS.get(e["name"], f"{where}.name")
        for p in _product(_mapping(e.get("params"), f"{where}.params")):
            estimator_variants.append((cls.name, resolve(cls.params, p, f"{where}.params")))

    cells = tuple(make_cell(w, b, wp, est, ep, s, settings, fidelity)
                  for s in seeds for (w, b, wp) in workload_variants for (est, ep) in estimator_variants)
    return Suite(source=source, settings=settings, cells=cells)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` -> (['a', 'b', '0', 'c'], YAML-parsed value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE (e.g. train_steps=50)")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
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
    raw = _mapping(raw, str(path))
    for field in ("workloads", "estimators"):  # `- plain` is short for `- {name: plain}`
        if isinstance(raw.get(field), list):
            raw[field] = [{"name": e} if isinstance(e, str) else e for e in raw[field]]
    for text in overrides:
        apply_override(raw, *parse_override(text))
    try:
        return build_suite(raw, str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


SUITES_DIR = Path(__file__).resolve().parent / "suites"


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def find_suite(name_or_path: str) -> Path:
    """A path as given, or the name of a built-in suite (`default`)."""
    p = Path(name_or_path)
    if p.exists() or p.suffix:
        return p
    return SUITES_DIR / f"{name_or_path}.yaml"
