"""The asyncio cases, over :mod:`vchan.asyncio` streams (``open_server``/``open_client``).

``run`` is one end of a stream or ping-pong case (called by bench.pydriver, same protocol
and JSON as the other drivers); with ``unix=True`` the very same code runs over asyncio's own
Unix streams (``start_unix_server`` / ``open_unix_connection``), the anchor of the
:mod:`vchan.asyncio` column. An asyncio program is select-driven by construction, so
its ping-pong is reported in the select-driven row. ``busy`` is the scale check: N channel
pairs, both ends of each in this one event loop, all streaming verified data at once.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from typing import Any

PING = 64
_now = time.monotonic_ns


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Fail(Exception):
    pass


def run(a: argparse.Namespace, pat: bytes, unix: bool = False) -> list[dict[str, Any]]:
    return asyncio.run(_run(a, pat, unix))


async def _open_vchan(a: argparse.Namespace) -> tuple[Any, Any]:
    import vchan.asyncio as va

    if a.role == "server":
        return await va.open_server(a.domain, a.port, a.ring, a.ring)
    async with asyncio.timeout(30):
        return await va.open_client(a.domain, a.port)


async def _open_unix(a: argparse.Namespace) -> tuple[Any, Any]:
    """asyncio's Unix streams on a.path: the server takes one connection and stops listening."""
    async with asyncio.timeout(30):
        if a.role == "server":
            got: asyncio.Future[tuple[Any, Any]] = asyncio.get_running_loop().create_future()

            def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                if not got.done():
                    got.set_result((reader, writer))

            server = await asyncio.start_unix_server(accepted, a.path)
            try:
                return await got
            finally:
                server.close()  # no more listening; the accepted stream stays open
        while True:  # the server may not be listening yet
            try:
                return await asyncio.open_unix_connection(a.path)
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.002)


async def _run(a: argparse.Namespace, pat: bytes, unix: bool) -> list[dict[str, Any]]:
    plen = len(pat) - 65536
    reader, writer = await (_open_unix(a) if unix else _open_vchan(a))
    reps: list[dict[str, Any]] = []
    try:
        if a.case == "stream":
            if a.warmup > 0:  # --warmup is in bytes for a stream: one untimed rep
                w = argparse.Namespace(**dict(vars(a), total=a.warmup))
                await _stream_rep(reader, writer, w, pat, plen)
            for _ in range(a.reps):
                reps.append(await _stream_rep(reader, writer, a, pat, plen))
            return reps
        seq = 0
        ok = True
        server = a.role == "server"
        for _ in range(a.warmup):
            seq, ok, _rtt = await _ping_one(reader, writer, server, pat, plen, seq, ok)
        for _ in range(a.reps):
            ok = True
            rtts: list[int] = []
            cpu0 = _cpu()
            t0 = _now()
            for _ in range(a.count):
                seq, ok, rtt = await _ping_one(reader, writer, server, pat, plen, seq, ok)
                if rtt is not None:
                    rtts.append(rtt)
            rep: dict[str, Any] = {"t0": t0, "t1": _now(), "cpu": _cpu() - cpu0, "verified": ok}
            if not server:
                rep["rtt_ns"] = rtts
            reps.append(rep)
        return reps
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:  # the peer may be gone already; nothing to report
            pass


async def _stream_rep(
    reader: Any, writer: Any, a: argparse.Namespace, pat: bytes, plen: int
) -> dict[str, Any]:
    total, chunk = a.total, a.chunk
    if a.role == "server":
        if await reader.readexactly(1) != b"R":
            raise Fail("bad start byte")
        cpu0 = _cpu()
        t0 = _now()
        view = memoryview(pat)
        write, drain = writer.write, writer.drain
        off = 0
        while off < total:
            n = min(chunk, total - off)
            o = off % plen
            write(view[o : o + n])
            await drain()
            off += n
        if await reader.readexactly(1) != b"D":
            raise Fail("bad end byte")
        return {"t0": t0, "t1": 0, "cpu": _cpu() - cpu0, "verified": True}
    startswith = pat.startswith
    read = reader.read
    cpu0 = _cpu()
    t0 = _now()
    writer.write(b"R")
    await writer.drain()
    ok = True
    got = 0
    while got < total:
        data = await read(min(a.ring, total - got))
        if not data:
            raise Fail(f"end of stream after {got} bytes")
        o = got % plen
        if len(data) > 65536:  # longer than the pattern's tail: compare in two steps
            first = plen - o if o + len(data) > plen else len(data)
            ok = ok and startswith(data[:first], o) and pat.startswith(data[first:], 0)
        elif not startswith(data, o):
            ok = False
        got += len(data)
    t1 = _now()
    writer.write(b"D")
    await writer.drain()
    return {"t0": t0, "t1": t1, "cpu": _cpu() - cpu0, "verified": ok}


async def _ping_one(
    reader: Any, writer: Any, server: bool, pat: bytes, plen: int, seq: int, ok: bool
) -> tuple[int, bool, int | None]:
    o = (seq * PING) % plen
    msg = pat[o : o + PING]
    if server:
        got = await reader.readexactly(PING)
        writer.write(got)
        await writer.drain()
        return seq + 1, ok and got == msg, None
    t = _now()
    writer.write(msg)
    await writer.drain()
    got = await reader.readexactly(PING)
    rtt = _now() - t
    return seq + 1, ok and got == msg, rtt


# ----------------------------------------------------------------------------- busy pairs


def busy(pairs: int, seconds: float) -> dict[str, Any]:
    return asyncio.run(_busy(pairs, seconds))


async def _busy(pairs: int, seconds: float) -> dict[str, Any]:
    import os

    import vchan.asyncio as va

    pat = os.urandom((1 << 16) + 7)
    pat2 = pat + pat[:4096]
    plen = len(pat)
    counts = [0] * pairs
    verified = [True] * pairs
    stop = asyncio.Event()

    async def sender(i: int) -> None:
        _reader, writer = await va.open_server(0, 3000 + i, 65536, 65536)
        view = memoryview(pat2)
        off = 0
        try:
            while not stop.is_set():
                o = off % plen
                writer.write(view[o : o + 4096])
                await writer.drain()
                off += 4096
        finally:
            writer.close()

    async def receiver(i: int) -> None:
        reader, writer = await va.open_client(0, 3000 + i)
        got = 0
        try:
            while not stop.is_set():
                data = await reader.read(4096)
                if not data:
                    break
                o = got % plen
                if not pat2.startswith(data, o):
                    verified[i] = False
                got += len(data)
                counts[i] = got
        finally:
            writer.close()

    cpu0 = _cpu()
    tasks = [asyncio.create_task(sender(i)) for i in range(pairs)]
    tasks += [asyncio.create_task(receiver(i)) for i in range(pairs)]
    # Measure from the moment every pair has moved its first bytes.
    async with asyncio.timeout(30):
        while min(counts) == 0:
            await asyncio.sleep(0.01)
    start = list(counts)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    end = list(counts)
    elapsed = time.monotonic() - t0
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    moved = [e - s for s, e in zip(start, end, strict=True)]
    return {
        "kind": "busy",
        "pairs": pairs,
        "seconds": elapsed,
        "write_size": 4096,
        "aggregate_mbps": sum(moved) / elapsed / 1e6,
        "slowest_mbps": min(moved) / elapsed / 1e6,
        "fastest_mbps": max(moved) / elapsed / 1e6,
        "slowest_bytes": min(moved),
        "cpu_s": _cpu() - cpu0,
        "verified": all(verified),
        "ok": all(verified) and min(moved) > 0,
    }
