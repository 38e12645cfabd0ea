"""SPEC §5 (notification): fd_for_select() and wait().

Consumption events follow Xen's request bits: the peer's reads make our fd readable only
after this end asked, by ``buffer_space()`` or a write/send that could not take all its bytes
at once; a request is one-shot and a ``wait()`` does not cancel it. Data arrival, a client
connecting and the peer closing always make the fd readable. Negative checks ("the sender
was not woken") are made only after the consumption is known to have happened (the peer's
``recv()`` returned the message in this very thread, and its ``data_ready()`` is 0 again).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from tests.conftest import (
    SETTLE,
    TIMEOUT,
    VCHAN_CONNECTED,
    VCHAN_DISCONNECTED,
    VCHAN_WAITING,
    Bg,
    bounded,
    connected_pair,
    fd_readable,
    pattern,
    read_exact,
    run_bg,
    scaled,
    settle,
    sock_path,
    wait_until,
)

#: A wait() that must return at once returns well within this.
QUICK = scaled(1.0)


def _fd(api, h) -> int:
    return api.libvchan_fd_for_select(h)


def _fill(api, h) -> int:
    api.libvchan_set_blocking(h, False)
    total = 0
    data = bytes(65536)
    while (n := api.libvchan_write(h, data, len(data))) > 0:
        total += n
    assert n == 0
    return total


# ---------------------------------------------------------------------------- fd number


def test_must_select_fd_same_number_from_init_to_close_server(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    fd = _fd(api, srv)
    assert fd >= 0
    assert api.libvchan_send(srv, b"hello", 5) == 5
    assert _fd(api, srv) == fd
    cli = bounded(api.libvchan_client_init, 0, 1)
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
    assert _fd(api, srv) == fd
    assert read_exact(api, cli, 5) == b"hello"
    assert api.libvchan_send(cli, b"x", 1) == 1
    assert read_exact(api, srv, 1) == b"x"
    assert _fd(api, srv) == fd
    api.libvchan_close(cli)
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_DISCONNECTED)
    assert _fd(api, srv) == fd


def test_must_select_fd_same_number_from_init_to_close_client(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    cli = bounded(api.libvchan_client_init, 0, 1)
    fd = _fd(api, cli)
    assert fd >= 0
    assert api.libvchan_send(srv, b"y", 1) == 1
    assert read_exact(api, cli, 1) == b"y"
    assert _fd(api, cli) == fd
    api.libvchan_close(srv)
    wait_until(lambda: api.libvchan_is_open(cli) == VCHAN_DISCONNECTED)
    assert _fd(api, cli) == fd


def test_must_select_fd_same_number_async_client(api, sockdir):
    ret = api.libvchan_client_init_async(0, 1)
    assert ret is not None
    h, watch = ret
    assert _fd(api, h) == watch
    api.libvchan_server_init(0, 1, 0, 0)
    assert bounded(api.libvchan_client_init_async_finish, h, True) == 0
    assert _fd(api, h) == watch


# ---------------------------------------------------------------------------- events


@pytest.mark.spec("NOTIFY-WAITING-QUIET")
def test_must_waiting_server_fd_not_readable_before_client_connects(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    fd = _fd(api, srv)
    assert not fd_readable(fd, SETTLE)
    # qrexec sends a handshake before any client exists: still not "connected"
    assert api.libvchan_send(srv, b"hs", 2) == 2
    assert api.libvchan_data_ready(srv) == 0
    assert api.libvchan_buffer_space(srv) >= 0
    assert api.libvchan_is_open(srv) == 2
    assert not fd_readable(fd, SETTLE)


@pytest.mark.spec("NOTIFY-WAITING-QUIET")
def test_must_server_fd_readable_when_client_connected_qrexec_pattern(api, sockdir):
    """qrexec: one poll() on the fd, one wait(), then the channel is treated as connected."""
    srv = api.libvchan_server_init(0, 1, 0, 0)
    fd = _fd(api, srv)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.connect(str(sock_path(sockdir, 0, 0, 1)))
        assert fd_readable(fd, TIMEOUT)
        assert bounded(api.libvchan_wait, srv) == 0
        assert api.libvchan_is_open(srv) == VCHAN_CONNECTED
    finally:
        c.close()


@pytest.mark.spec("NOTIFY-WAITING-QUIET")
def test_must_wait_on_waiting_server_blocks_until_client_connects(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    bg = run_bg(api.libvchan_wait, srv)
    bg.assert_blocked()
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    assert bg.result() == 0
    assert api.libvchan_is_open(srv) == VCHAN_CONNECTED


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
def test_must_fd_readable_after_data_arrives(api, sockdir):
    srv, cli = connected_pair(api)
    for h, peer in ((srv, cli), (cli, srv)):
        settle(api, h)
        assert api.libvchan_data_ready(h) == 0
        assert not fd_readable(_fd(api, h))
        assert api.libvchan_send(peer, b"data", 4) == 4
        assert fd_readable(_fd(api, h), TIMEOUT)


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
def test_must_fd_readable_after_peer_consumed_data(api, sockdir):
    """Asked twice (the fill's last write fell short, then buffer_space()): woken once."""
    srv, cli = connected_pair(api)
    accepted = _fill(api, srv)
    settle(api, srv)
    api.libvchan_buffer_space(srv)  # called while full: must not swallow the coming event
    assert not fd_readable(_fd(api, srv))
    assert read_exact(api, cli, accepted) == bytes(accepted)
    assert fd_readable(_fd(api, srv), TIMEOUT), "space freed but writer not woken"


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
@pytest.mark.parametrize("closer", ["client", "server"])
def test_must_fd_readable_after_peer_closes(api, sockdir, closer):
    srv, cli = connected_pair(api)
    gone, stay = (cli, srv) if closer == "client" else (srv, cli)
    settle(api, stay)
    api.libvchan_close(gone)
    assert fd_readable(_fd(api, stay), TIMEOUT)
    assert bounded(api.libvchan_wait, stay) == 0
    assert api.libvchan_is_open(stay) == VCHAN_DISCONNECTED


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
def test_must_fd_readable_after_plain_peer_closes_with_our_data_unread(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(str(sock_path(sockdir, 0, 0, 1)))
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
    settle(api, srv)
    # the peer vanishes with our data unread in its queue (ECONNRESET on our side)
    assert api.libvchan_send(srv, b"unread", 6) == 6
    c.close()
    assert fd_readable(_fd(api, srv), TIMEOUT)
    assert api.libvchan_is_open(srv) == VCHAN_DISCONNECTED


# ---------------------------------------------------------------------------- only wait() clears


def _make_readable_by_data(api, h, peer) -> None:
    settle(api, h)
    assert api.libvchan_send(peer, b"0123456789", 10) == 10
    assert fd_readable(_fd(api, h), TIMEOUT)
    wait_until(lambda: api.libvchan_data_ready(h) == 10)


CALLS = ["read_some", "read_all", "recv", "write", "send", "data_ready", "buffer_space", "is_open"]


def _do(api, h, call: str) -> None:
    buf = bytearray(100)
    if call == "read_some":
        assert api.libvchan_read(h, buf, 3) > 0
    elif call == "read_all":
        assert read_exact(api, h, 10) == b"0123456789"
    elif call == "recv":
        assert api.libvchan_recv(h, buf, 10) == 10
    elif call == "write":
        assert api.libvchan_write(h, b"w", 1) == 1
    elif call == "send":
        assert api.libvchan_send(h, b"s", 1) == 1
    elif call == "data_ready":
        assert api.libvchan_data_ready(h) == 10
    elif call == "buffer_space":
        assert api.libvchan_buffer_space(h) > 0
    elif call == "is_open":
        assert api.libvchan_is_open(h) == VCHAN_CONNECTED


@pytest.mark.spec("NOTIFY-WAIT-AFTER-POLL")
@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("mode", ["blocking", "nonblocking"])
def test_must_only_wait_clears_readiness(api, sockdir, call, mode):
    srv, cli = connected_pair(api)
    api.libvchan_set_blocking(srv, mode == "blocking")
    _make_readable_by_data(api, srv, cli)
    for _ in range(1 if call in ("read_all", "recv") else 3):
        _do(api, srv, call)
    assert fd_readable(_fd(api, srv)), f"{call}() swallowed the event"
    assert bounded(api.libvchan_wait, srv, timeout=1) == 0


@pytest.mark.spec("NOTIFY-WAIT-AFTER-POLL")
@pytest.mark.parametrize("call", ["read", "recv", "data_ready", "buffer_space", "is_open", "send"])
def test_must_only_wait_clears_peer_closed_event(api, sockdir, call):
    srv, cli = connected_pair(api)
    api.libvchan_set_blocking(srv, False)
    settle(api, srv)
    assert api.libvchan_send(cli, b"ab", 2) == 2
    api.libvchan_close(cli)
    assert fd_readable(_fd(api, srv), TIMEOUT)
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_DISCONNECTED)
    buf = bytearray(10)
    for _ in range(3):
        if call in ("read", "recv"):
            getattr(api, f"libvchan_{call}")(srv, buf, 1)
        elif call == "send":
            assert api.libvchan_send(srv, b"x", 1) == -1
        else:
            getattr(api, f"libvchan_{call}")(srv)
    assert fd_readable(_fd(api, srv)), f"{call}() swallowed the peer-closed event"
    assert bounded(api.libvchan_wait, srv, timeout=1) == 0


@pytest.mark.spec("NOTIFY-WAIT-AFTER-POLL")
@pytest.mark.parametrize("call", ["data_ready", "buffer_space", "is_open"])
def test_must_only_wait_clears_client_connected_event(api, sockdir, call):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    for _ in range(3):
        getattr(api, f"libvchan_{call}")(srv)
    assert api.libvchan_is_open(srv) == VCHAN_CONNECTED
    assert fd_readable(_fd(api, srv), TIMEOUT), f"{call}() swallowed the connect event"
    assert bounded(api.libvchan_wait, srv, timeout=1) == 0


def test_must_wait_blocks_until_readable_then_returns_0_and_clears(api, sockdir):
    srv, cli = connected_pair(api)
    settle(api, srv)
    bg = run_bg(api.libvchan_wait, srv)
    bg.assert_blocked()
    assert api.libvchan_send(cli, b"!", 1) == 1
    assert bg.result() == 0
    assert not fd_readable(_fd(api, srv), SETTLE)


# ---------------------------------------------------------------------------- no spinning


@pytest.mark.parametrize("side", ["server", "client"])
def test_must_no_spinning_fd_unreadable_after_wait_while_unread_data_waits(api, sockdir, side):
    srv, cli = connected_pair(api)
    h, peer = (srv, cli) if side == "server" else (cli, srv)
    settle(api, h)
    assert api.libvchan_send(peer, b"unread", 6) == 6
    assert fd_readable(_fd(api, h), TIMEOUT)
    assert bounded(api.libvchan_wait, h) == 0
    wait_until(lambda: api.libvchan_data_ready(h) == 6)
    assert not fd_readable(_fd(api, h), SETTLE), "fd readable again with nothing new"
    assert api.libvchan_data_ready(h) == 6
    # and a blocked wait() sleeps until something new happens
    bg = run_bg(api.libvchan_wait, h)
    bg.assert_blocked()
    assert api.libvchan_send(peer, b"new", 3) == 3
    assert bg.result() == 0


def test_must_no_spinning_when_own_output_full(api, sockdir):
    """An application whose output is full stops reading; wait() must let it sleep."""
    srv, cli = connected_pair(api)
    _fill(api, srv)
    assert api.libvchan_send(cli, b"in", 2) == 2
    wait_until(lambda: api.libvchan_data_ready(srv) == 2)
    settle(api, srv)
    assert not fd_readable(_fd(api, srv), SETTLE)


@pytest.mark.spec("DATA-READY-KEEPS-BYTES")
def test_must_no_spinning_after_disconnect_wait(api, sockdir):
    srv, cli = connected_pair(api)
    settle(api, srv)
    assert api.libvchan_send(cli, b"bye", 3) == 3
    api.libvchan_close(cli)
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_DISCONNECTED)
    settle(api, srv)
    assert not fd_readable(_fd(api, srv), SETTLE)
    assert api.libvchan_data_ready(srv) == 3


