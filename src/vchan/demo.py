"""The demonstration behind ``make demo`` and ``vchan demo``.

A server (this process) and a client (a child process, as another "domain") exchange a
verified stream in both directions and a ping-pong, then print throughput and latency.
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

from .channel import Vchan, client, server

PORT = 4242
BLOCK = 65536
PING = 64


def _pattern(seed: int) -> bytes:
    """A deterministic 1 MiB block, so both sides can verify every byte."""
    out = bytearray()
    counter = 0
    while len(out) < 1 << 20:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out)


def _stream_out(ch: Vchan, total: int, seed: int, progress: TextIO | None) -> None:
    block = _pattern(seed)
    sent = 0
    while sent < total:
        n = min(len(block), total - sent)
        ch.write(block[:n])
        sent += n
        if progress is not None:
            _bar(progress, "stream", sent, total)


def _stream_in(ch: Vchan, total: int, seed: int) -> bool:
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
    return ok


def _bar(out: TextIO, label: str, done: int, total: int) -> None:
    width = 30
    filled = width * done // total
    out.write(f"\r  {label:8} [{'#' * filled}{'.' * (width - filled)}] "
              f"{done / 2**20:7.1f} / {total / 2**20:.1f} MiB")
    if done >= total:
        out.write("\n")
    out.flush()


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


def run(total_mib: int = 64, pings: int = 2000, out: TextIO = sys.stdout) -> int:
    total = total_mib << 20
    with tempfile.TemporaryDirectory(prefix="vc", dir="/tmp") as sockdir:
        os.environ["VCHAN_SOCKET_DIR"] = sockdir
        os.environ["VCHAN_DOMAIN"] = "0"
        out.write(f"vchan demo: sockets in {sockdir}\n")
        with server(1, PORT) as srv:
            out.write(f"  server  domain 0 listening for domain 1 on port {PORT}: "
                      f"{srv.state.name}\n")
            env = dict(os.environ, VCHAN_DOMAIN="1")
            child = subprocess.Popen(
                [sys.executable, "-c",
                 f"from vchan.demo import child_main; raise SystemExit("
                 f"child_main({total}, {pings}))"],
                env=env,
            )
            try:
                srv.wait()
                out.write(f"  client  domain 1 (pid {child.pid}) connected: "
                          f"{srv.state.name}\n")
                t0 = time.perf_counter()
                _stream_out(srv, total, seed=1, progress=out)
                verdict = srv.recv(2)
                t1 = time.perf_counter()
                back_ok = _stream_in(srv, total, seed=2)
                t2 = time.perf_counter()
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
                code = child.wait(timeout=30)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        ok = verdict == b"OK" and back_ok and code == 0
        out.write(f"  server -> client: {total_mib} MiB in {t1 - t0:.3f} s "
                  f"({total / (t1 - t0) / 1e6:.0f} MB/s), verified by the client: "
                  f"{verdict.decode()}\n")
        out.write(f"  client -> server: {total_mib} MiB in {t2 - t1:.3f} s "
                  f"({total / (t2 - t1) / 1e6:.0f} MB/s), verified: "
                  f"{'OK' if back_ok else 'NO'}\n")
        rtts.sort()
        out.write(f"  ping-pong: {pings} x {PING} B, round trip median "
                  f"{statistics.median(rtts) * 1e6:.1f} us, "
                  f"p99 {rtts[int(len(rtts) * 0.99) - 1] * 1e6:.1f} us\n")
        out.write(f"  result: {'every byte verified' if ok else 'FAILED'}\n")
    return 0 if ok else 1
