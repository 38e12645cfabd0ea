"""The MUST rules of docs/SPEC.md by ID, and the tests that name them.

docs/SPEC.md is a copy of the team's reference ``shared/SPEC.md`` with two additions: a
note after the title (between ``<!-- spec-copy-note -->`` and ``<!-- /spec-copy-note -->``)
and, right after each ``MUST`` or ``MUST NOT``, the rule's ID in bold brackets::

    It MUST **[CLIENT-CONNECT-50MS]** connect within 50 ms ..., and MUST NOT
    **[CLIENT-NO-BUSY-WAIT]** busy-wait

An ID is a mnemonic, ``AREA-WHAT`` in capitals and digits (``[A-Z][A-Z0-9]*(-[A-Z0-9]+)+``),
never a section number, so that moving or renumbering the text keeps every ID. A test
proves a rule by carrying ``@pytest.mark.spec("ID", ...)``.

Used by tests/test_spec.py (the copy equals the reference, every rule has a test, every
marker names a rule) and by the docs' ``spec-tests`` directive (the MUST -> tests table).
Standard library only: the tests import it without Sphinx, and the markers are read from
the test modules' source with :mod:`ast`, without importing them.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

#: The repository (this file is docs/_ext/spec_ids.py).
REPO = Path(__file__).resolve().parent.parent.parent
SPEC = REPO / "docs" / "SPEC.md"
#: The team's reference, beside the repository (absent from a clone made elsewhere).
REFERENCE = REPO.parent / "shared" / "SPEC.md"
TESTS = REPO / "tests"

ID_PATTERN = r"[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+"
_ID = re.compile(rf"^{ID_PATTERN}$")
#: An ID as written in the copy, with the space before it (what :func:`strip` removes).
_TAG = re.compile(rf" \*\*\[({ID_PATTERN})\]\*\*")
_NOTE = re.compile(r"<!-- spec-copy-note -->\n.*?<!-- /spec-copy-note -->\n\n", re.S)
_KEYWORD = re.compile(r"\bMUST(?: NOT)?\b")
#: Occurrences of the keyword that talk about rules instead of making one.
NOT_RULES = ("Where it says MUST",)
_SECTION = re.compile(r"^## (.+)$")
_SENTENCE_END = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<=[.!?])\s+")
#: A sentence longer than this is cut to the clause (between semicolons) of its rule.
LONG_SENTENCE = 300


@dataclass(frozen=True)
class Rule:
    """One MUST (or MUST NOT) of the SPEC."""

    id: str
    #: The heading of its section, e.g. ``2. Life cycle``.
    section: str
    #: The sentence that states it (Markdown, the IDs removed); of a long sentence, the
    #: clause, with an ellipsis where the rest was left out.
    sentence: str
    #: Its line in docs/SPEC.md (1-based).
    line: int


@dataclass(frozen=True)
class Marker:
    """One ID named by a ``pytest.mark.spec(...)`` in a test module."""

    id: str
    #: The module, relative to the repository (``tests/conformance/test_notify.py``).
    path: str
    #: The test (``test_x``, ``TestCase::test_x``), or ``<module>`` for a ``pytestmark``.
    test: str
    line: int

    @property
    def node(self) -> str:
        """The test as pytest names it, without parameters: ``path::test``."""
        return f"{self.path}::{self.test}"


def strip(text: str) -> str:
    """The copy's text without its note and IDs: what the reference says."""
    return _TAG.sub("", _NOTE.sub("", text, count=1))


def _body(text: str) -> str:
    """The copy without its note (the IDs kept), line numbers shifted by blank lines so
    that they stay those of the file."""
    m = _NOTE.search(text)
    if m is None:
        return text
    return text[: m.start()] + "\n" * m.group(0).count("\n") + text[m.end() :]


