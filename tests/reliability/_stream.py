"""A verifiable byte stream shared by the tests, the peer program and the soak script.

Byte ``i`` of stream ``seed`` is ``block(seed)[i % PERIOD]``: a prime period, so a lost,
duplicated or reordered chunk shows as a mismatch, and any offset can be checked without
keeping what was sent. No pytest import here: peer.py and soak.py use it too.
"""

from __future__ import annotations

import random

PERIOD = 1_000_003  # prime, larger than every ring and every kernel buffer
_blocks: dict[int, bytes] = {}


def block(seed: int) -> bytes:
    """The stream's period, doubled so any slice shorter than PERIOD is one slice."""
    b = _blocks.get(seed)
    if b is None:
        one = random.Random(seed).randbytes(PERIOD)
        b = _blocks[seed] = one + one
    return b


def chunk(seed: int, offset: int, n: int) -> bytes:
    """Stream bytes ``[offset, offset + n)``."""
    out = bytearray()
    b = block(seed)
    while n > 0:
        start = offset % PERIOD
        k = min(n, PERIOD)
        out += b[start : start + k]
        offset += k
        n -= k
    return bytes(out)


def mismatch(seed: int, offset: int, data: bytes | bytearray | memoryview) -> int:
    """Index in ``data`` of the first byte that is not stream ``seed`` at ``offset``; -1 if none."""
    want = chunk(seed, offset, len(data))
    if want == data:
        return -1
    for i, (a, b) in enumerate(zip(want, bytes(data), strict=True)):
        if a != b:
            return i
    return -1  # pragma: no cover - unreachable


class Checker:
    """Consumes received bytes and remembers the first mismatch."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.count = 0
        self.bad: int | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        if self.bad is None:
            i = mismatch(self.seed, self.count, data)
            if i >= 0:
                self.bad = self.count + i
        self.count += len(data)
        return self.bad is None