# ---------------------------------------------------------------------------- no lost wake-up


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
def test_must_no_lost_wakeup_data_after_data_ready_returned(api, sockdir):
    srv, cli = connected_pair(api)
    for i in range(20):
        settle(api, srv)
        assert api.libvchan_data_ready(srv) == 0
        assert api.libvchan_send(cli, b"z", 1) == 1
        assert fd_readable(_fd(api, srv), TIMEOUT), f"round {i}: event lost"
        assert read_exact(api, srv, 1) == b"z"


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
def test_must_no_lost_wakeup_space_after_buffer_space_returned(api, sockdir):
    srv, cli = connected_pair(api)
    for i in range(3):
        accepted = _fill(api, srv)
        settle(api, srv)
        assert api.libvchan_buffer_space(srv) == 0
        assert read_exact(api, cli, accepted) == bytes(accepted)  # _fill writes zeros
        assert fd_readable(_fd(api, srv), TIMEOUT), f"round {i}: space event lost"


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
def test_must_requested_consumption_wakes_when_a_write_read_in_parts_is_finished(api, sockdir):
    """The peer reads one write in three parts: the part that finishes it wakes the writer.

    (A read that stops inside the write frees no space yet: see DESIGN.md, Notification.)
    """
    srv, cli = connected_pair(api)
    settle(api, srv)
    settle(api, cli)
    assert api.libvchan_buffer_space(cli) > 1026  # asks to be told of consumption
    data = pattern(1026)
    assert api.libvchan_write(cli, data, len(data)) == len(data)
    got = read_exact(api, srv, 171) + read_exact(api, srv, 854) + read_exact(api, srv, 1)
    assert got == data
    assert fd_readable(_fd(api, cli), TIMEOUT), "asked, peer finished the write, not woken"
    assert bounded(api.libvchan_wait, cli) == 0


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
def test_must_no_lost_wakeup_concurrent_waiter(api, sockdir):
    """A thread in the classic loop (data_ready, else wait) always sees every message."""
    srv, cli = connected_pair(api)
    settle(api, srv)
    n_msgs = 200

    def consumer() -> bytes:
        out = bytearray()
        buf = bytearray(100)
        while len(out) < n_msgs:
            if api.libvchan_data_ready(srv) == 0:
                assert api.libvchan_wait(srv) == 0
                continue
            n = api.libvchan_read(srv, buf, 100)
            assert n > 0
            out += buf[:n]
        return bytes(out)

    bg = run_bg(consumer)
    msg = pattern(n_msgs)
    for i in range(n_msgs):
        assert api.libvchan_send(cli, msg[i : i + 1], 1) == 1
        if i % 10 == 0:
            time.sleep(0.001)  # pacing: let the consumer catch up and block sometimes
    assert bg.result() == msg


