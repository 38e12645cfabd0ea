"""Faults at start-up: a client long before its server, a stale socket file left by a
killed server, a second server on the path of a live one (EADDRINUSE, never a takeover).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time

import pytest

from tests.conftest import (
    TIMEOUT,
    VCHAN_CONNECTED,
    bounded,
    run_bg,
    scaled,
    sock_path,
    wait_until,
)
from tests.reliability import _stream
from tests.reliability._util import cpu_seconds

CONNECT_SOON = scaled(0.5)  # the SPEC says 50 ms; this suite only checks nothing is stuck


def _stale_socket(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays: a stale socket nobody listens on


def _churn(sockdir: str, path: str, seconds: float) -> None:
    """Directory activity while a client waits: unrelated files, a stale socket at its path."""
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        other = os.path.join(sockdir, f"vchan.0.0.{9000 + i % 5}.sock")
        with open(other, "w") as f:
            f.write("x")
        os.unlink(other)
        if i % 20 == 0 and not os.path.exists(path):
            _stale_socket(path)
        elif i % 20 == 10 and os.path.exists(path):
            os.unlink(path)
        i += 1
        time.sleep(0.01)
    if os.path.exists(path):
        os.unlink(path)


@pytest.mark.spec("CLIENT-NO-BUSY-WAIT", "CLOSE-DELIVERS")
@pytest.mark.serial  # a CPU share: measured on a quiet machine
def test_client_process_started_long_before_server(api, sockdir, spawn):
    path = str(sock_path(sockdir, 0, 0, 1))
    peer = spawn("client", "recv", seed=21)
    peer.expect("START")  # loaded, about to connect: its CPU is measured from here
    cpu0 = cpu_seconds(peer.pid)
    _churn(sockdir, path, 1.0)
    used = cpu_seconds(peer.pid) - cpu0
    assert used < scaled(0.1), f"waiting client used {used:.2f} s of CPU in 1 s"
    assert peer.lines == ["START"], f"client connected to nothing: {peer.lines}"
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert srv is not None
    t0 = time.monotonic()
    peer.expect("READY")
    assert time.monotonic() - t0 < CONNECT_SOON
    data = _stream.chunk(21, 0, 100_000)
    assert api.libvchan_write(srv, data, len(data)) == len(data)
    api.libvchan_close(srv)
    assert peer.expect("EOF") == "EOF 100000"


def test_client_thread_started_long_before_server_process(api, sockdir, spawn):
    path = str(sock_path(sockdir, 0, 0, 1))
    bg = run_bg(api.libvchan_client_init, 0, 1)
    _churn(sockdir, path, 1.0)
    assert not bg.done(), "client_init returned with no server"
    peer = spawn("server", "hold", greet="hello")
    peer.expect("READY")
    t0 = time.monotonic()
    cli = bg.result()
    assert cli is not None, api.last_errno()
    assert time.monotonic() - t0 < CONNECT_SOON
    buf = bytearray(5)
    assert bounded(api.libvchan_recv, cli, buf, 5) == 5 and buf == b"hello"


def test_server_over_stale_socket_of_sigkilled_server(api, sockdir, spawn):
    path = sock_path(sockdir, 0, 0, 1)
    old = spawn("server", "hold")
    old.expect("READY")
    old.kill()
    assert path.exists(), "a killed server leaves its socket file behind"
    waiting = run_bg(api.libvchan_client_init, 0, 1)  # meets the stale file first
    waiting.assert_blocked()
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert srv is not None, f"server_init over a stale socket: errno {api.last_errno()}"
    t0 = time.monotonic()
    cli = waiting.result()
    assert cli is not None
    assert time.monotonic() - t0 < CONNECT_SOON
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
    assert api.libvchan_send(srv, b"new", 3) == 3
    buf = bytearray(3)
    assert bounded(api.libvchan_recv, cli, buf, 3) == 3 and buf == b"new"


@pytest.mark.parametrize("live", ["same-impl", "plain"])
def test_second_server_on_live_path_fails_eaddrinuse_and_takes_nothing(api, sockdir, spawn, live):
    path = sock_path(sockdir, 0, 0, 1)
    first = spawn("server", "hold", impl="plain" if live == "plain" else None, greet="first")
    first.expect("READY")
    ino = os.lstat(path).st_ino
    for _ in range(3):
        assert api.libvchan_server_init(0, 1, 0, 0) is None, "took over a live server"
        assert api.last_errno() == errno.EADDRINUSE, os.strerror(api.last_errno())
    assert os.lstat(path).st_ino == ino, "the live server's socket file was replaced"
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    buf = bytearray(5)
    assert bounded(api.libvchan_recv, cli, buf, 5) == 5 and buf == b"first"


def test_second_server_while_live_one_has_pending_client(api, sockdir):
    """The live server's one backlog slot is taken: still EADDRINUSE, still its client."""
    srv = api.libvchan_server_init(0, 1, 0, 0)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(str(sock_path(sockdir, 0, 0, 1)))  # pending: the server has not accepted yet
    try:
        assert api.libvchan_server_init(0, 1, 0, 0) is None
        assert api.last_errno() == errno.EADDRINUSE
        c.sendall(b"mine")
        buf = bytearray(4)
        assert bounded(api.libvchan_recv, srv, buf, 4) == 4 and buf == b"mine"
    finally:
        c.close()


def test_concurrent_server_inits_on_one_path_exactly_one_wins(api, sockdir):
    """Servers racing for one path: one listens, the rest fail; none is orphaned.

    An orphan would be a server that got a handle but whose socket file was replaced by
    a racer, so it stays WAITING forever while the racer takes its client.
    """
    rounds, racers = 200, 4
    for r in range(rounds):
        port = 100 + r
        start = threading.Barrier(racers)
        results: list = [None] * racers

        def race(k: int, start: threading.Barrier, port: int, results: list) -> None:
            start.wait(TIMEOUT)
            h = api.libvchan_server_init(0, port, 0, 0)
            results[k] = (h, api.last_errno())

        bgs = [run_bg(race, k, start, port, results) for k in range(racers)]
        for bg in bgs:
            bg.result()
        winners = [h for h, _ in results if h is not None]
        errs = sorted({e for h, e in results if h is None})
        assert len(winners) == 1, (
            f"round {r}: {len(winners)} servers got a handle for one path (errnos {errs})"
        )
        assert set(errs) <= {errno.EADDRINUSE}, [os.strerror(e) for e in errs]
        cli = bounded(api.libvchan_client_init, 0, port)
        assert cli is not None
        wait_until(lambda w=winners[0]: api.libvchan_is_open(w) == VCHAN_CONNECTED)
