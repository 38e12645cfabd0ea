"""SPEC §4 (data): the table row by row, WAITING writes, delivery, data_ready, buffer_space."""

from __future__ import annotations

import errno
import random
import time

import pytest

from tests.conftest import (
    TIMEOUT,
    VCHAN_CONNECTED,
    VCHAN_DISCONNECTED,
    bounded,
    bounded_err,
    connected_pair,
    pattern,
    read_all_until_eof,
    read_exact,
    run_bg,
    scaled,
    wait_until,
)

MODES = ["blocking", "nonblocking"]
SRV_READ_RING, SRV_WRITE_RING = 1024, 2048  # server_init(.., 0, 0)
CLI_RING = 65536
QUICK = scaled(1.0)  # a call that must not wait returns well within this


def _pair(api, mode: str, **kw):
    srv, cli = connected_pair(api, **kw)
    blocking = mode == "blocking"
    api.libvchan_set_blocking(srv, blocking)
    api.libvchan_set_blocking(cli, blocking)
    return srv, cli


def _fill(api, h, chunk: int = 65536, seed: int = 7) -> bytes:
    """Non-blocking writes until one returns 0; return the bytes accepted."""
    api.libvchan_set_blocking(h, False)
    data = pattern(chunk, seed)
    out = bytearray()
    for _ in range(100000):
        n = api.libvchan_write(h, data, len(data))
        assert n >= 0, api.last_errno()
        if n == 0:
            return bytes(out)
        out += data[:n]
    raise AssertionError("non-blocking write never returned 0 with a peer that does not read")


def _wait_disconnected(api, h) -> None:
    wait_until(lambda: api.libvchan_is_open(h) == VCHAN_DISCONNECTED, 2.0)


# ---------------------------------------------------------------------------- size 0


@pytest.mark.parametrize("mode", MODES)
def test_must_size_0_returns_0_at_once(api, sockdir, mode):
    srv, cli = _pair(api, mode)
    _fill(api, srv)  # nothing to read on srv, no space to write on srv
    api.libvchan_set_blocking(srv, mode == "blocking")
    buf = bytearray(1)
    for h in (srv, cli):
        assert bounded(api.libvchan_read, h, buf, 0, timeout=QUICK) == 0
        assert bounded(api.libvchan_recv, h, buf, 0, timeout=QUICK) == 0
        assert bounded(api.libvchan_write, h, b"", 0, timeout=QUICK) == 0
        assert bounded(api.libvchan_send, h, b"", 0, timeout=QUICK) == 0


@pytest.mark.parametrize("mode", MODES)
def test_must_size_0_returns_0_at_once_on_waiting_server(api, sockdir, mode):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    api.libvchan_set_blocking(srv, mode == "blocking")
    buf = bytearray(1)
    assert bounded(api.libvchan_read, srv, buf, 0, timeout=QUICK) == 0
    assert bounded(api.libvchan_recv, srv, buf, 0, timeout=QUICK) == 0
    assert bounded(api.libvchan_write, srv, b"", 0, timeout=QUICK) == 0
    assert bounded(api.libvchan_send, srv, b"", 0, timeout=QUICK) == 0


# ---------------------------------------------------------------------------- read


@pytest.mark.parametrize("mode", MODES)
def test_must_read_returns_1_to_min_n_ring_bytes(api, sockdir, mode):
    srv, cli = _pair(api, mode)
    data = pattern(100)
    assert api.libvchan_send(cli, data, 100) == 100
    wait_until(lambda: api.libvchan_data_ready(srv) == 100)
    buf = bytearray(1000)
    n = bounded(api.libvchan_read, srv, buf, 10, timeout=QUICK)
    assert 1 <= n <= 10 and buf[:n] == data[:n]
    m = bounded(api.libvchan_read, srv, buf, 1000, timeout=QUICK)
    assert 1 <= m <= 100 - n and buf[:m] == data[n : n + m]