# ---------------------------------------------------------------------------- requests (Xen's)


def _ends(api, side: str, **kw) -> tuple[Any, Any]:
    """(this end, its peer), connected, both fds settled (no pending event)."""
    srv, cli = connected_pair(api, **kw)
    settle(api, srv)
    settle(api, cli)
    return (srv, cli) if side == "server" else (cli, srv)


def _fill_send(api, h, chunk: int = 512) -> int:
    """Non-blocking sends that fit until one returns 0 (no write() involved)."""
    api.libvchan_set_blocking(h, False)
    data = bytes(chunk)
    total = 0
    for _ in range(100000):
        n = api.libvchan_send(h, data, chunk)
        if n == 0:
            return total
        assert n == chunk, f"send returned {n} of {chunk}"
        total += n
    raise AssertionError("non-blocking send never returned 0 with a peer that does not read")


def _consumed(api, peer, data: bytes) -> None:
    """The peer reads ``data`` (all of it) and has nothing left: consumption is a fact."""
    assert read_exact(api, peer, len(data)) == data
    assert api.libvchan_data_ready(peer) == 0


def _not_woken(api, h, what: str) -> None:
    assert not fd_readable(_fd(api, h)), what


def _woken(api, h, bg: Bg | None, what: str) -> None:
    """The fd became readable; or, with a wait() blocked in ``bg``, that wait() returned."""
    if bg is None:
        assert fd_readable(_fd(api, h), TIMEOUT), what
    else:
        bg.thread.join(TIMEOUT)
        assert bg.done(), what + " (the blocked wait() still blocks)"
        assert bg.result() == 0


