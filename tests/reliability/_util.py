"""Helpers of the reliability suite: out-of-process peers, resource counters, readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from tests.conftest import REPO, TIMEOUT, deadline
from tests.reliability import _stream


def impl_spec(api: Any) -> str:
    """What peer.py needs to load the same implementation as ``api`` in another process."""
    if api.name in ("python", "speedups"):
        return api.name  # the same engine (peer.py uses vchan.libvchan.for_engine)
    path = getattr(api.impl, "path", None)
    assert path, f"cannot run {api!r} in another process"
    return str(path)


class Peer:
    """``tests/reliability/peer.py`` in a child process; its stdout lines are its reports."""

    def __init__(self, impl: str, role: str, action: str, **opts: Any) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src")])
        argv = [sys.executable, "-m", "tests.reliability.peer", impl, role, action]
        argv += [f"{k}={v}" for k, v in opts.items()]
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._buf = b""
        self.lines: list[str] = []
        self._cursor = 0  # lines before this one were seen by expect()
        self.last: dict[str, int] = {}
        # A thread drains the child's stdout all the time: a child that reports faster
        # than the test reads must never block on a full pipe (and look like a hang).
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._drain_stdout, daemon=True)
        self._reader.start()

    def _drain_stdout(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:
                data = b""
            with self._cond:
                if data:
                    self._absorb(data)
                else:
                    self._eof = True
                self._cond.notify_all()
            if not data:
                return

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _absorb(self, data: bytes) -> None:
        self._buf += data
        *done, self._buf = self._buf.split(b"\n")
        for raw in done:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            word, _, rest = line.partition(" ")
            if rest.split(" ", 1)[0].lstrip("-").isdigit():
                self.last[word] = int(rest.split(" ", 1)[0])

    def pump(self, timeout: float = 0.0) -> bool:
        """Wait up to ``timeout`` for the child to print more; False at its EOF."""
        with self._cond:
            if self._eof:
                return False
            n = len(self.lines)
            self._cond.wait_for(lambda: self._eof or len(self.lines) > n, timeout)
            return not (self._eof and len(self.lines) == n)

    def expect(self, word: str, timeout: float = TIMEOUT) -> str:
        """Wait for a line starting with ``word`` not seen by a previous expect().

        Fails on an ERR or BAD line, the child's end, or the timeout.
        """
        end = deadline(timeout)
        while True:
            lines = self.lines[self._cursor :]
            for i, line in enumerate(lines):
                if line.split(" ", 1)[0] == word:
                    self._cursor += i + 1
                    return line
                if line.startswith(("ERR", "BAD")):
                    raise AssertionError(f"peer said {line!r}; stderr: {self.stderr()}")
            self._cursor += len(lines)
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"peer did not say {word} within {timeout} s: {self.lines[-5:]}"
                )
            if not self.pump(min(left, 0.1)):
                raise AssertionError(
                    f"peer ended before saying {word}: {self.lines[-5:]}; stderr: {self.stderr()}"
                )

    def wait_value(self, word: str, at_least: int, timeout: float = TIMEOUT) -> int:
        """Wait until the last ``word N`` line has N >= at_least."""
        end = deadline(timeout)
        while self.last.get(word, -1) < at_least:
            left = end - time.monotonic()
            assert left > 0, f"peer's {word} stuck at {self.last.get(word)} < {at_least}"
            if not self.pump(min(left, 0.1)):
                raise AssertionError(f"peer ended: {self.lines[-5:]}; {self.stderr()}")
        return self.last[word]

    def wait_stalled(self, quiet: float = 0.1, timeout: float = TIMEOUT) -> None:
        """Wait until the child prints nothing for ``quiet`` seconds (it is blocked)."""
        end = deadline(timeout)
        while True:
            n = len(self.lines)
            if not self.pump(quiet):
                raise AssertionError(f"peer ended: {self.lines[-5:]}; {self.stderr()}")
            if len(self.lines) == n and not self._buf:
                return
            assert time.monotonic() < end, "peer never stalled"

    def drain(self) -> None:
        """Wait until everything the (dead) child printed has been read."""
        self._reader.join(TIMEOUT)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(running)"
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def kill(self) -> None:
        """SIGKILL the child and reap it (fails if it does not die)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(TIMEOUT)
        self.drain()

    def stop(self, timeout: float = TIMEOUT) -> int:
        """Close its stdin (it closes its channel and exits); return its exit code."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
            msg = f"peer did not exit within {timeout} s after stdin closed"
            raise AssertionError(msg) from None

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


# ---------------------------------------------------------------------------------------
# resources


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def under_asan() -> bool:
    """Whether AddressSanitizer is preloaded: its quarantine makes RSS meaningless."""
    return "libasan" in os.environ.get("LD_PRELOAD", "")


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


# ---------------------------------------------------------------------------------------
# reading a verified stream through the api


def read_stream(
    api: Any,
    h: Any,
    check: _stream.Checker,
    until: int | None = None,
    timeout: float = TIMEOUT,
    blocking: bool = False,
) -> bool:
    """Read into ``check`` until ``until`` bytes (True) or the end of the stream (False).

    Non-blocking reads polled with a deadline unless ``blocking``.
    """
    buf = bytearray(65536)
    end = deadline(timeout)
    while until is None or check.count < until:
        n = api.libvchan_read(h, buf, len(buf))
        if n < 0:
            return False
        if n:
            assert check.feed(memoryview(buf)[:n]), f"wrong byte at offset {check.bad}"
            continue
        assert not blocking, "a blocking read returned 0"
        assert time.monotonic() < end, f"stream stuck at {check.count} bytes"
        time.sleep(0.0005)
    return True
