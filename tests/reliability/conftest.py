"""Fixtures of the reliability suite (the shared ones come from tests/conftest.py)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.reliability._util import Peer, impl_spec


@pytest.fixture
def spawn(api: Any) -> Iterator[Callable[..., Peer]]:
    """Start peer processes (``spawn(role, action, impl=None, **opts)``); all are reaped.

    ``impl`` defaults to the implementation under test; ``"plain"`` is a bare socket.
    """
    started: list[Peer] = []

    def start(role: str, action: str, impl: str | None = None, **opts: Any) -> Peer:
        p = Peer(impl or impl_spec(api), role, action, **opts)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.cleanup()


@pytest.fixture
def sigpipe_watch() -> Iterator[list[int]]:
    """Record SIGPIPE (Python ignores it by default, which would hide a library raising it)."""
    got: list[int] = []
    old = signal.signal(signal.SIGPIPE, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        signal.signal(signal.SIGPIPE, old)
