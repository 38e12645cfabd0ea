"""One end of a benchmark case over the pure-Python implementation (``python -m bench.pydriver``).

The same cases, handshakes and JSON output as the C driver ``bench/c/vbench.c``; see there
and bench/README.md. The APIs (``--api``):

* ``blocking``: the Pythonic API (:mod:`vchan`) as an ordinary program would use it, over the
  pure-Python engine or, with ``--backend PATH``, over a libvchan shared library (cffi);
* ``asyncio``: :mod:`vchan.asyncio` streams inside one event loop (bench/pyasync.py);
* ``socket``: the anchor of ``blocking``, a plain Python program doing the same work on one
  end of a ``socketpair`` (``--fd``): ``sendall``/``recv_into``/``recv``, ``poll`` + ``recv``
  for the select-driven ping-pong;
* ``aiounix``: the anchor of ``asyncio``, asyncio Unix streams (``start_unix_server`` /
  ``open_unix_connection`` on ``--path``) doing what the ``asyncio`` one does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import sys
import time
from typing import Any

PING = 64
_now = time.monotonic_ns  # CLOCK_MONOTONIC, the clock the C driver uses


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return ru.ru_utime + ru.ru_stime


def load_pattern(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    return data + data[:65536]  # a read may cross the pattern's end


class Fail(Exception):
    pass


# --------------------------------------------------------------------------- blocking API


def run_blocking(a: argparse.Namespace, pat: bytes) -> list[dict[str, Any]]:
    import vchan

    plen = len(pat) - 65536
    if a.role == "server":
        ch = vchan.server(a.domain, a.port, a.ring, a.ring, backend=a.backend)
    else:
        ch = vchan.client(a.domain, a.port, timeout=30, backend=a.backend)
    reps: list[dict[str, Any]] = []
    try:
        if a.case == "stream":
            if a.warmup > 0:  # --warmup is in bytes for a stream: one untimed rep
                _stream_rep(ch, argparse.Namespace(**dict(vars(a), total=a.warmup)), pat, plen)
            for _ in range(a.reps):
                reps.append(_stream_rep(ch, a, pat, plen))
            return reps
        sel = a.case == "pingsel"
        seq = [0]
        ok = [True]
        for _ in range(a.warmup):
            _ping_one(ch, a.role == "server", sel, pat, plen, seq, ok)
        for _ in range(a.reps):
            rtts: list[int] = []
            ok = [True]
            cpu0 = _cpu()
            t0 = _now()
            for _ in range(a.count):
                rtt = _ping_one(ch, a.role == "server", sel, pat, plen, seq, ok)
                if rtt is not None:
                    rtts.append(rtt)
            t1 = _now()
            rep: dict[str, Any] = {"t0": t0, "t1": t1, "cpu": _cpu() - cpu0, "verified": ok[0]}
            if a.role == "client":
                rep["rtt_ns"] = rtts
            reps.append(rep)
        return reps
    finally:
        ch.close()


def _stream_rep(ch: Any, a: argparse.Namespace, pat: bytes, plen: int) -> dict[str, Any]:
    total, chunk = a.total, a.chunk
    if a.role == "server":  # the sender
        if ch.recv(1) != b"R":
            raise Fail("bad start byte")
        cpu0 = _cpu()
        t0 = _now()
        view = memoryview(pat)
        write = ch.write
        off = 0
        while off < total:
            n = min(chunk, total - off)
            o = off % plen
            if write(view[o : o + n]) != n:
                raise Fail("short blocking write")
            off += n
        if ch.recv(1) != b"D":
            raise Fail("bad end byte")
        return {"t0": t0, "t1": 0, "cpu": _cpu() - cpu0, "verified": True}
    buf = bytearray(a.ring)
    view = memoryview(buf)
    readinto = ch.readinto
    startswith = pat.startswith
    cpu0 = _cpu()
    t0 = _now()
    ch.send(b"R")
    ok = True
    got = 0
    while got < total:
        want = min(a.ring, total - got)
        k = readinto(view[:want])
        if k <= 0:
            raise Fail(f"read returned {k} after {got} bytes")
        if not startswith(view[:k], got % plen):  # memcmp against the pattern, no copy
            ok = False
        got += k
    t1 = _now()
    ch.send(b"D")
    return {"t0": t0, "t1": t1, "cpu": _cpu() - cpu0, "verified": ok}


_pollers: dict[int, Any] = {}


def _get(ch: Any, sel: bool) -> bytes:
    if sel:  # how event loops receive: poll the fd, wait(), data_ready(), recv()
        p = _pollers.get(id(ch))
        if p is None:  # an event loop registers the select fd once
            p = _pollers[id(ch)] = select.poll()
            p.register(ch.fileno(), select.POLLIN)
        while True:
            p.poll()
            ch.wait()
            if ch.data_ready() >= PING:
                break
    data: bytes = ch.recv(PING)
    return data


def _ping_one(
    ch: Any, server: bool, sel: bool, pat: bytes, plen: int, seq: list[int], ok: list[bool]
) -> int | None:
    o = (seq[0] * PING) % plen
    seq[0] += 1
    msg = pat[o : o + PING]
    if server:
        got = _get(ch, sel)
        if got != msg:
            ok[0] = False
        ch.send(got)
        return None
    t = _now()
    ch.send(msg)
    got = _get(ch, sel)
    rtt = _now() - t
    if got != msg:
        ok[0] = False
    return rtt


# --------------------------------------------------------------- plain socket (the anchor)


def run_socket(a: argparse.Namespace, pat: bytes) -> list[dict[str, Any]]:
    """The same cases on one end of a socketpair, the way a plain Python program does them."""
    import socket

    plen = len(pat) - 65536
    sock = socket.socket(fileno=a.fd)
    sock.setblocking(True)
    reps: list[dict[str, Any]] = []
    try:
        if a.case == "stream":
            if a.warmup > 0:  # --warmup is in bytes for a stream: one untimed rep
                w = argparse.Namespace(**dict(vars(a), total=a.warmup))
                _sock_stream_rep(sock, w, pat, plen)
            for _ in range(a.reps):
                reps.append(_sock_stream_rep(sock, a, pat, plen))
            return reps
        poller = None
        if a.case == "pingsel":  # registered once, as an event loop does
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
        server = a.role == "server"
        seq = [0]
        ok = [True]
        for _ in range(a.warmup):
            _sock_ping_one(sock, poller, server, pat, plen, seq, ok)
        for _ in range(a.reps):
            rtts: list[int] = []
            ok = [True]
            cpu0 = _cpu()
            t0 = _now()
            for _ in range(a.count):
                rtt = _sock_ping_one(sock, poller, server, pat, plen, seq, ok)
                if rtt is not None:
                    rtts.append(rtt)
            t1 = _now()
            rep: dict[str, Any] = {"t0": t0, "t1": t1, "cpu": _cpu() - cpu0, "verified": ok[0]}
            if not server:
                rep["rtt_ns"] = rtts
            reps.append(rep)
        return reps
    finally:
        sock.close()


def _sock_stream_rep(sock: Any, a: argparse.Namespace, pat: bytes, plen: int) -> dict[str, Any]:
    total, chunk = a.total, a.chunk
    if a.role == "server":  # the sender
        if sock.recv(1) != b"R":
            raise Fail("bad start byte")
        cpu0 = _cpu()
        t0 = _now()
        view = memoryview(pat)
        sendall = sock.sendall
        off = 0
        while off < total:
            n = min(chunk, total - off)
            o = off % plen
            sendall(view[o : o + n])
            off += n
        if sock.recv(1) != b"D":
            raise Fail("bad end byte")
        return {"t0": t0, "t1": 0, "cpu": _cpu() - cpu0, "verified": True}
    buf = bytearray(a.ring)
    view = memoryview(buf)
    recv_into = sock.recv_into
    startswith = pat.startswith
    cpu0 = _cpu()
    t0 = _now()
    sock.sendall(b"R")
    ok = True
    got = 0
    while got < total:
        want = min(a.ring, total - got)
        k = recv_into(view[:want])
        if k <= 0:
            raise Fail(f"recv_into returned {k} after {got} bytes")
        if not startswith(view[:k], got % plen):
            ok = False
        got += k
    t1 = _now()
    sock.sendall(b"D")
    return {"t0": t0, "t1": t1, "cpu": _cpu() - cpu0, "verified": ok}


def _sock_get(sock: Any, poller: Any) -> bytes:
    if poller is not None:
        poller.poll()
    data: bytes = sock.recv(PING)
    while len(data) < PING:  # a message split across reads (never seen, but allowed)
        if not data:
            raise Fail("end of stream")
        if poller is not None:
            poller.poll()
        more = sock.recv(PING - len(data))
        if not more:
            raise Fail("end of stream")
        data += more
    return data


def _sock_ping_one(
    sock: Any, poller: Any, server: bool, pat: bytes, plen: int, seq: list[int], ok: list[bool]
) -> int | None:
    o = (seq[0] * PING) % plen
    seq[0] += 1
    msg = pat[o : o + PING]
    if server:
        got = _sock_get(sock, poller)
        if got != msg:
            ok[0] = False
        sock.sendall(got)
        return None
    t = _now()
    sock.sendall(msg)
    got = _sock_get(sock, poller)
    rtt = _now() - t
    if got != msg:
        ok[0] = False
    return rtt


# ---------------------------------------------------------------------------- asyncio API


def run_asyncio(a: argparse.Namespace, pat: bytes) -> list[dict[str, Any]]:
    from bench import pyasync

    return pyasync.run(a, pat, unix=a.api == "aiounix")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pydriver")
    p.add_argument(
        "--api", choices=["blocking", "asyncio", "socket", "aiounix"], default="blocking"
    )
    p.add_argument("--role", choices=["server", "client"], required=True)
    p.add_argument("--case", choices=["stream", "ping", "pingsel"], required=True)
    p.add_argument("--pattern", required=True)
    p.add_argument("--domain", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--backend", help="blocking API: a libvchan .so instead of the engine")
    p.add_argument("--fd", type=int, help="socket API: this end of a socketpair")
    p.add_argument("--path", help="aiounix API: the Unix socket path")
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--total", type=int, default=1 << 20)
    p.add_argument("--ring", type=int, default=65536)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=100)
    a = p.parse_args(argv)
    if a.api == "socket" and a.fd is None:
        p.error("--api socket needs --fd")
    if a.api == "aiounix" and not a.path:
        p.error("--api aiounix needs --path")
    pat = load_pattern(a.pattern)
    out: dict[str, Any] = {"ok": True, "role": a.role}
    try:
        run = {
            "blocking": run_blocking,
            "asyncio": run_asyncio,
            "socket": run_socket,
            "aiounix": run_asyncio,
        }[a.api]
        out["reps"] = run(a, pat)
    except Exception as exc:  # reported to the orchestrator, which fails the case
        out = {"ok": False, "role": a.role, "reps": [], "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