@pytest.mark.parametrize("mode", MODES)
def test_must_read_returns_at_most_read_ring(api, sockdir, mode):
    srv, cli = _pair(api, mode)
    data = pattern(10000)
    api.libvchan_set_blocking(cli, False)
    assert api.libvchan_write(cli, data, len(data)) == len(data)
    wait_until(lambda: api.libvchan_data_ready(srv) == SRV_READ_RING)
    buf = bytearray(20000)
    got = bytearray()
    while len(got) < len(data):
        n = bounded(api.libvchan_read, srv, buf, len(buf), timeout=QUICK)
        assert 0 <= n <= SRV_READ_RING
        got += buf[:n]
    assert got == data


@pytest.mark.spec("READ-DATA-BEFORE-GONE")
@pytest.mark.parametrize("mode", MODES)
def test_must_read_peer_gone_returns_remaining_data_then_minus1(api, sockdir, mode):
    srv, cli = _pair(api, mode)
    data = pattern(3000)
    assert api.libvchan_send(cli, data, len(data)) == len(data)
    api.libvchan_close(cli)
    _wait_disconnected(api, srv)
    buf = bytearray(4096)
    got = bytearray()
    while True:
        n, err = bounded_err(api, api.libvchan_read, srv, buf, len(buf), timeout=QUICK)
        if n == -1:
            break
        assert n > 0, "peer gone: read returns data or -1, never 0"
        got += buf[:n]
    assert got == data
    assert err == errno.EPIPE
    assert bounded(api.libvchan_read, srv, buf, 1, timeout=QUICK) == -1


@pytest.mark.spec("READ-DATA-BEFORE-GONE")
@pytest.mark.parametrize("call", ["read", "recv"])
@pytest.mark.parametrize("mode", MODES)
def test_must_no_data_lost_to_peer_close_race(api, sockdir, call, mode):
    """A peer writes and closes at once, while we are reading: every byte comes before -1."""
    for port in range(1, 31):
        srv, cli = connected_pair(api, port=port)
        api.libvchan_set_blocking(srv, mode == "blocking")
        size = 1 + port * 33  # up to 991: within the server's 1024-byte read ring

        def reader(h=srv, size=size) -> bytes:
            out = bytearray()
            buf = bytearray(size)
            end = time.monotonic() + TIMEOUT
            while time.monotonic() < end:
                if call == "read":
                    n = api.libvchan_read(h, buf, size)
                else:
                    n = api.libvchan_recv(h, buf, size - len(out) or 1)
                if n < 0:
                    return bytes(out)
                out += buf[:n]
                if n == 0:
                    time.sleep(0.0002)
            raise AssertionError("no end of stream")

        rd = run_bg(reader)
        data = pattern(size, seed=port)
        assert api.libvchan_send(cli, data, size) == size
        api.libvchan_close(cli)
        got = rd.result()
        assert got == data, f"round {port}: {len(got)}/{size} bytes before -1"
        api.libvchan_close(srv)


def test_must_read_nonblocking_insufficient_returns_0(api, sockdir):
    srv, cli = _pair(api, "nonblocking")
    buf = bytearray(10)
    assert bounded(api.libvchan_read, srv, buf, 10, timeout=QUICK) == 0
    assert bounded(api.libvchan_read, cli, buf, 10, timeout=QUICK) == 0
    w = api.libvchan_server_init(0, 2, 0, 0)
    api.libvchan_set_blocking(w, False)
    assert bounded(api.libvchan_read, w, buf, 10, timeout=QUICK) == 0


def test_must_read_blocking_waits_for_data(api, sockdir):
    srv, cli = _pair(api, "blocking")
    buf = bytearray(10)
    bg = run_bg(api.libvchan_read, srv, buf, 10)
    bg.assert_blocked()
    assert api.libvchan_send(cli, b"abcde", 5) == 5
    n = bg.result()
    assert 1 <= n <= 5 and buf[:n] == b"abcde"[:n]


