"""docs/SPEC.md and its tests: the copy says what the reference says, every MUST has a
stable ID, every ID is proven by a test marked ``@pytest.mark.spec("ID")``, and every
marker names an ID that exists; and every test docs/faults.md (the fault table) names exists.

The IDs and markers are read by docs/_ext/spec_ids.py (shared with the docs' MUST -> tests
table): from the Markdown, and from the test modules' source with :mod:`ast`, so nothing
here imports or runs the suite. How to add a rule and its test: CONTRIBUTING.md.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "docs" / "_ext"))
import spec_ids  # noqa: E402 - the docs' own module, from docs/_ext


@pytest.fixture(scope="module")
def copy() -> str:
    return spec_ids.SPEC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def rules(copy: str) -> list[spec_ids.Rule]:
    return spec_ids.rules(copy)


@pytest.fixture(scope="module")
def markers() -> tuple[list[spec_ids.Marker], list[str]]:
    return spec_ids.markers()


def test_copy_equals_the_reference_once_the_ids_are_stripped(copy: str) -> None:
    if not spec_ids.REFERENCE.exists():
        pytest.skip(
            f"no reference at {spec_ids.REFERENCE}: the team's shared/ directory lies beside "
            "the repository in its workplace only; a clone made elsewhere has none"
        )
    reference = spec_ids.REFERENCE.read_text(encoding="utf-8")
    stripped = spec_ids.strip(copy)
    if stripped != reference:
        diff = "".join(
            difflib.unified_diff(
                reference.splitlines(keepends=True),
                stripped.splitlines(keepends=True),
                "shared/SPEC.md",
                "docs/SPEC.md without its note and IDs",
            )
        )
        pytest.fail(f"docs/SPEC.md no longer follows the reference:\n{diff[:6000]}")


def test_copy_starts_with_the_note_on_where_it_comes_from(copy: str) -> None:
    note = copy.split("<!-- /spec-copy-note -->", 1)[0]
    assert "<!-- spec-copy-note -->" in note, "the note after the title is missing"
    assert "shared/SPEC.md" in note and "tests/test_spec.py" in note


def test_every_must_carries_an_id(copy: str) -> None:
    untagged = spec_ids.untagged_keywords(copy)
    assert not untagged, "MUST or MUST NOT without an ID after it:\n" + "\n".join(
        f"  docs/SPEC.md:{line}: {text}" for line, text in untagged
    )


def test_ids_are_well_formed_and_unique(rules: list[spec_ids.Rule]) -> None:
    ids = [r.id for r in rules]
    assert ids, "no IDs found in docs/SPEC.md"
    twice = sorted({i for i in ids if ids.count(i) > 1})
    assert not twice, f"IDs used twice: {twice}"
    bad = [i for i in ids if not re.fullmatch(spec_ids.ID_PATTERN, i)]
    assert not bad, f"malformed IDs: {bad}"


def test_one_rule_per_keyword(copy: str, rules: list[spec_ids.Rule]) -> None:
    """Two MUSTs in one sentence are two rules, with an ID each."""
    body = spec_ids.strip(copy)
    keywords = len(re.findall(r"\bMUST(?: NOT)?\b", body))
    exempt = sum(body.count(phrase) for phrase in spec_ids.NOT_RULES)
    assert len(rules) == keywords - exempt


def test_every_must_has_a_test(
    rules: list[spec_ids.Rule], markers: tuple[list[spec_ids.Marker], list[str]]
) -> None:
    proven = {m.id for m in markers[0]}
    missing = [r for r in rules if r.id not in proven]
    assert not missing, "MUSTs that no test names (mark one with @pytest.mark.spec):\n" + "\n".join(
        f"  [{r.id}] docs/SPEC.md:{r.line} ({r.section}): {r.sentence}" for r in missing
    )


def test_every_marker_names_a_known_id(
    rules: list[spec_ids.Rule], markers: tuple[list[spec_ids.Marker], list[str]]
) -> None:
    known = {r.id for r in rules}
    found, problems = markers
    unknown = [m for m in found if m.id not in known]
    assert not problems, "\n".join(problems)
    assert not unknown, "markers naming no rule of docs/SPEC.md:\n" + "\n".join(
        f"  {m.path}:{m.line} {m.test}: {m.id}" for m in unknown
    )


def test_marker_is_registered() -> None:
    """pytest knows the ``spec`` marker (no unknown-mark warning on every marked test)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    declared = config["tool"]["pytest"]["ini_options"].get("markers", [])
    assert any(m.split(":")[0].split("(")[0].strip() == "spec" for m in declared), declared


def test_reader_of_markers_finds_every_form(tmp_path: Path) -> None:
    """The parser the checks rely on: decorators, classes, pytestmark, pytest.param marks,
    several IDs per marker; and it reports what it cannot read."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_x.py").write_text(
        "import pytest\n"
        "pytestmark = pytest.mark.spec('MOD-WIDE')\n"
        "@pytest.mark.spec('A-ONE', 'A-TWO')\n"
        "def test_a(): pass\n"
        "class TestB:\n"
        "    @pytest.mark.spec('B-ONE')\n"
        "    async def test_b(self): pass\n"
        "@pytest.mark.parametrize('x', [pytest.param(1, marks=pytest.mark.spec('P-ONE'))])\n"
        "def test_p(x): pass\n"
        "ID = 'X-Y'\n"
        "@pytest.mark.spec(ID)\n"
        "def test_bad(): pass\n"
        "@pytest.mark.spec('lower-case')\n"
        "def test_bad2(): pass\n",
        encoding="utf-8",
    )
    found, problems = spec_ids.markers(tests, tmp_path)
    assert sorted((m.id, m.test) for m in found) == [
        ("A-ONE", "test_a"),
        ("A-TWO", "test_a"),
        ("B-ONE", "TestB::test_b"),
        ("MOD-WIDE", "<module>"),
        ("P-ONE", "test_p"),
    ]
    assert len(problems) == 2 and "string literals" in problems[0] and "lower-case" in problems[1]


# ------------------------------------------------------------------ the fault table


def _fault_table_references() -> list[str]:
    """The backticked references of docs/faults.md's "proved by" column."""
    refs = []
    for line in (REPO / "docs" / "faults.md").read_text(encoding="utf-8").splitlines():
        cells = line.split(" | ")
        if line.startswith("| ") and len(cells) >= 3 and "proved by" not in line:
            refs += re.findall(r"`([^`]+)`", cells[-1])
    return refs


def _test_names(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def test_every_test_the_fault_table_names_exists() -> None:
    """A row of docs/faults.md names tests/reliability/FILE, FILE::test_name (``*`` for a
    family), a path from the repository's root, or, after a FILE, ``…::test_name`` or
    ``…_suffix`` for another test of that file."""
    refs = _fault_table_references()
    assert len(refs) > 20, "the table's last column is no longer found"
    base = REPO / "tests" / "reliability"
    current: Path | None = None
    missing = []
    for ref in refs:
        if ref.startswith("tests/"):
            if not (REPO / ref).exists():
                missing.append(ref)
            continue
        if ref.startswith("…"):
            assert current is not None, ref
            names = _test_names(current)
            tail = ref[1:]
            found = (
                tail[2:] in names if tail.startswith("::") else any(n.endswith(tail) for n in names)
            )
            if not found:
                missing.append(f"{current.name}: {ref}")
            continue
        file, _, name = ref.partition("::")
        current = base / file
        if not current.is_file():
            missing.append(ref)
        elif name and not fnmatch.filter(_test_names(current), name):
            missing.append(ref)
    assert not missing, f"docs/faults.md names tests that do not exist: {missing}"
