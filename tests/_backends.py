"""Backends the Pythonic-layer tests run over: the conformance suite's implementations
(tests/conftest.py: ``VCHAN_TEST_IMPLS``, by default the engines ``python`` (pure Python)
and ``speedups`` (compiled) and our C library ``c``, plus ``lib`` when
``VCHAN_TEST_LIB=/path/lib.so`` is set).
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import CLIB, _build_clib, _impl_names


def names() -> list[str]:
    """The implementations chosen for this run (the conftest's one list)."""
    return _impl_names()


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
