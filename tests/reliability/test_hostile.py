"""Hostile peers (bare sockets): one that never reads, one that never writes, one that
resets the connection, one that trickles a byte at a time, one that floods.

Whatever the peer does, the library never crashes, never loses a byte it accepted, never
hangs a call that must return, never spins, and never raises SIGPIPE.
"""

from __future__ import annotations

import errno
import random
import resource
import socket
import struct
import threading
import time

import pytest

from tests.conftest import (
    TIMEOUT,
    VCHAN_CONNECTED,
    VCHAN_DISCONNECTED,
    bounded,
    fd_readable,
    run_bg,
    scaled,
    settle,
    sock_path,
    wait_until,
)
from tests.reliability import _stream
from tests.reliability._util import read_stream, rss_kib, under_asan

PROMPT = scaled(0.5)
RING = 65536
ROLES = ["server", "client"]


def _hostile_pair(api, sockdir, our_role: str) -> tuple:
    """Our end (``our_role``, rings of RING) and a bare socket peer, connected."""
    path = str(sock_path(sockdir, 0, 0, 1))
    if our_role == "server":
        h = api.libvchan_server_init(0, 1, RING, RING)
        assert h is not None
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.connect(path)
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        h = bounded(api.libvchan_client_init, 0, 1)
        assert h is not None
        peer, _ = listener.accept()
        listener.close()
    wait_until(lambda: api.libvchan_is_open(h) == VCHAN_CONNECTED)
    settle(api, h)
    return h, peer


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _fill(api, h) -> int:
    api.libvchan_set_blocking(h, False)
    total, data = 0, bytes(65536)
    while True:
        n = api.libvchan_write(h, data, len(data))
        assert n >= 0, api.last_errno()
        if n == 0:
            return total
        total += n
        assert total < 64 << 20, "the library buffers without bound"


