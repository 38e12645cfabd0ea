"""SPEC §1 wire interop with a plain AF_UNIX peer on each side, and §7 peer credentials."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from tests.conftest import (
    TIMEOUT,
    VCHAN_CONNECTED,
    VCHAN_DISCONNECTED,
    bounded,
    pattern,
    read_all_until_eof,
    read_exact,
    run_bg,
    sock_path,
    wait_until,
)


def _sendall(s: socket.socket, data: bytes) -> int:
    s.sendall(data)
    return len(data)


def _recvall(s: socket.socket, n: int) -> bytes:
    s.settimeout(TIMEOUT)
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(min(1 << 16, n - len(out)))
        assert chunk, f"EOF after {len(out)}/{n} bytes"
        out += chunk
    return bytes(out)


def _peer_uid(s: socket.socket) -> int:
    creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _exchange(api, h, s: socket.socket, size: int) -> None:
    """Both ways at once, concurrently, verified byte for byte."""
    ours, theirs = pattern(size, seed=31), pattern(size, seed=32)
    api.libvchan_set_blocking(h, True)
    w_ours = run_bg(api.libvchan_write, h, ours, len(ours))
    w_theirs = run_bg(_sendall, s, theirs)
    r_theirs = run_bg(_recvall, s, len(ours))
    got = bytearray()
    buf = bytearray(65536)
    while len(got) < len(theirs):
        n = api.libvchan_read(h, buf, len(buf))
        assert n > 0, api.last_errno()
        got += buf[:n]
    assert got == theirs
    assert r_theirs.result() == ours
    assert w_ours.result() == len(ours)
    assert w_theirs.result() == len(theirs)


@pytest.mark.spec("WIRE-INTEROP", "WAITING-SEND-BUFFERS")
def test_must_interop_plain_client_with_our_server(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 65536, 65536)
    assert api.libvchan_send(srv, b"hello before connect", 20) == 20
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(str(sock_path(sockdir, 0, 0, 1)))
    try:
        assert _recvall(c, 20) == b"hello before connect", "no handshake, header or framing"
        wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
        _exchange(api, srv, c, 3 << 20)
        # plain peer closes: DISCONNECTED, its last bytes still readable
        c.sendall(b"bye")
    finally:
        c.close()
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_DISCONNECTED)
    api.libvchan_set_blocking(srv, False)
    assert read_all_until_eof(api, srv) == b"bye"


@pytest.mark.spec("WIRE-INTEROP")
def test_must_interop_our_client_with_plain_server(api, sockdir, monkeypatch):
    monkeypatch.setenv("VCHAN_DOMAIN", "4")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(str(sock_path(sockdir, 7, 4, 9)))  # server domain 7, client domain 4
    lst.listen(1)
    try:
        cli = bounded(api.libvchan_client_init, 7, 9)
        assert cli is not None, api.last_errno()
        lst.settimeout(TIMEOUT)
        s, _ = lst.accept()
    finally:
        lst.close()
    try:
        assert api.libvchan_is_open(cli) == VCHAN_CONNECTED
        s.sendall(b"first")
        api.libvchan_set_blocking(cli, False)
        assert read_exact(api, cli, 5) == b"first", "no handshake, header or framing"
        _exchange(api, cli, s, 3 << 20)
        s.sendall(b"bye")
    finally:
        s.close()
    wait_until(lambda: api.libvchan_is_open(cli) == VCHAN_DISCONNECTED)
    api.libvchan_set_blocking(cli, False)
    assert read_all_until_eof(api, cli) == b"bye"


@pytest.mark.spec("WIRE-INTEROP")
def test_must_interop_our_client_waits_for_plain_server(api, sockdir):
    bg = run_bg(api.libvchan_client_init, 0, 1)
    bg.assert_blocked(0.1)
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(str(sock_path(sockdir, 0, 0, 1)))
    lst.listen(1)
    try:
        cli = bg.result()
        assert cli is not None
        lst.settimeout(TIMEOUT)
        s, _ = lst.accept()
        s.sendall(b"x")
        assert read_exact(api, cli, 1) == b"x"
        s.close()
    finally:
        lst.close()


def test_must_accept_peer_of_same_uid_server_side(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(str(sock_path(sockdir, 0, 0, 1)))
    try:
        wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
        assert _peer_uid(c) == os.geteuid()
        assert api.libvchan_send(srv, b"ok", 2) == 2
        assert _recvall(c, 2) == b"ok"
    finally:
        c.close()


def test_must_trust_server_of_same_uid_client_side(api, sockdir):
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(str(sock_path(sockdir, 0, 0, 1)))
    lst.listen(1)
    try:
        cli = bounded(api.libvchan_client_init, 0, 1)
        assert cli is not None, api.last_errno()
        s, _ = lst.accept()
        assert _peer_uid(s) == os.geteuid()
        s.close()
    finally:
        lst.close()
