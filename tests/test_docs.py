"""The README and docs/ cannot drift from the code: every command, option, make target,
built-in suite, path, link and column they name exists, and the README stays a short read."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import parser
from harness.core.schema import COLUMNS, FIDELITY_SETTINGS, SETTINGS, SUMMARY_COLUMNS
from harness.plan.suite import builtin_suites

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
CHECKED_ROOTS = ("harness", "estimators", "workloads", "tests", "docs", ".ci")


def _code(text: str) -> list[str]:
    """The text of every fenced block (line by line) and inline code span."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return [line for block in fenced for line in block.splitlines()] + re.findall(r"`([^`\n]+)`", rest)


def _subcommands() -> dict[str, set[str]]:
    action = parser()._subparsers._group_actions[0]
    return {name: set(p._option_string_actions) for name, p in action.choices.items()}


def _slug(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _anchors(path: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+\s+(.*)$", path.read_text(), flags=re.M)}


def test_the_docs_exist_and_the_readme_is_a_five_minute_read():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make bench" in readme and "make test" in readme
    for page in ("suites", "workloads", "estimators", "measurement", "report", "columns", "run-folder",
                 "plugins", "cluster", "layout"):
        assert (REPO / "docs" / "reference" / f"{page}.md").is_file(), page
    results = sorted((REPO / "docs" / "results").glob("2*.md"))
    assert results, "no dated results page"
    for page in results:
        text = page.read_text()
        assert re.match(r"\d{4}-\d{2}-\d{2}-", page.name), page.name
        assert "**Status:**" in text and "**Command" in text and "**Machine:**" in text, page.name
        assert page.name in (REPO / "docs" / "results" / "README.md").read_text(), f"{page.name} not in the index"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_hgbench_command_and_option_named_exists(doc):
    commands = _subcommands()
    for code in _code(doc.read_text()):
        for match in re.finditer(r"(?:^|[\s/])hgbench\s+([a-z][a-z-]*)([^|]*)", code):
            name, rest = match.group(1), match.group(2)
            assert name in commands, f"{doc.name}: `hgbench {name}` is not a command ({code!r})"
            for option in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest.split("hgbench ")[0]):
                assert option in commands[name], f"{doc.name}: `hgbench {name} {option}` is not an option"
            first = rest.split()[0] if name == "run" and rest.split() else ""
            if first and re.fullmatch(r"[a-z][a-z0-9-]*", first):
                assert first in builtin_suites(), f"{doc.name}: `hgbench run {first}`: no such built-in suite"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_make_target_and_path_named_exists(doc):
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    for code in _code(doc.read_text()):
        for target in re.findall(r"(?:^|\s)make ([a-z][a-z-]*)", code):
            assert target in targets, f"{doc.name}: `make {target}` is not a Makefile target"
        token = code.strip()
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)+/?", token) and token.split("/")[0] in CHECKED_ROOTS:
            assert (REPO / token).exists(), f"{doc.name}: `{token}` does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.name}: link to {target} does not resolve"
        if anchor:
            assert anchor in _anchors(dest), f"{doc.name}: no heading #{anchor} in {dest.name}"


def test_the_readme_names_every_built_in_suite_and_every_command():
    readme = (REPO / "README.md").read_text()
    for suite in builtin_suites():
        assert f"`{suite}`" in readme, suite
    for command in _subcommands():
        assert f"`hgbench {command}" in readme, command


def test_the_reference_describes_every_column_and_setting():
    columns = (REPO / "docs" / "reference" / "columns.md").read_text()
    named = set(re.findall(r"`([A-Za-z0-9_*]+)`", columns))
    patterns = [re.compile(n.replace("*", "[A-Za-z0-9_]*") + "$") for n in named if "*" in n]
    from harness.run.predict import PREDICTED_COLUMNS

    for col in [*COLUMNS, *SUMMARY_COLUMNS, *PREDICTED_COLUMNS]:
        assert col in named or any(p.match(col) for p in patterns), f"column {col} is not in columns.md"
    suites = (REPO / "docs" / "reference" / "suites.md").read_text()
    for name in [*SETTINGS, *FIDELITY_SETTINGS]:
        assert re.search(rf"\b{name}\b", suites), f"setting {name} is not in suites.md"


def test_the_readmes_estimator_example_registers_and_lists():
    readme = (REPO / "README.md").read_text()
    example = re.search(r"## Adding an estimator\n\n```python\n(.*?)```", readme, flags=re.S).group(1)
    check = example + "\nassert ESTIMATORS.get('mine').params[0].name == 'steps'\nprint('ok')\n"
    out = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
