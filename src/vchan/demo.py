"""The demonstration behind ``make demo`` and ``vchan demo``.

A server (this process, domain 0) and a client (a child process, domain 1) in a private
socket directory exchange a verified stream in both directions and a ping-pong, then the
server prints throughput and latency. Progress bars are drawn on a terminal (at most ten
updates a second); when the output is not a terminal each step prints one plain line.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import TextIO

from . import _backend
from .channel import Vchan, client, server

PORT = 4242
BLOCK = 65536
PING = 64
#: Seconds between two progress-bar updates on a terminal.
REFRESH = 0.1


def _pattern(seed: int) -> bytes:
    """A deterministic 1 MiB block, so both sides can verify every byte."""
    out = bytearray()
    counter = 0
    while len(out) < 1 << 20:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out)


class Progress:
    """A throttled progress bar on a terminal; nothing until :meth:`done` otherwise."""

    def __init__(self, out: TextIO | None, label: str, total: int) -> None:
        self.out = out
        self.label = label
        self.total = total
        self.tty = out is not None and out.isatty()
        self._next = 0.0

    def update(self, done: int) -> None:
        if not self.tty or self.out is None:
            return
        now = time.monotonic()
        if now < self._next and done < self.total:
            return
        self._next = now + REFRESH
        width = 30
        filled = width * done // self.total
        self.out.write(
            f"\r  {self.label:17} [{'#' * filled}{'.' * (width - filled)}] "
            f"{done / 2**20:6.1f} / {self.total / 2**20:.1f} MiB"
        )
        self.out.flush()

    def done(self, text: str) -> None:
        if self.out is None:
            return
        if self.tty:
            self.out.write("\r\033[K")
        self.out.write(f"  {self.label:17} {text}\n")
        self.out.flush()


def _stream_out(ch: Vchan, total: int, seed: int, progress: Progress | None) -> None:
    block = _pattern(seed)
    sent = 0
    while sent < total:
        n = min(BLOCK, total - sent)
        off = sent % len(block)
        n = min(n, len(block) - off)
        ch.write(block[off : off + n])
        sent += n
        if progress is not None:
            progress.update(sent)


def _stream_in(ch: Vchan, total: int, seed: int, progress: Progress | None = None) -> bool:
    block = _pattern(seed)
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    got = 0
    ok = True
    while got < total:
        n = ch.readinto(view[: min(BLOCK, total - got)])
        if n == 0:
            return False
        off = got % len(block)
        # A chunk may wrap around the 1 MiB pattern.
        first = min(n, len(block) - off)
        ok = ok and view[:first] == block[off : off + first]
        if first < n:
            ok = ok and view[first:n] == block[: n - first]
        got += n
        if progress is not None:
            progress.update(got)
    return ok


def child_main(total: int, pings: int) -> int:
    """The client side: receive and verify, send back, then echo pings."""
    with client(0, PORT, timeout=10) as ch:
        ok = _stream_in(ch, total, seed=1)
        ch.send(b"OK" if ok else b"NO")
        _stream_out(ch, total, seed=2, progress=None)
        for _ in range(pings):
            ch.send(ch.recv(PING))
        ch.recv(1)  # the server's goodbye: everything above has been read
    return 0 if ok else 1


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:,.0f} MB/s" if seconds > 0 else "-"


def run(
    total_mib: int = 128, pings: int = 2000, out: TextIO = sys.stdout, backend: str | None = None
) -> int:
    total = total_mib << 20
    name = _backend.resolve(backend)
    _backend.check(name)
    with tempfile.TemporaryDirectory(prefix="vc", dir="/tmp") as sockdir:
        saved = {
            k: os.environ.get(k) for k in ("VCHAN_SOCKET_DIR", "VCHAN_DOMAIN", _backend.BACKEND_ENV)
        }
        os.environ.update(VCHAN_SOCKET_DIR=sockdir, VCHAN_DOMAIN="0")
        os.environ[_backend.BACKEND_ENV] = name
        try:
            return _run(total, total_mib, pings, out, name, sockdir)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _run(total: int, total_mib: int, pings: int, out: TextIO, name: str, sockdir: str) -> int:
    out.write(f"vchan demo ({name} backend), sockets in {sockdir}\n")
    with server(1, PORT) as srv:
        out.write(
            f"  server            domain 0, waiting for domain 1 on port {PORT}: {srv.state.name}\n"
        )
        out.flush()
        env = dict(os.environ, VCHAN_DOMAIN="1")
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from vchan.demo import child_main; raise SystemExit("
                f"child_main({total}, {pings}))",
            ],
            env=env,
        )
        try:
            srv.wait()
            out.write(f"  client            domain 1 (pid {child.pid}): {srv.state.name}\n")
            out.flush()
            bar = Progress(out, "server -> client", total)
            t0 = time.perf_counter()
            _stream_out(srv, total, seed=1, progress=bar)
            verdict = srv.recv(2)
            t1 = time.perf_counter()
            bar.done(
                f"{total_mib} MiB in {t1 - t0:.2f} s, {_rate(total, t1 - t0)}, "
                f"verified by the client: {verdict.decode(errors='replace')}"
            )
            bar = Progress(out, "client -> server", total)
            back_ok = _stream_in(srv, total, seed=2, progress=bar)
            t2 = time.perf_counter()
            bar.done(
                f"{total_mib} MiB in {t2 - t1:.2f} s, {_rate(total, t2 - t1)}, "
                f"verified: {'OK' if back_ok else 'NO'}"
            )
            rtts = []
            msg = os.urandom(PING)
            for _ in range(pings):
                s = time.perf_counter()
                srv.send(msg)
                echoed = srv.recv(PING)
                rtts.append(time.perf_counter() - s)
                if echoed != msg:
                    back_ok = False
            srv.send(b".")
            code = child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    ok = verdict == b"OK" and back_ok and code == 0
    rtts.sort()
    median = statistics.median(rtts) * 1e6
    p99 = rtts[max(0, int(len(rtts) * 0.99) - 1)] * 1e6
    out.write(
        f"  ping-pong         {pings} round trips of {PING} B: median {median:.1f} us, "
        f"p99 {p99:.1f} us\n"
    )
    out.write(
        f"summary: {_rate(2 * total, t2 - t0)} both ways, {median:.1f} us round trip, "
        f"{'every byte verified' if ok else 'FAILED'}\n"
    )
    out.flush()
    return 0 if ok else 1
