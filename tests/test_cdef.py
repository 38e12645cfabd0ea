"""vchan._cffi.CDEF retypes libvchan.h: the two must declare the same API."""

from __future__ import annotations

import re
from pathlib import Path

from vchan import _cffi

HEADER = Path(__file__).resolve().parent.parent / "libvchan-socket" / "libvchan.h"

_PROTOTYPE = re.compile(r"([A-Za-z_][\w\s\*]*?)\b(libvchan_\w+)\s*\(([^()]*)\)\s*;")
_TYPEDEF = re.compile(r"typedef\s+([^;]+?)\s+(\w+)\s*;")


def _strip(text: str) -> str:
    """C text without comments and preprocessor lines, on one line."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return " ".join(text.split())


def _type(decl: str) -> str:
    """A declaration's type, normalised: ``const void *`` from ``const void *data``."""
    decl = re.sub(r"\s*\*\s*", " * ", decl).split()
    if decl and decl[-1] != "*" and len(decl) > 1:
        decl = decl[:-1]  # the parameter's name
    return " ".join(decl)


def _prototypes(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    out = {}
    for ret, name, args in _PROTOTYPE.findall(_strip(text)):
        params = tuple(_type(a) for a in args.split(",")) if args.strip() != "void" else ()
        out[name] = (_type(ret + " x"), params)
    return out


def _typedefs(text: str) -> dict[str, str]:
    return {name: " ".join(t.split()) for t, name in _TYPEDEF.findall(_strip(text))}


def test_cdef_matches_the_header() -> None:
    header = HEADER.read_text()
    declared = _prototypes(header)
    # The parser found every prototype: one per line that starts with a declaration.
    lines = re.findall(r"^[A-Za-z].*\blibvchan_\w+\(", header, flags=re.M)
    assert len(declared) == len(lines) == 15, sorted(declared)
    assert _prototypes(_cffi.CDEF) == declared
    assert _typedefs(_cffi.CDEF) == _typedefs(header)


def test_state_constants_match_the_header() -> None:
    defines = dict(re.findall(r"#define\s+(VCHAN_\w+)\s+(\d+)", HEADER.read_text()))
    assert {name: int(value) for name, value in defines.items()} == {
        "VCHAN_DISCONNECTED": _cffi.VCHAN_DISCONNECTED,
        "VCHAN_CONNECTED": _cffi.VCHAN_CONNECTED,
        "VCHAN_WAITING": _cffi.VCHAN_WAITING,
    }


def test_the_parser_sees_a_difference() -> None:
    """A retyped argument, a changed return type or a missing function is caught."""
    good = _prototypes(_cffi.CDEF)
    for bad in (
        _cffi.CDEF.replace("int libvchan_wait(", "long libvchan_wait("),
        _cffi.CDEF.replace(
            "const void *data, size_t size);\nint libvchan_send",
            "void *data, size_t size);\nint libvchan_send",
        ),
        _cffi.CDEF.replace("int libvchan_is_open(libvchan_t *ctrl);\n", ""),
    ):
        assert _prototypes(bad) != good