def _wait_between(api, h, peer, between: str) -> Bg | None:
    """A wait() after the request and before the consumption: it must not cancel it.

    ``returned``: the peer sends a byte (data arrival), the fd polls readable, wait()
    returns and the fd is clear again (returns None). ``blocked``: a wait() is left blocked
    in a thread, to be woken by the consumption (returns that thread).
    """
    if between == "returned":
        assert api.libvchan_send(peer, b"!", 1) == 1
        assert fd_readable(_fd(api, h), TIMEOUT)
        assert bounded(api.libvchan_wait, h) == 0
        assert not fd_readable(_fd(api, h), SETTLE), "fd readable after wait() with nothing new"
        return None
    settle(api, h)
    bg = run_bg(api.libvchan_wait, h)
    bg.assert_blocked()
    return bg


@pytest.mark.spec("NOTIFY-UNASKED-QUIET")
@pytest.mark.parametrize("mode", ["blocking", "nonblocking"])
@pytest.mark.parametrize("size", [1, 1000])
@pytest.mark.parametrize("first", ["server", "client"])
def test_must_select_ping_pong_peer_reads_do_not_wake_the_sender(api, sockdir, first, size, mode):
    """20 exchanges (poll, wait, data_ready, recv, send; no buffer_space): each message wakes
    its receiver once and its sender not at all."""
    a, b = _ends(api, first)
    for h in (a, b):
        api.libvchan_set_blocking(h, mode == "blocking")
    buf = bytearray(size)
    for i in range(20):
        for j, (sender, receiver) in enumerate(((a, b), (b, a))):
            msg = pattern(size, seed=2 * i + j)
            assert api.libvchan_send(sender, msg, size) == size
            # the receiver's select loop
            assert fd_readable(_fd(api, receiver), TIMEOUT), f"exchange {i}: message lost"
            assert bounded(api.libvchan_wait, receiver) == 0
            wait_until(lambda r=receiver: api.libvchan_data_ready(r) == size)
            assert api.libvchan_recv(receiver, buf, size) == size
            assert buf == msg
            assert api.libvchan_data_ready(receiver) == 0  # consumed, not just stashed away
            _not_woken(api, sender, f"exchange {i}.{j}: the peer's recv() woke the sender")
            _not_woken(api, receiver, f"exchange {i}.{j}: receiver woken twice for one message")
    assert not fd_readable(_fd(api, a), SETTLE), "a late wake-up after the exchanges"
    assert not fd_readable(_fd(api, b)), "a late wake-up after the exchanges"


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
@pytest.mark.parametrize("between", ["none", "returned", "blocked"])
@pytest.mark.parametrize("short", ["partial", "zero"])
@pytest.mark.parametrize("side", ["server", "client"])
def test_must_short_nonblocking_write_requests_consumption_event(
    api, sockdir, side, short, between
):
    """A non-blocking write that returned less than asked (partial, or 0 after filling)
    arms the request; a wait() in between does not cancel it; the peer's read then makes
    the fd readable."""
    h, peer = _ends(api, side)
    api.libvchan_set_blocking(h, False)
    if short == "partial":
        data = pattern(4 << 20, seed=1)  # more than any ring and kernel buffer
        n = api.libvchan_write(h, data, len(data))
        assert 0 < n < len(data)
        accepted = data[:n]
    else:
        accepted = bytes(_fill(api, h))
    bg = None
    if between != "none":
        bg = _wait_between(api, h, peer, between)
    else:
        settle(api, h)  # a spurious event is allowed if rare; the request stays armed
    _not_woken(api, h, "readable before the peer consumed anything")
    _consumed(api, peer, accepted)
    _woken(api, h, bg, "asked by a short write, not woken by the read")


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
@pytest.mark.parametrize("between", ["none", "returned", "blocked"])
@pytest.mark.parametrize("when", ["before_data", "after_data"])
@pytest.mark.parametrize("side", ["server", "client"])
def test_must_buffer_space_requests_consumption_event(api, sockdir, side, when, between):
    """buffer_space() arms the request (whether or not anything is in flight yet); the
    first consumption after it makes the fd readable, a wait() in between does not cancel."""
    h, peer = _ends(api, side)
    msg = pattern(1000, seed=2)
    if when == "before_data":
        assert api.libvchan_buffer_space(h) > 0
    assert api.libvchan_send(h, msg, len(msg)) == len(msg)  # fits: not a request by itself
    if when == "after_data":
        assert api.libvchan_buffer_space(h) >= 0
    bg = None
    if between != "none":
        bg = _wait_between(api, h, peer, between)
    else:
        settle(api, h)
    _not_woken(api, h, "readable before the peer consumed anything")
    _consumed(api, peer, msg)
    _woken(api, h, bg, "asked by buffer_space(), not woken by the read")