def _blocks(lines: list[str]) -> list[tuple[int, str, str]]:
    """``(first line, section, text)`` of each paragraph or list item, lines joined."""
    out: list[tuple[int, str, str]] = []
    section = ""
    start = 0
    current: list[str] = []

    def flush() -> None:
        if current:
            out.append((start, section, " ".join(s.strip() for s in current)))
            current.clear()

    for i, line in enumerate(lines, 1):
        heading = _SECTION.match(line)
        if heading:
            flush()
            section = heading.group(1).strip()
            continue
        if not line.strip() or line.lstrip().startswith(("- ", "|", "#")):
            flush()
            if line.lstrip().startswith("- "):
                start = i
                current.append(line.lstrip()[2:])
            continue
        if not current:
            start = i
        current.append(line)
    flush()
    return out


def _clause(sentence: str, tag: re.Match[str]) -> str:
    """``sentence``, or if it is long, the clause holding ``tag``."""
    if len(sentence) <= LONG_SENTENCE:
        return sentence
    clauses = sentence.split("; ")
    for i, clause in enumerate(clauses):
        if tag.group(0) in clause:
            return ("… " if i else "") + clause + (" …" if i < len(clauses) - 1 else "")
    return sentence


def rules(text: str) -> list[Rule]:
    """The rules of the copy ``text``, in the order they appear."""
    body = _body(text)
    lines = body.splitlines()
    out: list[Rule] = []
    for first, section, block in _blocks(lines):
        for sentence in _SENTENCE_END.split(block):
            for m in _TAG.finditer(sentence):
                line = next(
                    (n for n in range(first, len(lines) + 1) if m.group(0) in lines[n - 1]),
                    first,
                )
                out.append(Rule(m.group(1), section, _TAG.sub("", _clause(sentence, m)), line))
    return out


def untagged_keywords(text: str) -> list[tuple[int, str]]:
    """``(line, line text)`` of each MUST or MUST NOT in the copy that no ID follows."""
    out: list[tuple[int, str]] = []
    for n, line in enumerate(_body(text).splitlines(), 1):
        exempt = {
            i + phrase.index("MUST")
            for phrase in NOT_RULES
            for i in (m.start() for m in re.finditer(re.escape(phrase), line))
        }
        for m in _KEYWORD.finditer(line):
            if m.start() not in exempt and not _TAG.match(line, m.end()):
                out.append((n, line.strip()))
    return out


def _spec_call(node: ast.AST) -> ast.Call | None:
    """``node`` if it is a call of ``<something>.mark.spec``."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "spec"
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "mark"
    ):
        return node
    return None


class _MarkerVisitor(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.stack: list[str] = []
        self.markers: list[Marker] = []
        self.problems: list[str] = []

    def _owned(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        # Decorators are visited with the test on the stack: they belong to it.
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = _owned
    visit_AsyncFunctionDef = _owned
    visit_ClassDef = _owned

    def visit_Call(self, node: ast.Call) -> None:
        call = _spec_call(node)
        if call is not None:
            where = f"{self.path}:{node.lineno}"
            test = "::".join(self.stack) or "<module>"
            if not call.args or call.keywords:
                self.problems.append(f"{where}: spec() takes one or more IDs, nothing else")
            for arg in call.args:
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    self.problems.append(
                        f"{where}: spec() takes string literals (so that grep finds them)"
                    )
                elif not _ID.match(arg.value):
                    self.problems.append(f"{where}: {arg.value!r} is not an ID")
                else:
                    self.markers.append(Marker(arg.value, self.path, test, node.lineno))
        self.generic_visit(node)


def markers(tests: Path = TESTS, root: Path = REPO) -> tuple[list[Marker], list[str]]:
    """The spec markers of every module under ``tests``, and problems found on the way
    (a marker whose arguments are not ID literals, a module that does not parse)."""
    found: list[Marker] = []
    problems: list[str] = []
    for path in sorted(tests.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        except SyntaxError as exc:
            problems.append(f"{rel}: does not parse ({exc})")
            continue
        visitor = _MarkerVisitor(rel)
        visitor.visit(tree)
        found += visitor.markers
        problems += visitor.problems
    return found, problems


def tests_by_rule(found: list[Marker]) -> dict[str, list[Marker]]:
    """The markers grouped by ID (each test once per ID, in path order)."""
    out: dict[str, list[Marker]] = {}
    for m in found:
        group = out.setdefault(m.id, [])
        if all(g.node != m.node for g in group):
            group.append(m)
    return out