def _reset(peer: socket.socket) -> None:
    """Close so the other end sees ECONNRESET: unread bytes in our receive queue."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


# ------------------------------------------------------------------------- never reads


@pytest.mark.parametrize("our_role", ROLES)
def test_peer_never_reads(api, sockdir, sigpipe_watch, our_role):
    h, peer = _hostile_pair(api, sockdir, our_role)
    accepted = _fill(api, h)
    assert accepted >= RING, "a fresh channel accepts at least its write ring"
    assert api.libvchan_buffer_space(h) == 0, "buffer_space must fall to 0"
    assert api.libvchan_write(h, b"x", 1) == 0
    assert api.libvchan_send(h, b"x", 1) == 0
    api.libvchan_set_blocking(h, True)
    bg = run_bg(api.libvchan_send, h, bytes(RING), RING)
    bg.assert_blocked(0.2)
    assert api.libvchan_is_open(h) == VCHAN_CONNECTED
    t0 = time.monotonic()
    api.libvchan_close(h)
    assert time.monotonic() - t0 < PROMPT, "close() hangs on a peer that never reads"
    assert bg.result(PROMPT + 1) == -1
    peer.close()
    assert not sigpipe_watch


@pytest.mark.parametrize("our_role", ROLES)
def test_peer_never_reads_then_leaves_blocked_writer_gets_epipe(
    api, sockdir, sigpipe_watch, our_role
):
    h, peer = _hostile_pair(api, sockdir, our_role)
    _fill(api, h)
    api.libvchan_set_blocking(h, True)

    def write():
        ret = api.libvchan_write(h, bytes(1 << 20), 1 << 20)
        return ret, api.last_errno()

    bg = run_bg(write)
    bg.assert_blocked(0.2)
    peer.close()
    assert bg.result(PROMPT + 1) == (-1, errno.EPIPE)
    assert api.libvchan_is_open(h) == VCHAN_DISCONNECTED
    assert not sigpipe_watch


# ------------------------------------------------------------------------ never writes


@pytest.mark.spec("STATE-PROMPT")
@pytest.mark.serial  # timing or CPU share: run on a quiet machine
@pytest.mark.parametrize("our_role", ROLES)
def test_peer_never_writes(api, sockdir, our_role):
    h, peer = _hostile_pair(api, sockdir, our_role)
    fd = api.libvchan_fd_for_select(h)
    buf = bytearray(RING)
    api.libvchan_set_blocking(h, False)
    assert api.libvchan_read(h, buf, 10) == 0
    assert api.libvchan_recv(h, buf, 10) == 0
    assert api.libvchan_data_ready(h) == 0
    api.libvchan_set_blocking(h, True)
    cpu0 = _cpu()
    readers = [run_bg(api.libvchan_read, h, buf, 10), run_bg(api.libvchan_wait, h)]
    for bg in readers:
        bg.assert_blocked(0.5)
    assert _cpu() - cpu0 < scaled(0.2), "blocked calls spin"
    assert not fd_readable(fd), "select fd readable with nothing new"
    assert api.libvchan_is_open(h) == VCHAN_CONNECTED
    peer.close()
    assert readers[0].result(PROMPT) == -1
    assert readers[1].result(PROMPT) == 0
    assert api.libvchan_is_open(h) == VCHAN_DISCONNECTED


# ---------------------------------------------------------------------------- resets


@pytest.mark.spec("STATE-PROMPT", "DATA-READY-KEEPS-BYTES", "READ-DATA-BEFORE-GONE")
@pytest.mark.parametrize("our_role", ROLES)
def test_peer_resets_connection(api, sockdir, sigpipe_watch, our_role):
    h, peer = _hostile_pair(api, sockdir, our_role)
    last = _stream.chunk(31, 0, 5000)
    peer.sendall(last)
    assert api.libvchan_send(h, b"unread by the peer", 18) == 18
    wait_until(lambda: api.libvchan_data_ready(h) == len(last))
    _reset(peer)
    wait_until(lambda: api.libvchan_is_open(h) == VCHAN_DISCONNECTED, PROMPT)
    assert api.libvchan_data_ready(h) == len(last), "bytes before the reset must stay"
    check = _stream.Checker(31)
    assert read_stream(api, h, check) is False
    assert check.count == len(last) and check.bad is None
    assert api.libvchan_write(h, b"x", 1) == -1
    assert api.libvchan_send(h, b"x", 1) == -1
    assert not sigpipe_watch


@pytest.mark.spec("STATE-PROMPT")
@pytest.mark.parametrize("call", ["read", "recv", "write", "wait"])
def test_peer_resets_during_blocked_call(api, sockdir, sigpipe_watch, call):
    h, peer = _hostile_pair(api, sockdir, "server")
    assert api.libvchan_send(h, b"pending", 7) == 7  # the peer never reads it: reset
    buf = bytearray(RING)
    if call == "read":
        bg = run_bg(api.libvchan_read, h, buf, 100)
    elif call == "recv":
        peer.sendall(b"abc")
        bg = run_bg(api.libvchan_recv, h, buf, 100)
    elif call == "write":
        _fill(api, h)
        api.libvchan_set_blocking(h, True)
        bg = run_bg(api.libvchan_write, h, bytes(1 << 20), 1 << 20)
    else:
        settle(api, h)
        bg = run_bg(api.libvchan_wait, h)
    bg.assert_blocked(0.1)
    _reset(peer)
    assert bg.result(PROMPT) == (0 if call == "wait" else -1)
    wait_until(lambda: api.libvchan_is_open(h) == VCHAN_DISCONNECTED, PROMPT)
    if call == "recv":
        assert api.libvchan_read(h, buf, 100) == 3 and buf[:3] == b"abc"
    assert api.libvchan_read(h, buf, 100) == -1
    assert not sigpipe_watch


@pytest.mark.spec("READ-DATA-BEFORE-GONE", "STATE-PROMPT")
def test_client_connects_and_resets_before_accept(api, sockdir, sigpipe_watch):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert api.libvchan_send(srv, b"early", 5) == 5  # held for the client
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(str(sock_path(sockdir, 0, 0, 1)))
    peer.sendall(b"hi")
    peer.close()
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_DISCONNECTED, PROMPT)
    buf = bytearray(10)
    assert bounded(api.libvchan_read, srv, buf, 10) == 2 and buf[:2] == b"hi"
    assert api.libvchan_read(srv, buf, 10) == -1
    assert api.libvchan_send(srv, b"x", 1) == -1
    assert not sigpipe_watch


# --------------------------------------------------------------------------- trickles


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
@pytest.mark.parametrize("our_role", ROLES)
def test_peer_trickles_one_byte_at_a_time_to_us(api, sockdir, our_role):
    h, peer = _hostile_pair(api, sockdir, our_role)
    total = 3000
    data = _stream.chunk(41, 0, total)

    def trickle():
        for i in range(total):
            peer.send(data[i : i + 1])
            if i % 64 == 0:
                time.sleep(0.001)

    bg = run_bg(trickle)
    check = _stream.Checker(41)
    buf = bytearray(RING)
    # blocking recv of more than has arrived, then a non-blocking loop driven by wait():
    # every trickled byte must wake the select fd (a missed event hangs the wait)
    assert bounded(api.libvchan_recv, h, buf, 1000) == 1000
    check.feed(buf[:1000])
    api.libvchan_set_blocking(h, False)
    while check.count < total:
        n = api.libvchan_read(h, buf, RING)
        assert n >= 0
        if n == 0:
            assert bounded(api.libvchan_wait, h, timeout=scaled(5)) == 0, "missed a trickled byte"
            continue
        assert check.feed(buf[:n]), f"wrong byte at {check.bad}"
        assert api.libvchan_data_ready(h) <= RING
    bg.result()
    assert check.count == total


@pytest.mark.parametrize("our_role", ROLES)
def test_peer_reads_one_byte_at_a_time_from_us(api, sockdir, our_role):
    h, peer = _hostile_pair(api, sockdir, our_role)
    total = 200_000
    data = _stream.chunk(43, 0, total)
    wr = run_bg(api.libvchan_write, h, data, total)
    check = _stream.Checker(43)
    rng = random.Random(1)
    while check.count < total:
        got = peer.recv(1 if rng.random() < 0.5 else rng.randint(1, 300))
        assert got, "EOF before the end"
        assert check.feed(got), f"wrong byte at {check.bad}"
    assert wr.result() == total


# ----------------------------------------------------------------------------- floods


@pytest.mark.parametrize("our_role", ROLES)
def test_peer_floods_without_pause(api, sockdir, spawn, our_role):
    """A peer process writes 48 MiB as fast as the kernel takes it; we read slowly."""
    total = 48 << 20
    if our_role == "server":
        h = api.libvchan_server_init(0, 1, RING, RING)
        peer = spawn("client", "send", impl="plain", seed=51, total=total, chunk=1 << 20)
        peer.expect("READY")
    else:
        peer = spawn("server", "send", impl="plain", seed=51, total=total, chunk=1 << 20)
        peer.expect("READY")
        h = bounded(api.libvchan_client_init, 0, 1)
    rss0 = rss_kib()
    rng = random.Random(2)
    check = _stream.Checker(51)
    buf = bytearray(1 << 20)
    api.libvchan_set_blocking(h, rng.random() < 0.5)
    end = time.monotonic() + 4 * TIMEOUT
    while check.count < total:
        assert api.libvchan_data_ready(h) <= RING, "data_ready above the read ring"
        assert api.libvchan_buffer_space(h) <= RING
        op = rng.random()
        if op < 0.02:
            api.libvchan_set_blocking(h, rng.random() < 0.5)
        want = rng.choice([1, 7, 4096, 65536, 1 << 20])
        if op < 0.3:
            want = min(want, RING, total - check.count)
            n = api.libvchan_recv(h, buf, want)
            assert n in (0, want)
        else:
            n = api.libvchan_read(h, buf, want)
            assert 0 <= n <= min(want, RING)
        if n > 0:
            assert check.feed(memoryview(buf)[:n]), f"wrong byte at {check.bad}"
        else:
            time.sleep(0.0001)
        assert time.monotonic() < end, f"stuck at {check.count}"
    if not under_asan():  # ASan's quarantine keeps freed memory
        assert rss_kib() - rss0 < 16384, "memory grew under a flood"
    peer.expect("DONE")


def test_flood_both_ways_with_nonblocking_and_wait(api, sockdir):
    """A peer that floods and also reads what we send, while we do the same."""
    h, peer = _hostile_pair(api, sockdir, "server")
    total = 8 << 20
    stop = threading.Event()
    received = _stream.Checker(61)

    def flood():
        peer.setblocking(True)
        sent = 0
        while sent < total:
            sent += peer.send(_stream.chunk(62, sent, min(1 << 20, total - sent)))

    def sink():
        while received.count < total and not stop.is_set():
            got = peer.recv(1 << 20)
            if not got:
                return
            received.feed(got)

    bgs = [run_bg(flood), run_bg(sink)]
    api.libvchan_set_blocking(h, False)
    mine = _stream.Checker(62)
    sent = 0
    buf = bytearray(RING)
    end = time.monotonic() + 4 * TIMEOUT
    while mine.count < total or sent < total:
        progress = False
        if sent < total:
            n = api.libvchan_write(
                h, _stream.chunk(61, sent, min(100_000, total - sent)), min(100_000, total - sent)
            )
            assert n >= 0
            sent += n
            progress = n > 0
        n = api.libvchan_read(h, buf, RING)
        assert n >= 0
        if n:
            assert mine.feed(buf[:n]), f"wrong byte at {mine.bad}"
            progress = True
        if not progress:
            assert bounded(api.libvchan_wait, h, timeout=scaled(5)) == 0
        assert time.monotonic() < end
    for bg in bgs:
        bg.result(scaled(30))
    stop.set()
    assert received.count == total and received.bad is None