@pytest.mark.spec("NOTIFY-UNASKED-QUIET")
@pytest.mark.parametrize("arm", ["buffer_space", "short_write", "send_0"])
@pytest.mark.parametrize("side", ["server", "client"])
def test_must_consumption_request_is_one_shot(api, sockdir, side, arm):
    """After the asked-for consumption woke us and wait() cleared it, later reads by the
    peer (of bytes written after it, with no new request) do not wake us again."""
    h, peer = _ends(api, side)
    if arm == "buffer_space":
        accepted = pattern(1000, seed=3)
        assert api.libvchan_send(h, accepted, len(accepted)) == len(accepted)
        assert api.libvchan_buffer_space(h) >= 0
    elif arm == "short_write":
        accepted = bytes(_fill(api, h))
    else:
        accepted = bytes(_fill_send(api, h))
    _consumed(api, peer, accepted)
    assert fd_readable(_fd(api, h), TIMEOUT), "the request did not wake us"
    settle(api, h)
    for i in range(10):
        msg = pattern(100, seed=100 + i)
        assert api.libvchan_send(h, msg, len(msg)) == len(msg), "ring drained, yet no room"
        _consumed(api, peer, msg)
        _not_woken(api, h, f"message {i}: woken by a consumption nobody asked for")
    assert not fd_readable(_fd(api, h), SETTLE), "a late unasked wake-up"


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
@pytest.mark.parametrize("arm", ["buffer_space", "short_write"])
@pytest.mark.parametrize("side", ["server", "client"])
def test_must_request_made_after_consumption_survives_the_wait_that_clears_it(
    api, sockdir, side, arm
):
    """Request 1, consumption 1 (fd readable), request 2, wait(): the wait() clears the event
    of request 1 but must not cancel request 2, which consumption 2 must fire."""
    h, peer = _ends(api, side)
    m1 = pattern(1000, seed=4)
    assert api.libvchan_send(h, m1, len(m1)) == len(m1)
    assert api.libvchan_buffer_space(h) >= 0
    _consumed(api, peer, m1)
    assert fd_readable(_fd(api, h), TIMEOUT), "request 1 did not wake us"
    if arm == "buffer_space":
        m2 = pattern(1000, seed=5)
        assert api.libvchan_send(h, m2, len(m2)) == len(m2)
        assert api.libvchan_buffer_space(h) >= 0  # request 2, after consumption 1
    else:
        m2 = bytes(_fill(api, h))  # its last write falls short: request 2
    assert bounded(api.libvchan_wait, h) == 0
    assert not fd_readable(_fd(api, h), SETTLE), "fd readable after wait() with nothing new"
    _consumed(api, peer, m2)
    assert fd_readable(_fd(api, h), TIMEOUT), "request 2 (made before wait()) was lost"


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
@pytest.mark.parametrize("side", ["server", "client"])
def test_must_nonblocking_send_returning_0_requests_consumption_event(api, sockdir, side):
    h, peer = _ends(api, side)
    accepted = _fill_send(api, h)  # only sends that fit, then the one returning 0
    settle(api, h)
    _not_woken(api, h, "readable before the peer consumed anything")
    _consumed(api, peer, bytes(accepted))
    assert fd_readable(_fd(api, h), TIMEOUT), "asked by send() == 0, not woken by the read"


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
@pytest.mark.parametrize("call", ["write", "send"])
@pytest.mark.parametrize(("side", "ring"), [("server", 2048), ("client", 65536)])
def test_must_blocking_call_that_had_to_wait_requests_consumption_event(
    api, sockdir, side, ring, call
):
    """The ring is filled and the fill's request spent first, so that only the blocking
    call, which must wait (asserted), can have asked."""
    h, peer = _ends(api, side)
    accepted = _fill_send(api, h)
    part = 512
    assert read_exact(api, peer, part) == bytes(part)  # fires the fill's request ...
    assert fd_readable(_fd(api, h), TIMEOUT)
    settle(api, h)  # ... and clears it: nothing is asked any more
    api.libvchan_set_blocking(h, True)
    data = pattern(ring, seed=6)
    bg = run_bg(getattr(api, f"libvchan_{call}"), h, data, len(data))
    bg.assert_blocked()  # only ~part bytes are free: it has to wait
    _not_woken(api, h, "readable before the peer consumed anything")
    api.libvchan_set_blocking(peer, False)
    assert read_exact(api, peer, accepted - part + ring) == bytes(accepted - part) + data
    assert bg.result() == ring
    assert fd_readable(_fd(api, h), TIMEOUT), f"a blocking {call} that waited did not ask"


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
def test_must_data_connect_close_wake_with_no_request_ever_made(api, sockdir):
    """No buffer_space(), no short write anywhere: the three unconditional events."""
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert not fd_readable(_fd(api, srv))
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert fd_readable(_fd(api, srv), TIMEOUT), "client connected, server not woken"
    assert bounded(api.libvchan_wait, srv) == 0
    assert api.libvchan_is_open(srv) == VCHAN_CONNECTED
    settle(api, cli)
    for h, peer in ((srv, cli), (cli, srv)):
        settle(api, h)
        assert not fd_readable(_fd(api, h))
        assert api.libvchan_send(peer, b"hey", 3) == 3
        assert fd_readable(_fd(api, h), TIMEOUT), "data arrived, not woken"
        assert bounded(api.libvchan_wait, h) == 0
        assert read_exact(api, h, 3) == b"hey"
    settle(api, srv)
    settle(api, cli)
    api.libvchan_close(cli)
    assert fd_readable(_fd(api, srv), TIMEOUT), "peer closed, not woken"
    assert bounded(api.libvchan_wait, srv) == 0
    assert api.libvchan_is_open(srv) == VCHAN_DISCONNECTED


