"""Backends the Pythonic-layer tests run over, as in the conformance suite: the engines
``python`` (pure Python) and ``speedups`` (compiled), our C library (``c``) and, when
``VCHAN_TEST_LIB=/path/lib.so`` is set, that library (``lib``).
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import CLIB, _build_clib


def names() -> list[str]:
    out = ["python", "speedups", "c"]
    if os.environ.get("VCHAN_TEST_LIB"):
        out.append("lib")
    return out


def backend_arg(name: str) -> str:
    """The ``backend=`` argument for ``name``; skips the test if it is not available."""
    if name in ("python", "speedups"):
        return name
    if name == "lib":
        path = os.environ.get("VCHAN_TEST_LIB", "")
        if not path:
            pytest.skip("VCHAN_TEST_LIB is not set")
        return path
    reason = _build_clib()
    if reason is not None:
        pytest.skip(reason)
    return str(CLIB)
