"""Faults: a child that inherited channels through fork() closes them (or just dies).

The fork happens while other threads of the parent are inside the library (blocked in a
transfer, or a pusher thread delivering early writes), so the child may inherit locks held
by threads that do not exist in it: its close() must neither deadlock nor disturb the
parent (no shutdown, no unlink, no accept, no stolen bytes).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import (
    TIMEOUT,
    VCHAN_CONNECTED,
    VCHAN_WAITING,
    bounded,
    connected_pair,
    run_bg,
    scaled,
    sock_path,
    wait_until,
)
from tests.reliability import _stream
from tests.reliability._util import read_stream

TOTAL = 4 << 20
RING = 65536


def _fork(child_fn) -> int:
    """Run ``child_fn`` in a forked child; return its pid (it exits 0, or 1 on exception)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child_fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def _reap(pid: int, timeout: float = TIMEOUT) -> int:
    """Wait for the child with a deadline; a child that hangs is killed and fails the test."""
    end = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"forked child hung for {timeout} s (deadlock in close?)")
        time.sleep(0.005)


def _write_stream(api, h, seed: int) -> int:
    sent = 0
    while sent < TOTAL:
        data = _stream.chunk(seed, sent, min(100_000, TOTAL - sent))
        n = api.libvchan_write(h, data, len(data))
        assert n == len(data), (n, api.last_errno())
        sent += n
    return sent


@pytest.mark.spec("FORK-CHILD-HARMLESS")
@pytest.mark.parametrize("child", ["close", "exit", "sigkill"])
def test_fork_during_transfer_child_close_leaves_parent_intact(api, sockdir, child):
    srv, cli = connected_pair(api, read_min=RING, write_min=RING)
    to_cli, to_srv = _stream.Checker(11), _stream.Checker(12)
    bgs = [
        run_bg(_write_stream, api, srv, 11),
        run_bg(_write_stream, api, cli, 12),
        run_bg(read_stream, api, srv, to_srv, TOTAL, scaled(30), True),
    ]
    read_stream(api, cli, to_cli, until=TOTAL // 4, timeout=scaled(30), blocking=True)

    def in_child() -> None:
        if child == "close":
            api.impl.libvchan_close(srv)
            api.impl.libvchan_close(cli)
        elif child == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)

    pid = _fork(in_child)  # other threads are inside the library right now
    code = _reap(pid)
    assert code == (-signal.SIGKILL if child == "sigkill" else 0)
    assert read_stream(api, cli, to_cli, until=TOTAL, timeout=scaled(30), blocking=True)
    for bg in bgs:
        assert bg.result(scaled(30))
    assert to_cli.count == TOTAL and to_srv.count == TOTAL
    assert api.libvchan_is_open(srv) == VCHAN_CONNECTED
    assert api.libvchan_is_open(cli) == VCHAN_CONNECTED


@pytest.mark.spec("FORK-CHILD-HARMLESS")
def test_fork_while_waiting_server_pushes_early_writes(api, sockdir):
    """A WAITING server holds early writes (a pusher waits to accept); a child closes it."""
    srv = api.libvchan_server_init(0, 1, RING, RING)
    data = _stream.chunk(5, 0, RING)
    assert api.libvchan_send(srv, data, RING) == RING
    path = sock_path(sockdir, 0, 0, 1)
    ino = os.lstat(path).st_ino
    pid = _fork(lambda: api.impl.libvchan_close(srv))
    assert _reap(pid) == 0
    assert os.lstat(path).st_ino == ino, "the child removed or replaced the parent's socket"
    assert api.libvchan_is_open(srv) == VCHAN_WAITING
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
    check = _stream.Checker(5)
    read_stream(api, cli, check, until=RING)
    assert check.count == RING and check.bad is None


@pytest.mark.spec("FORK-CHILD-HARMLESS")
def test_fork_child_closing_does_not_steal_client(api, sockdir):
    """The child closes its copy of a WAITING server while a client arrives in the parent."""
    srv = api.libvchan_server_init(0, 1, 0, 0)
    for _ in range(20):
        pid = _fork(lambda: api.impl.libvchan_close(srv))
        assert _reap(pid) == 0
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
    assert api.libvchan_send(cli, b"mine", 4) == 4
    buf = bytearray(4)
    assert bounded(api.libvchan_recv, srv, buf, 4) == 4 and buf == b"mine"