# ---------------------------------------------------------------------------- poll, read, wait


@pytest.mark.spec("NOTIFY-WAIT-AFTER-POLL")
@pytest.mark.parametrize("poll_again", [False, True])
@pytest.mark.parametrize("call", ["read", "read_part", "recv"])
@pytest.mark.parametrize("mode", ["blocking", "nonblocking"])
@pytest.mark.parametrize("side", ["server", "client"])
def test_must_wait_returns_at_once_after_read_between_poll_and_wait(
    api, sockdir, side, mode, call, poll_again
):
    """Data arrives, the fd polls readable, a read()/recv() consumes it (all of it, or
    part), then wait() (with or without another poll first) must return at once."""
    h, peer = _ends(api, side)
    api.libvchan_set_blocking(h, mode == "blocking")
    msg = b"0123456789"
    assert api.libvchan_send(peer, msg, len(msg)) == len(msg)
    assert fd_readable(_fd(api, h), TIMEOUT)
    buf = bytearray(len(msg))
    if call == "read":
        assert read_exact(api, h, len(msg)) == msg
        assert api.libvchan_data_ready(h) == 0
    elif call == "read_part":
        assert api.libvchan_read(h, buf, 3) > 0
    else:
        wait_until(lambda: api.libvchan_recv(h, buf, len(msg)) == len(msg))
        assert buf == msg
        assert api.libvchan_data_ready(h) == 0
    if poll_again:
        assert fd_readable(_fd(api, h)), f"{call}() swallowed the event"
    assert bounded(api.libvchan_wait, h, timeout=QUICK) == 0, f"wait() blocked after {call}()"
    assert not fd_readable(_fd(api, h), SETTLE), "wait() did not clear the event"
    assert api.libvchan_is_open(h) == VCHAN_CONNECTED