def test_must_read_blocking_wakes_with_minus1_when_peer_closes(api, sockdir):
    srv, cli = _pair(api, "blocking")
    buf = bytearray(10)
    bg = run_bg(api.libvchan_read, srv, buf, 10)
    bg.assert_blocked()
    api.libvchan_close(cli)
    assert bg.result() == -1


def test_must_read_blocking_on_waiting_server_waits_for_client_data(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    buf = bytearray(10)
    bg = run_bg(api.libvchan_read, srv, buf, 10)
    bg.assert_blocked()
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    bg.assert_blocked()  # connected, but no data yet
    assert api.libvchan_send(cli, b"hi", 2) == 2
    assert bg.result() in (1, 2)


# ---------------------------------------------------------------------------- recv


@pytest.mark.parametrize("mode", MODES)
def test_must_recv_returns_exactly_n(api, sockdir, mode):
    srv, cli = _pair(api, mode)
    data = pattern(2000)
    for i in range(0, 2000, 500):
        assert api.libvchan_send(srv, data[i : i + 500], 500) == 500
    wait_until(lambda: api.libvchan_data_ready(cli) == 2000)
    buf = bytearray(2000)
    assert bounded(api.libvchan_recv, cli, buf, 1500, timeout=QUICK) == 1500
    assert buf[:1500] == data[:1500]
    assert bounded(api.libvchan_recv, cli, buf, 500, timeout=QUICK) == 500
    assert buf[:500] == data[1500:]


@pytest.mark.parametrize("mode", MODES)
def test_must_recv_of_whole_read_ring(api, sockdir, mode):
    srv, cli = _pair(api, mode)
    data = pattern(SRV_READ_RING)
    assert api.libvchan_send(cli, data, len(data)) == len(data)
    wait_until(lambda: api.libvchan_data_ready(srv) == SRV_READ_RING)
    buf = bytearray(SRV_READ_RING)
    assert bounded(api.libvchan_recv, srv, buf, SRV_READ_RING, timeout=QUICK) == SRV_READ_RING
    assert buf == data


@pytest.mark.spec("READ-DATA-BEFORE-GONE", "DATA-READY-KEEPS-BYTES")
@pytest.mark.parametrize("mode", MODES)
def test_must_recv_peer_gone_minus1_if_fewer_left_bytes_stay_readable(api, sockdir, mode):
    srv, cli = _pair(api, mode)
    data = pattern(100)
    assert api.libvchan_send(cli, data, 100) == 100
    api.libvchan_close(cli)
    _wait_disconnected(api, srv)
    buf = bytearray(200)
    assert bounded_err(api, api.libvchan_recv, srv, buf, 200, timeout=QUICK) == (-1, errno.EPIPE)
    assert api.libvchan_data_ready(srv) == 100
    assert bounded(api.libvchan_recv, srv, buf, 60, timeout=QUICK) == 60
    assert buf[:60] == data[:60]
    assert bounded(api.libvchan_recv, srv, buf, 40, timeout=QUICK) == 40
    assert buf[:40] == data[60:]
    assert bounded(api.libvchan_recv, srv, buf, 1, timeout=QUICK) == -1


@pytest.mark.spec("READ-DATA-BEFORE-GONE")
def test_must_recv_blocking_waiting_then_peer_closes_minus1_bytes_stay(api, sockdir):
    srv, cli = _pair(api, "blocking")
    buf = bytearray(100)
    bg = run_bg(api.libvchan_recv, srv, buf, 100)
    bg.assert_blocked()
    assert api.libvchan_send(cli, b"x" * 50, 50) == 50
    bg.assert_blocked(0.1)
    api.libvchan_close(cli)
    assert bg.result() == -1
    out = read_all_until_eof(api, srv)
    assert out == b"x" * 50


def test_must_recv_nonblocking_insufficient_returns_0_consumes_nothing(api, sockdir):
    srv, cli = _pair(api, "nonblocking")
    assert api.libvchan_send(cli, b"0123456789", 10) == 10
    wait_until(lambda: api.libvchan_data_ready(srv) == 10)
    buf = bytearray(20)
    assert bounded(api.libvchan_recv, srv, buf, 20, timeout=QUICK) == 0
    assert api.libvchan_data_ready(srv) == 10
    assert bounded(api.libvchan_recv, srv, buf, 10, timeout=QUICK) == 10
    assert buf[:10] == b"0123456789"


@pytest.mark.parametrize(("side", "ring"), [("server", SRV_READ_RING), ("client", CLI_RING)])
def test_must_recv_blocking_more_than_ring_minus1(api, sockdir, side, ring):
    srv, cli = _pair(api, "blocking")
    h = srv if side == "server" else cli
    buf = bytearray(ring + 1)
    assert bounded_err(api, api.libvchan_recv, h, buf, ring + 1, timeout=QUICK) == (
        -1,
        errno.EMSGSIZE,
    )


def test_must_recv_nonblocking_more_than_ring_returns_0_while_connected(api, sockdir):
    srv, cli = _pair(api, "nonblocking")
    assert api.libvchan_send(cli, b"abc", 3) == 3
    wait_until(lambda: api.libvchan_data_ready(srv) == 3)
    buf = bytearray(SRV_READ_RING + 1)
    assert bounded(api.libvchan_recv, srv, buf, SRV_READ_RING + 1, timeout=QUICK) == 0
    assert api.libvchan_data_ready(srv) == 3


@pytest.mark.spec("DATA-READY-KEEPS-BYTES")
@pytest.mark.parametrize("mode", MODES)
def test_must_recv_more_than_ring_after_peer_gone_minus1(api, sockdir, mode):
    """Peer gone and fewer than n bytes left (n > ring): -1, whatever the mode."""
    srv, cli = _pair(api, mode)
    assert api.libvchan_send(cli, b"abc", 3) == 3
    api.libvchan_close(cli)
    _wait_disconnected(api, srv)
    buf = bytearray(SRV_READ_RING + 1)
    ret = bounded_err(api, api.libvchan_recv, srv, buf, SRV_READ_RING + 1, timeout=QUICK)
    assert ret[0] == -1
    assert api.libvchan_data_ready(srv) == 3, "nothing consumed"


def test_must_recv_blocking_insufficient_waits_for_the_rest(api, sockdir):
    srv, cli = _pair(api, "blocking")
    assert api.libvchan_send(cli, b"first", 5) == 5
    buf = bytearray(11)
    bg = run_bg(api.libvchan_recv, srv, buf, 11)
    bg.assert_blocked()
    assert api.libvchan_send(cli, b"second", 6) == 6
    assert bg.result() == 11
    assert buf == b"firstsecond"


# ---------------------------------------------------------------------------- write


@pytest.mark.parametrize("mode", MODES)
def test_must_write_sufficient_space_writes_all(api, sockdir, mode):
    srv, cli = _pair(api, mode)
    data = pattern(SRV_WRITE_RING)
    assert bounded(api.libvchan_write, srv, data, len(data), timeout=QUICK) == len(data)
    assert bounded(api.libvchan_write, cli, data, 100, timeout=QUICK) == 100
    assert read_exact(api, cli, len(data)) == data
    assert read_exact(api, srv, 100) == data[:100]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("call", ["write", "send"])
def test_must_write_and_send_peer_gone_minus1(api, sockdir, mode, call):
    srv, cli = _pair(api, mode)
    api.libvchan_close(cli)
    _wait_disconnected(api, srv)
    fn = getattr(api, f"libvchan_{call}")
    assert bounded_err(api, fn, srv, b"x" * 10, 10, timeout=QUICK) == (-1, errno.EPIPE)


@pytest.mark.parametrize("mode", MODES)
def test_must_send_peer_gone_checked_first_even_with_space(api, sockdir, mode):
    srv, cli = _pair(api, mode)
    assert api.libvchan_buffer_space(srv) > 0
    api.libvchan_close(cli)
    _wait_disconnected(api, srv)
    assert bounded_err(api, api.libvchan_send, srv, b"x", 1, timeout=QUICK) == (-1, errno.EPIPE)


def test_must_write_nonblocking_insufficient_returns_what_fits(api, sockdir):
    srv, cli = _pair(api, "nonblocking")
    data = pattern(SRV_WRITE_RING * 64, seed=3)
    first = api.libvchan_write(srv, data, len(data))
    assert 0 < first <= len(data)
    accepted = data[:first] + _fill(api, srv, seed=4)
    assert api.libvchan_write(srv, b"y" * 10, 10) == 0, "full: returns 0"
    assert read_exact(api, cli, len(accepted)) == accepted
    assert api.libvchan_data_ready(cli) == 0


@pytest.mark.parametrize(
    ("side", "mins", "ring"),
    [("server", (65536, 65536), 65536), ("client", (0, 0), CLI_RING), ("server", (0, 0), 2048)],
)
def test_must_write_nonblocking_returns_at_most_write_ring(api, sockdir, side, mins, ring):
    """Three rings' worth to a peer whose ring is empty: at most the write ring is taken,
    however much more the kernel's socket buffers could hold."""
    srv, cli = _pair(api, "nonblocking", read_min=mins[0], write_min=mins[1])
    h, peer = (srv, cli) if side == "server" else (cli, srv)
    assert api.libvchan_data_ready(peer) == 0
    data = pattern(3 * ring, seed=8)
    n = api.libvchan_write(h, data, len(data))
    assert 0 < n <= ring, f"non-blocking write took {n} bytes, write ring {ring}"
    assert read_exact(api, peer, n) == data[:n]
    assert api.libvchan_data_ready(peer) == 0


def test_must_write_blocking_larger_than_ring_writes_in_parts_returns_n(api, sockdir):
    srv, cli = _pair(api, "blocking")
    data = pattern(300000, seed=5)
    wr = run_bg(api.libvchan_write, srv, data, len(data))
    assert read_exact(api, cli, len(data)) == data
    assert wr.result() == len(data)


def _stream_writer(api, h, chunks: list[bytes], call: str) -> int:
    fn = getattr(api, f"libvchan_{call}")
    for c in chunks:
        assert fn(h, c, len(c)) == len(c), api.last_errno()
    return len(chunks)


@pytest.mark.parametrize("call", ["write", "send"])
def test_must_write_and_send_blocking_insufficient_wait(api, sockdir, call):
    """Blocking writes to a peer that does not read end up waiting; reading releases them."""
    srv, cli = _pair(api, "blocking")
    size = 65536 if call == "write" else SRV_WRITE_RING
    chunks = [pattern(size, seed=i) for i in range((16 << 20) // size)]
    bg = run_bg(_stream_writer, api, srv, chunks, call)
    bg.assert_blocked()  # 16 MiB exceed every buffer: some call must be waiting
    api.libvchan_set_blocking(cli, False)
    assert read_exact(api, cli, len(chunks) * size, timeout=2 * TIMEOUT) == b"".join(chunks)
    assert bg.result() == len(chunks)


# ---------------------------------------------------------------------------- send


@pytest.mark.parametrize("mode", MODES)
def test_must_send_sufficient_sends_all(api, sockdir, mode):
    srv, cli = _pair(api, mode)
    data = pattern(SRV_WRITE_RING)
    assert bounded(api.libvchan_send, srv, data, len(data), timeout=QUICK) == len(data)
    assert read_exact(api, cli, len(data)) == data


def test_must_send_nonblocking_insufficient_returns_0_writes_nothing(api, sockdir):
    srv, cli = _pair(api, "nonblocking")
    accepted = _fill(api, srv)
    assert api.libvchan_send(srv, b"z" * 100, 100) == 0
    assert read_exact(api, cli, len(accepted)) == accepted
    wait_until(lambda: api.libvchan_buffer_space(srv) >= 100)
    assert api.libvchan_send(srv, b"w" * 100, 100) == 100
    assert read_exact(api, cli, 100) == b"w" * 100, "no partial send before"
    assert api.libvchan_data_ready(cli) == 0


@pytest.mark.parametrize(("side", "ring"), [("server", SRV_WRITE_RING), ("client", CLI_RING)])
def test_must_send_blocking_more_than_ring_minus1(api, sockdir, side, ring):
    srv, cli = _pair(api, "blocking")
    h, peer = (srv, cli) if side == "server" else (cli, srv)
    data = bytes(ring + 1)
    assert bounded_err(api, api.libvchan_send, h, data, ring + 1, timeout=QUICK) == (
        -1,
        errno.EMSGSIZE,
    )
    assert api.libvchan_send(h, b"ok", 2) == 2
    assert read_exact(api, peer, 2) == b"ok", "nothing of the refused send was written"


# ---------------------------------------------------------------------------- WAITING server


@pytest.mark.spec("WAITING-SEND-BUFFERS")
@pytest.mark.parametrize("mode", MODES)
def test_must_waiting_server_send_and_write_buffer_until_client_connects(api, sockdir, mode):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    api.libvchan_set_blocking(srv, mode == "blocking")
    assert bounded(api.libvchan_send, srv, b"handshake", 9, timeout=QUICK) == 9
    rest = pattern(SRV_WRITE_RING - 9)
    assert bounded(api.libvchan_write, srv, rest, len(rest), timeout=QUICK) == len(rest)
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    assert read_exact(api, cli, SRV_WRITE_RING) == b"handshake" + rest


@pytest.mark.spec("WAITING-SEND-BUFFERS")
def test_must_waiting_server_accepts_up_to_write_ring(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    api.libvchan_set_blocking(srv, False)
    data = pattern(5 * SRV_WRITE_RING)
    n = api.libvchan_write(srv, data, len(data))
    assert 0 < n <= SRV_WRITE_RING
    if n == SRV_WRITE_RING:
        assert api.libvchan_write(srv, b"x", 1) == 0
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert read_exact(api, cli, n) == data[:n]


def test_must_waiting_server_blocking_write_beyond_ring_waits_for_client(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    data = pattern(5 * SRV_WRITE_RING)
    bg = run_bg(api.libvchan_write, srv, data, len(data))
    bg.assert_blocked()
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert read_exact(api, cli, len(data)) == data
    assert bg.result() == len(data)


# ---------------------------------------------------------------------------- delivery


def _chunky_writer(api, h, data: bytes, seed: int) -> int:
    rnd = random.Random(seed)
    off = 0
    while off < len(data):
        k = min(len(data) - off, rnd.choice([1, 7, 100, 1000, 4096, 5000, 70000]))
        if rnd.random() < 0.5:
            k = min(k, 2048)
            n = api.libvchan_send(h, data[off : off + k], k)
        else:
            n = api.libvchan_write(h, data[off : off + k], k)
        assert n == k, (n, k, api.last_errno())
        off += n
    return off


def _chunky_reader(api, h, total: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    out = bytearray()
    buf = bytearray(70000)
    end = time.monotonic() + TIMEOUT
    while len(out) < total:
        k = min(total - len(out), rnd.choice([1, 3, 512, 1024, 4000, 65536, 70000]))
        if rnd.random() < 0.5 and k <= 1024:
            n = api.libvchan_recv(h, buf, k)
            assert n == k, (n, k, api.last_errno())
        else:
            n = api.libvchan_read(h, buf, k)
            assert n > 0, (n, api.last_errno())
        out += buf[:n]
        assert time.monotonic() < end
    return bytes(out)


def test_must_deliver_in_order_once_any_chunking_both_ways(api, sockdir):
    srv, cli = _pair(api, "blocking")
    a = pattern(1 << 20, seed=11)
    b = pattern(1 << 20, seed=12)
    w1 = run_bg(_chunky_writer, api, srv, a, 1)
    w2 = run_bg(_chunky_writer, api, cli, b, 2)
    r1 = run_bg(_chunky_reader, api, cli, len(a), 3)
    r2 = run_bg(_chunky_reader, api, srv, len(b), 4)
    assert r1.result() == a
    assert r2.result() == b
    assert w1.result() == len(a) and w2.result() == len(b)
    assert api.libvchan_data_ready(srv) == 0 and api.libvchan_data_ready(cli) == 0


@pytest.mark.spec("DELIVER-WITHOUT-WRITER")
def test_must_deliver_accepted_bytes_with_no_further_writer_call(api, sockdir):
    """The writer fills everything it is promised, then makes no call at all."""
    srv, cli = _pair(api, "nonblocking", read_min=65536, write_min=65536)
    accepted = bytearray()
    data = pattern(1 << 20, seed=13)
    while True:
        bs = api.libvchan_buffer_space(srv)
        n = api.libvchan_write(srv, data[len(accepted) :], bs) if bs else 0
        assert n == bs
        accepted += data[len(accepted) : len(accepted) + n]
        if bs == 0:
            break
    extra = api.libvchan_write(srv, data[len(accepted) :], 100000)
    assert extra >= 0
    accepted += data[len(accepted) : len(accepted) + extra]
    assert len(accepted) > 65536
    # the writer now sleeps: only the reader makes calls
    assert read_exact(api, cli, len(accepted)) == bytes(accepted)


@pytest.mark.spec("DELIVER-WITHOUT-WRITER")
def test_must_deliver_more_than_ring_and_kernel_buffer_after_writer_returns(api, sockdir):
    """A blocking write larger than every buffer returns; then the writer makes no call."""
    srv, cli = _pair(api, "blocking")
    data = pattern(4 << 20, seed=14)
    wr = run_bg(api.libvchan_write, srv, data, len(data))
    got = bytearray()
    buf = bytearray(65536)
    # read slowly at first so the writer has to wait, then at full speed
    while len(got) < len(data) and not wr.done():
        n = api.libvchan_read(cli, buf, 1000 if len(got) < 200000 else len(buf))
        assert n > 0
        got += buf[:n]
    assert wr.result() == len(data)
    api.libvchan_set_blocking(cli, False)
    got += read_exact(api, cli, len(data) - len(got))
    assert got == data


# ---------------------------------------------------------------------------- data_ready


def test_must_data_ready_counts_bytes_queued_in_kernel(api, sockdir):
    srv, cli = _pair(api, "nonblocking")
    assert api.libvchan_data_ready(srv) == 0
    assert api.libvchan_send(cli, b"x" * 1000, 1000) == 1000
    # no read call: the bytes sit in the kernel and still count
    wait_until(lambda: api.libvchan_data_ready(srv) == 1000)
    assert api.libvchan_send(srv, b"y" * 10, 10) == 10
    wait_until(lambda: api.libvchan_data_ready(cli) == 10)


def test_must_data_ready_capped_at_read_ring(api, sockdir):
    srv, cli = _pair(api, "nonblocking")
    assert api.libvchan_write(cli, bytes(30000), 30000) == 30000
    wait_until(lambda: api.libvchan_data_ready(srv) == SRV_READ_RING)
    for _ in range(20):
        assert api.libvchan_data_ready(srv) == SRV_READ_RING


# ---------------------------------------------------------------------------- buffer_space


@pytest.mark.spec("SPACE-HONEST")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("call", ["write", "send"])
@pytest.mark.parametrize("side", ["server", "client"])
def test_must_buffer_space_is_honest_whole_writes(api, sockdir, mode, call, side):
    srv, cli = _pair(api, mode)
    h, peer, ring = (srv, cli, SRV_WRITE_RING) if side == "server" else (cli, srv, CLI_RING)
    fn = getattr(api, f"libvchan_{call}")
    data = pattern(4 << 20, seed=15)
    off = 0
    rounds = 0
    while True:
        bs = api.libvchan_buffer_space(h)
        assert 0 <= bs <= ring, f"buffer_space {bs} above the write ring {ring}"
        if bs == 0:
            break
        t0 = time.monotonic()
        assert bounded(fn, h, data[off : off + bs], bs, timeout=2) == bs
        assert time.monotonic() - t0 < QUICK, "a promised write waited"
        off += bs
        rounds += 1
        assert off < len(data), "buffer_space never reached 0 with a peer that does not read"
    assert rounds >= 1 and off >= ring
    assert read_exact(api, peer, off) == data[:off]


@pytest.mark.spec("SPACE-HONEST")
@pytest.mark.parametrize("mode", MODES)
def test_must_buffer_space_is_honest_one_byte_writes(api, sockdir, mode):
    srv, cli = _pair(api, mode)

    def writer() -> int:
        total = 0
        for _ in range(3):
            bs = api.libvchan_buffer_space(cli)
            assert 0 <= bs <= CLI_RING
            for i in range(bs):
                fn = api.libvchan_write if i % 2 else api.libvchan_send
                n = fn(cli, b"\x5a", 1)
                assert n == 1, (i, bs, n)
            total += bs
        return total

    # Up to 3 x 65536 one-byte calls: CPU-bound, and slow on the pure engine when the suite
    # runs on more workers than CPUs. The deadline only guards against a hang.
    total = bounded(writer, timeout=3 * TIMEOUT)
    assert total >= CLI_RING
    got = bytearray()
    buf = bytearray(65536)
    end = time.monotonic() + TIMEOUT
    while len(got) < total:
        n = api.libvchan_read(srv, buf, len(buf)) if api.libvchan_data_ready(srv) else 0
        assert n >= 0
        got += buf[:n]
        assert time.monotonic() < end
    assert got == b"\x5a" * total


@pytest.mark.spec("SPACE-HONEST")
def test_must_buffer_space_honest_on_waiting_server(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    bs = api.libvchan_buffer_space(srv)
    assert 0 < bs <= SRV_WRITE_RING
    assert bounded(api.libvchan_send, srv, bytes(bs), bs, timeout=QUICK) == bs
    assert api.libvchan_buffer_space(srv) == 0


@pytest.mark.spec("SPACE-HONEST")
def test_must_buffer_space_never_above_write_ring_during_transfer(api, sockdir):
    srv, cli = _pair(api, "blocking")
    data = pattern(1 << 20, seed=16)
    wr = run_bg(api.libvchan_write, srv, data, len(data))
    rd = run_bg(read_exact, api, cli, len(data))
    while True:  # sample at least once, then until the transfer is over
        assert api.libvchan_buffer_space(srv) <= SRV_WRITE_RING
        assert api.libvchan_buffer_space(cli) <= CLI_RING
        if rd.done():
            break
    assert rd.result() == data
    assert wr.result() == len(data)
    assert api.libvchan_buffer_space(srv) <= SRV_WRITE_RING


def test_buffer_space_recovers_whole_write_ring_after_peer_drains(api, sockdir):
    srv, cli = _pair(api, "nonblocking")
    accepted = _fill(api, srv)
    assert read_exact(api, cli, len(accepted)) == accepted
    wait_until(lambda: api.libvchan_buffer_space(srv) == SRV_WRITE_RING)


@pytest.mark.spec("SPACE-HONEST")
def test_must_qrexec_pattern_never_blocks(api, sockdir):
    """qrexec: gate on buffer_space() > 8, send an 8-byte header, write buffer_space()-8."""
    srv, cli = _pair(api, "blocking")

    def producer() -> int:
        sent = 0
        for _ in range(200):
            bs = api.libvchan_buffer_space(srv)
            if bs <= 8:
                break
            assert api.libvchan_send(srv, b"HDR-HDR-", 8) == 8
            body = bs - 8
            assert api.libvchan_write(srv, bytes(body), body) == body
            sent += bs
        return sent

    sent = bounded(producer, timeout=TIMEOUT)
    assert sent >= SRV_WRITE_RING
    assert len(read_exact(api, cli, sent)) == sent
    assert api.libvchan_is_open(srv) == VCHAN_CONNECTED
