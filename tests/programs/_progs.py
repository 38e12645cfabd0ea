"""Helpers shared by the Python twins of the test programs (the C programs have progs.h).

The same things as progs.h, with the same names: deadlines scaled by ``VCHAN_TEST_TIMEOUT``,
:func:`die`, an ``alarm()`` guard around calls that block with no timeout of their own, the
deterministic byte stream (byte for byte the one progs.h describes, so a C end and a Python
end verify each other), argument parsing, start-order tokens and the 8-byte message header.

Not a test module: the twins import it as a sibling (``python tests/programs/<name>.py``
puts this directory first on ``sys.path``).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

_name = ["prog"]


def set_name(name: str) -> None:
    """What :func:`die` and the alarm guard print first."""
    _name[0] = name


ENGINE_ENV = "VCHAN_PROGRAM_ENGINE"
_TAGS = {"python": "py", "speedups": "sp"}


def start(name: str) -> None:
    """Name the program after its engine, "(py)" or "(sp)", and check that engine.

    :mod:`vchan.libvchan` uses the engine of the process, :data:`vchan.ENGINE`: the compiled
    one when it is built, unless ``VCHAN_PURE_PYTHON=1``. The driver sets that, and names the
    engine it wants in ``VCHAN_PROGRAM_ENGINE``, so a program never runs on another one.
    """
    import vchan

    set_name(f"{name} ({_TAGS.get(vchan.ENGINE, vchan.ENGINE)})")
    want = os.environ.get(ENGINE_ENV, "")
    if want and want != vchan.ENGINE:
        die(f"runs on the {vchan.ENGINE} engine, not the {want} one asked for")


def name() -> str:
    """The name set with :func:`set_name`."""
    return _name[0]


def die(msg: str) -> NoReturn:
    """Print why on stderr and exit 1 at once (no interpreter teardown that could hang)."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    os.write(2, f"{_name[0]}: FAIL: {msg}\n".encode())
    os._exit(1)


def die_errno(what: str, code: int) -> NoReturn:
    """``what`` failed with ``code`` (a libvchan ``last_errno()`` or an OSError's errno)."""
    die(f"{what} (errno {code}: {os.strerror(code) if code else 'none'})")


# ---- time


def now() -> float:
    return time.monotonic()


def test_timeout() -> float:
    """``VCHAN_TEST_TIMEOUT`` (seconds, default 10)."""
    raw = os.environ.get("VCHAN_TEST_TIMEOUT", "")
    if not raw:
        return 10.0
    try:
        t = float(raw)
    except ValueError:
        die(f"bad VCHAN_TEST_TIMEOUT {raw}")
    if t <= 0:
        die(f"bad VCHAN_TEST_TIMEOUT {raw}")
    return t


def scaled(seconds: float) -> float:
    """A tolerance of ``seconds`` on a normal machine, scaled like the timeout (default 10)."""
    return seconds * test_timeout() / 10.0


def ms_left(deadline: float) -> int:
    """Milliseconds left until ``deadline`` (a :func:`now` value), for poll(); 0 once passed."""
    left = deadline - now()
    if left <= 0:
        return 0
    return int(left * 1000.0) + 1


def poll_until(p: select.poll, deadline: float) -> list[tuple[int, int]]:
    """``p.poll()`` until ``deadline`` (EINTR is retried by Python itself, PEP 475)."""
    return p.poll(ms_left(deadline))


# ---- the alarm guard


def _guard_fire(what: str) -> None:
    os.write(2, f"{_name[0]}: FAIL: still blocked after the deadline in {what}\n".encode())
    os._exit(1)