@pytest.mark.spec("NOTIFY-WAIT-AFTER-POLL")
def test_must_waiting_server_wait_after_connect_polled_then_is_open(api, sockdir):
    """The client-connected event is consumed by is_open() (it takes the client), yet the
    wait() after the fd polled readable returns at once."""
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert api.libvchan_is_open(srv) == VCHAN_WAITING
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.connect(str(sock_path(sockdir, 0, 0, 1)))
        assert fd_readable(_fd(api, srv), TIMEOUT)
        assert api.libvchan_is_open(srv) == VCHAN_CONNECTED
        assert bounded(api.libvchan_wait, srv, timeout=QUICK) == 0
        assert api.libvchan_is_open(srv) == VCHAN_CONNECTED
    finally:
        c.close()


# ---------------------------------------------------------------------------- consumption
# SPEC §5 (new): the peer's consumption wakes this end only when it asked, by buffer_space()
# or a short write; a request is one-shot and a wait() does not cancel it.


def _poll_wait_recv(api, h, n: int) -> bytes:
    assert fd_readable(_fd(api, h), TIMEOUT)
    assert bounded(api.libvchan_wait, h) == 0
    assert api.libvchan_data_ready(h) == n
    buf = bytearray(n)
    assert api.libvchan_recv(h, buf, n) == n
    return bytes(buf)


@pytest.mark.spec("NOTIFY-UNASKED-QUIET")
def test_must_unasked_peer_reads_not_wake_sender_select_pingpong(api, sockdir):
    srv, cli = connected_pair(api)
    settle(api, srv)
    settle(api, cli)
    for i in range(20):
        msg = b"ping%03d" % i
        assert api.libvchan_send(cli, msg, len(msg)) == len(msg)
        assert _poll_wait_recv(api, srv, len(msg)) == msg
        assert not fd_readable(_fd(api, cli), 0.02), f"round {i}: server's read woke client"
        assert api.libvchan_send(srv, msg, len(msg)) == len(msg)
        assert _poll_wait_recv(api, cli, len(msg)) == msg
        assert not fd_readable(_fd(api, srv), 0.02), f"round {i}: client's read woke server"


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT", "NOTIFY-UNASKED-QUIET")
@pytest.mark.parametrize("how", ["short_write", "buffer_space"])
def test_must_consumption_request_one_shot_survives_wait(api, sockdir, how):
    srv, cli = connected_pair(api)
    api.libvchan_set_blocking(srv, False)
    settle(api, srv)
    if how == "short_write":
        accepted = _fill(api, srv)  # the last write took nothing: a request
    else:
        accepted = 5
        assert api.libvchan_send(srv, b"hello", 5) == 5
        assert api.libvchan_buffer_space(srv) > 0  # a request, though there is room
    assert not fd_readable(_fd(api, srv), SETTLE)
    assert api.libvchan_send(cli, b"x", 1) == 1  # an unrelated event, and its wait()
    assert _poll_wait_recv(api, srv, 1) == b"x"
    assert not fd_readable(_fd(api, srv), SETTLE)
    expect = bytes(accepted) if how == "short_write" else b"hello"
    assert read_exact(api, cli, accepted) == expect
    assert fd_readable(_fd(api, srv), TIMEOUT), "the wait() in between cancelled the request"
    assert bounded(api.libvchan_wait, srv) == 0
    assert api.libvchan_send(srv, b"abc", 3) == 3  # no new request: the next read is silent
    assert read_exact(api, cli, 3) == b"abc"
    assert not fd_readable(_fd(api, srv), SETTLE), "a request woke more than once"


@pytest.mark.spec("NOTIFY-NO-MISSED-EVENT")
def test_must_consumption_request_made_while_connecting_kept(api, sockdir):
    ret = api.libvchan_client_init_async(0, 1)
    assert ret is not None
    h, _watch = ret
    api.libvchan_set_blocking(h, False)
    assert api.libvchan_buffer_space(h) == 0  # a request, made before the connection
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert bounded(api.libvchan_client_init_async_finish, h, True) == 0
    settle(api, h)
    assert api.libvchan_send(h, b"abc", 3) == 3
    assert not fd_readable(_fd(api, h), SETTLE)
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
    assert read_exact(api, srv, 3) == b"abc"
    assert fd_readable(_fd(api, h), TIMEOUT), "the request made while connecting was lost"


