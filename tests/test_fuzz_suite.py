"""The suite loader, fuzzed: random YAML text, random structures and valid suites with one
value replaced by junk always end in a Suite or a one-line ConfigError, never another
exception. `HGBENCH_FUZZ_EXAMPLES` sets the examples per property (default 200)."""
from __future__ import annotations

import copy
import os
from collections import Counter

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.core.errors import ConfigError
from harness.plan.suite import TOP_KEYS, build_suite, find_suite, load_suite

EXAMPLES = int(os.environ.get("HGBENCH_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
OUTCOMES: Counter = Counter()  # printed at the end with -s: how many inputs each property took

BASE = yaml.safe_load(find_suite("default").read_text())

scalars = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=4), max_leaves=12)


def _check(call, kind: str) -> None:
    try:
        call()
        OUTCOMES[f"{kind}: suite"] += 1
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message, f"not one line: {message!r}"
        OUTCOMES[f"{kind}: ConfigError"] += 1


def _paths(node, prefix=()):
    """Every path to a value in a nested suite."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(BASE) if p]


def _replace(tree, path, value):
    tree = copy.deepcopy(tree)
    node = tree
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return tree


@FUZZ
@given(text=st.text(max_size=300))
def test_random_yaml_text_is_a_suite_or_one_line_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "s.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    _check(lambda: load_suite(path), "text")


@FUZZ
@given(raw=junk)
def test_random_structures_are_a_suite_or_one_line_error(raw):
    _check(lambda: build_suite(raw), "structure")


@FUZZ
@given(index=st.integers(0, len(PATHS) - 1), value=junk)
def test_a_valid_suite_with_one_value_replaced_is_a_suite_or_an_error_naming_it(index, value):
    path = PATHS[index]
    raw = _replace(BASE, path, value)
    try:
        build_suite(raw)
        OUTCOMES["mutation: suite"] += 1
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message
        named = [str(p) for p in path if isinstance(p, str)]
        # the error names the field it is about (or, for a list entry, its list)
        assert any(n in message for n in named) or "suite" in message, (path, message)
        OUTCOMES["mutation: ConfigError"] += 1


@FUZZ
@given(key=st.text(min_size=1, max_size=12).filter(lambda k: k not in TOP_KEYS))
def test_unknown_top_level_keys_are_rejected(key):
    raw = dict(BASE, **{key: 1})
    try:
        build_suite(raw)
    except ConfigError as e:
        assert "unknown key" in str(e)
        OUTCOMES["unknown key: ConfigError"] += 1
    else:
        raise AssertionError(f"unknown key {key!r} accepted")


def test_yaml_tags_cannot_run_code(tmp_path):
    path = tmp_path / "s.yaml"
    marker = tmp_path / "ran"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n"
                    "workloads: [toy1d]\nestimators: [plain]\n")
    try:
        load_suite(path)
    except ConfigError as e:
        assert "not valid YAML" in str(e)
    else:
        raise AssertionError("a python tag was accepted")
    assert not marker.exists()


def test_report_fuzz_counts():
    """Runs last in this module: prints how many inputs the loader took (pytest -s)."""
    print(f"\nfuzzed suite inputs: {sum(OUTCOMES.values())} ({dict(OUTCOMES)})")
    assert not OUTCOMES or sum(OUTCOMES.values()) >= 3 * EXAMPLES


def test_non_string_parameter_names_are_refused():
    """Found by the fuzzer: a mapping with an integer key crashed the sort of unknown names."""
    import pytest
    with pytest.raises(ConfigError, match="suite.fidelity: parameter names must be strings"):
        build_suite(_replace(BASE, ("fidelity",), {"": None, 0: None}))


def test_non_finite_numbers_and_huge_seeds_are_refused():
    import math

    import pytest
    for path, value, message in ((("timeout_s",), math.inf, "timeout_s: inf must be a finite number"),
                                 (("workloads", 1, "params", "noise_rate"), math.nan, "must be a finite number"),
                                 (("seeds",), [2 ** 40], "seeds: expected integers in [0, 2**31)")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")
                           .replace("[", r"\[")):
            build_suite(_replace(BASE, path, value))
