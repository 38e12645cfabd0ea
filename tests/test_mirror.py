"""The two engines share their constants: libvchan-socket/internal.h has each one as
``#define VCHAN__<NAME>``, the Python engine as ``<NAME>`` in one of its modules. This test
parses the header and checks that both say the same, that every define is either mirrored
or listed as C-only, and that the Python modules never type a mirrored value inline (they
use the name, so a change in one place is a change everywhere).
"""

from __future__ import annotations

import ast
import re
import select
from pathlib import Path
from typing import Any

import pytest

from vchan import _config, _linux
from vchan._core import internal, util

REPO = Path(__file__).resolve().parent.parent
HEADER = REPO / "libvchan-socket" / "internal.h"
SRC = REPO / "src" / "vchan"

#: Where the Python engine keeps its constants, searched in this order.
PY_HOMES: tuple[Any, ...] = (_config, internal, _linux)

#: Python names that differ from the define's.
ALIASES = {
    "EPOLL_SOCK": "_EPOLL_IN",  # a connected socket's registration, without EPOLLOUT
}

#: Defines with no Python counterpart, and why.
C_ONLY = {
    # the Python engine measures with FIONREAD (DESIGN.md "Prefetch (C)")
    "PREFETCH_MAX",
}

#: Mirrored values that must not appear as literals in these Python modules.
PY_MODULES = [*sorted((SRC / "_core").glob("*.py")), SRC / "_config.py", SRC / "_linux.py"]

#: Literals that equal a mirrored value by coincidence: (module file, assigned name).
UNRELATED = {
    ("_linux.py", "_SO_ACCEPTCON"),  # 0x10000, a /proc/net/unix flag
    ("io.py", "_FREE_CHUNK"),  # an unbounded flush's largest send, Python only
}

_DEFINE = re.compile(r"^#define\s+VCHAN__(\w+)\s+(.+?)\s*(?:/\*.*)?$", re.M)


def _c_value(expr: str) -> object | None:
    """The value of a define's expression, or None if it is not a constant."""
    expr = re.sub(r"\(\s*size_t\s*\)", "", expr)  # casts
    if expr.startswith('"'):
        return ast.literal_eval(expr)
    names = {
        **{k: getattr(select, k) for k in dir(select) if k.startswith("EPOLL")},
        **{k: getattr(_linux, k) for k in dir(_linux) if k.startswith("IN_")},
    }
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in names:
            return None  # a macro, not a value
        if isinstance(node, ast.Call):
            return None
    return eval(compile(tree, HEADER.name, "eval"), {"__builtins__": {}}, names)


def c_constants() -> dict[str, object]:
    out: dict[str, object] = {}
    for name, expr in _DEFINE.findall(HEADER.read_text()):
        value = _c_value(expr)
        if value is not None:
            out[name] = value
    return out


def py_name(name: str) -> str:
    return ALIASES.get(name, name)


def _py_home(name: str) -> Any:
    for mod in PY_HOMES:
        if py_name(name) in vars(mod):
            return mod
    return None


def test_header_parses() -> None:
    found = c_constants()
    assert {"DOMAIN_LIMIT", "CLIENT_RING", "BACKOFF_FIRST_MS", "TSZ_BASE"} <= set(found)


@pytest.mark.parametrize("name", sorted(c_constants()))
def test_python_has_the_same_value(name: str) -> None:
    value = c_constants()[name]
    home = _py_home(name)
    if name in C_ONLY:
        assert home is None, f"{name} is listed as C-only but Python has it too"
        return
    assert home is not None, (
        f"VCHAN__{name} = {value!r} in internal.h has no Python counterpart "
        f"(define {name} in one of {[m.__name__ for m in PY_HOMES]}, or list it in C_ONLY)"
    )
    mine = getattr(home, py_name(name))
    assert mine == value, (
        f"VCHAN__{name} is {value!r} in internal.h but {home.__name__}.{py_name(name)} is {mine!r}"
    )


def test_every_define_is_a_constant() -> None:
    """A define this test cannot evaluate would escape it: keep them plain values."""
    every = set(re.findall(r"^#define\s+VCHAN__(\w+)", HEADER.read_text(), re.M))
    assert every == set(c_constants()), every - set(c_constants())


def test_truesize_functions_follow_the_constants() -> None:
    for n in (0, 1, 4096, 32767, 32768, 65536, 1 << 20):
        expected = n + internal.TSZ_BASE + internal.TSZ_STEP * (n >> internal.TSZ_SHIFT)
        assert util.tsz(n) == expected
    assert internal.TSZ_STEP << internal.FIT_SHIFT == 1 << internal.TSZ_SHIFT
    for room in [*range(0, 5000, 7), *range(60_000, 2_200_000, 997)]:
        assert util.tsz(util.fit(room)) <= room or util.fit(room) == 0, room


def _literal(node: ast.AST) -> object:
    """The value of a literal (or a constant shift/product of literals), else None."""
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.LShift, ast.Pow)):
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(left, int) and isinstance(right, int):
            return left << right if isinstance(node.op, ast.LShift) else left**right
    return None


def _banned() -> dict[object, str]:
    """Values a Python module must spell by name: the mirrored constants that are
    distinctive (small numbers such as 1, 4 or 100 have other meanings too), and the
    back-off in seconds."""
    out: dict[object, str] = {}
    for name, value in c_constants().items():
        if name in C_ONLY:
            continue
        if isinstance(value, str) or (isinstance(value, int) and value > 100):
            if name not in ("TSZ_STEP", "INOTIFY_MASK"):  # 1024: a ring size (SPEC §6)
                out[value] = name
    for name in ("BACKOFF_FIRST_MS", "BACKOFF_MAX_MS", "BACKOFF_NOINOTIFY_MS"):
        out[c_constants()[name] / 1000] = name  # type: ignore[operator]
    return out


@pytest.mark.parametrize("path", PY_MODULES, ids=lambda p: p.name)
def test_no_mirrored_value_typed_inline(path: Path) -> None:
    banned = _banned()
    # the names this module is the authoritative home of
    homes = {
        py_name(n)
        for n in c_constants()
        if (mod := _py_home(n)) is not None and Path(mod.__file__).resolve() == path.resolve()
    }
    tree = ast.parse(path.read_text())
    allowed: set[int] = set()  # ids of literal nodes in a definition
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            if names & homes or {(path.name, n) for n in names} & UNRELATED:
                allowed.update(id(n) for n in ast.walk(node.value))
    found = []
    for node in ast.walk(tree):
        if id(node) in allowed:
            continue
        value = _literal(node)
        if value is not None and value in banned and not isinstance(value, bool):
            found.append(f"{path.name}:{node.lineno}: {value!r} (use {banned[value]})")
        # tsz() inlined with literals: `n >> 15`
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.RShift)
            and _literal(node.right) in (internal.TSZ_SHIFT, internal.FIT_SHIFT)
        ):
            found.append(f"{path.name}:{node.lineno}: a shift by a literal (use TSZ_/FIT_SHIFT)")
    assert not found, "mirrored constants typed inline:\n" + "\n".join(found)