@pytest.mark.spec("NOTIFY-WAIT-AFTER-POLL")
@pytest.mark.parametrize("armed", [False, True])
def test_must_wait_not_block_after_poll_readable_then_read(api, sockdir, armed):
    srv, cli = connected_pair(api)
    settle(api, srv)
    if armed:
        api.libvchan_buffer_space(srv)
    assert api.libvchan_send(cli, b"abcd", 4) == 4
    assert fd_readable(_fd(api, srv), TIMEOUT)
    wait_until(lambda: api.libvchan_data_ready(srv) == 4)
    buf = bytearray(10)
    assert api.libvchan_read(srv, buf, 10) == 4
    assert bounded(api.libvchan_wait, srv, timeout=1) == 0
    assert not fd_readable(_fd(api, srv), SETTLE)


def test_must_no_spinning_unread_data_with_request_armed(api, sockdir):
    srv, cli = connected_pair(api)
    settle(api, srv)
    assert api.libvchan_buffer_space(srv) > 0
    assert api.libvchan_send(cli, b"unread", 6) == 6
    assert fd_readable(_fd(api, srv), TIMEOUT)
    assert bounded(api.libvchan_wait, srv) == 0
    wait_until(lambda: api.libvchan_data_ready(srv) == 6)
    assert not fd_readable(_fd(api, srv), SETTLE), "fd readable again with nothing new"


# ----------------------------------------- the connection and its first bytes: two events


@pytest.mark.spec("NOTIFY-CONNECT-THEN-DATA")
@pytest.mark.parametrize("accept_in", ["wait", "is_open"])
def test_must_wait_reporting_connection_leaves_fd_readable_for_bytes_already_there(
    api, sockdir, accept_in
):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    fd = _fd(api, srv)
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    assert api.libvchan_send(cli, b"hello", 5) == 5  # before the server accepted
    if accept_in == "is_open":
        assert api.libvchan_is_open(srv) == VCHAN_CONNECTED
    assert fd_readable(fd, TIMEOUT)
    assert bounded(api.libvchan_wait, srv, timeout=QUICK) == 0  # the connection
    assert api.libvchan_is_open(srv) == VCHAN_CONNECTED
    assert fd_readable(fd), "the first bytes' event was merged into the connection's"
    assert bounded(api.libvchan_wait, srv, timeout=QUICK) == 0  # the bytes
    assert api.libvchan_data_ready(srv) == 5
    assert not fd_readable(fd, SETTLE), "one event per message, no more"


@pytest.mark.spec("NOTIFY-CONNECT-THEN-DATA")
def test_must_wait_reporting_connection_no_bytes_no_extra_readiness(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    fd = _fd(api, srv)
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    assert fd_readable(fd, TIMEOUT)
    assert bounded(api.libvchan_wait, srv, timeout=QUICK) == 0
    assert not fd_readable(fd, SETTLE)
    assert api.libvchan_send(cli, b"x", 1) == 1
    assert fd_readable(fd, TIMEOUT)


@pytest.mark.spec("NOTIFY-CONNECT-THEN-DATA")
def test_must_qrexec_client_handshake_then_poll_not_stall(api, sockdir):
    """qrexec-client, server of its data connection: poll + wait() for the client, a
    blocking recv() of its hello, send its own, buffer_space(), then poll before sending the
    prefix data. The client connected and sent its hello before the accept."""
    srv = api.libvchan_server_init(0, 1, 0, 0)
    fd = _fd(api, srv)
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    assert api.libvchan_send(cli, b"hello", 5) == 5
    assert fd_readable(fd, TIMEOUT)
    assert bounded(api.libvchan_wait, srv) == 0
    buf = bytearray(5)
    assert bounded(api.libvchan_recv, srv, buf, 5) == 5 and buf == b"hello"
    assert api.libvchan_send(srv, b"olleh", 5) == 5
    assert api.libvchan_buffer_space(srv) > 8
    t0 = time.monotonic()
    assert fd_readable(fd, 1.0), "poll stalls: qrexec sleeps out its 10 s timeout here"
    assert time.monotonic() - t0 < QUICK
    assert bounded(api.libvchan_wait, srv, timeout=QUICK) == 0


@pytest.mark.spec("NOTIFY-CONNECT-THEN-DATA", "WAITING-SEND-BUFFERS")
def test_must_async_client_connection_and_server_handshake_are_two_events(api, sockdir):
    """Client side: connected at once to a server that already sent its handshake."""
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert api.libvchan_send(srv, b"hs", 2) == 2
    ret = api.libvchan_client_init_async(0, 1)
    assert ret is not None
    h, fd = ret
    assert fd_readable(fd, TIMEOUT)
    assert api.libvchan_client_init_async_finish(h, False) == 0
    wait_until(lambda: api.libvchan_data_ready(h) == 2)
    assert bounded(api.libvchan_wait, h, timeout=QUICK) == 0
    assert fd_readable(fd), "the handshake's event was merged into the connection's"
    assert bounded(api.libvchan_wait, h, timeout=QUICK) == 0
    assert not fd_readable(fd, SETTLE)