@contextmanager
def guard(what: str, seconds: float) -> Iterator[None]:
    """Die with ``what`` if the block has not finished within ``seconds`` (at least 1).

    A library call that blocks in a system call is interrupted by SIGALRM: Python runs this
    handler before it retries the call (PEP 475), and the handler ends the process.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        _guard_fire(what)

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(max(1, int(seconds + 0.999)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---- the deterministic stream (see progs.h for its definition)

STREAM_BLOCK = 65536
_WORDS = STREAM_BLOCK // 8
_M = (1 << 64) - 1
_G1 = 0x9E3779B97F4A7C15
_G2 = 0xD1B54A32D192ED03
# 1 in every 64-bit slot: key * _REP repeats a 64-bit key over a whole block, no carries
_REP = int.from_bytes(b"\x01" + b"\x00" * 7, "little") * sum(1 << (64 * i) for i in range(_WORDS))


def mix64(z: int) -> int:
    """The splitmix64 finalizer, mod 2**64."""
    z &= _M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M
    return z ^ (z >> 31)


class Stream:
    """Stream ``seed``: any range of its bytes, and checks of received bytes against it."""

    def __init__(self, seed: int) -> None:
        self.seed = seed & _M
        base = b"".join(
            mix64(self.seed ^ ((_G1 * (w + 1)) & _M)).to_bytes(8, "little") for w in range(_WORDS)
        )
        self._base = int.from_bytes(base, "little")
        self._cur = -1
        self._block = b""

    def block(self, b: int) -> bytes:
        """The bytes of block ``b`` (offsets ``b * STREAM_BLOCK`` onwards)."""
        if b != self._cur:
            key = mix64((~self.seed & _M) ^ ((_G2 * (b + 1)) & _M))
            self._block = (self._base ^ (key * _REP)).to_bytes(STREAM_BLOCK, "little")
            self._cur = b
        return self._block

    def fill(self, offset: int, n: int) -> bytes:
        """Bytes ``[offset, offset + n)``."""
        parts = []
        while n > 0:
            b, at = divmod(offset, STREAM_BLOCK)
            k = min(n, STREAM_BLOCK - at)
            parts.append(self.block(b)[at : at + k])
            offset += k
            n -= k
        return b"".join(parts)

    def mismatch(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Index in ``data`` of the first byte that is not the stream at ``offset``; -1 if none."""
        done = 0
        n = len(data)
        view = memoryview(data).cast("B")
        while done < n:
            b, at = divmod(offset + done, STREAM_BLOCK)
            k = min(n - done, STREAM_BLOCK - at)
            want = self.block(b)[at : at + k]
            got = view[done : done + k]
            if got != want:
                for i in range(k):
                    if got[i] != want[i]:
                        return done + i
            done += k
        return -1


# ---- arguments


def arg_int(s: str, what: str, lo: int, hi: int) -> int:
    try:
        v = int(s, 10)
    except ValueError:
        die(f"bad {what}: {s}")
    if not lo <= v <= hi:
        die(f"bad {what}: {s}")
    return v


def sync_check(spec: str) -> None:
    if spec != "none" and not spec.startswith(("give:", "take:")):
        die(f"bad sync spec {spec} (none, give:FD or take:FD)")


def sync_give(spec: str) -> None:
    """Write the start token if ``spec`` is ``give:FD`` (see progs.h)."""
    if not spec.startswith("give:"):
        return
    fd = arg_int(spec[5:], "sync fd", 0, 1 << 20)
    try:
        os.write(fd, b"t")
    except OSError as exc:
        die_errno(f"sync: write to fd {fd}", exc.errno or errno.EIO)


def sync_take(spec: str, deadline: float) -> None:
    """Read the start token if ``spec`` is ``take:FD``, within ``deadline``."""
    if not spec.startswith("take:"):
        return
    fd = arg_int(spec[5:], "sync fd", 0, 1 << 20)
    p = select.poll()
    p.register(fd, select.POLLIN)
    if not poll_until(p, deadline):
        die("sync: the other end gave no start token in time")
    if os.read(fd, 1) != b"t":
        die("sync: the other end is gone")


# ---- the 8-byte little-endian message header: type, then length

HDR = struct.Struct("<II")
