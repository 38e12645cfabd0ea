"""Faults: the peer process is SIGKILLed in the middle of a transfer, in each direction.

Bytes the peer had handed to the kernel must all arrive, in order, then the end; the
survivor reports DISCONNECTED promptly (while unread data remains), a blocked call on it
returns, and the library never raises SIGPIPE.
"""

from __future__ import annotations

import errno
import time

import pytest

from tests.conftest import (
    VCHAN_CONNECTED,
    VCHAN_DISCONNECTED,
    fd_readable,
    run_bg,
    scaled,
    settle,
    wait_until,
)
from tests.reliability import _stream
from tests.reliability._util import read_stream

PROMPT = scaled(1.0)  # "promptly"
RING = 65536  # the peer's write ring (a client's, or a server made with write_min=65536)


def _open_with_peer(api, spawn, our_role: str, action: str, peer_impl: str | None, **opts):
    """Our end of ``our_role`` connected to a peer process doing ``action``."""
    if our_role == "server":
        h = api.libvchan_server_init(0, 1, RING, RING)
        assert h is not None, api.last_errno()
        peer = spawn("client", action, impl=peer_impl, **opts)
        peer.expect("READY")
    else:
        peer = spawn("server", action, impl=peer_impl, read_min=RING, write_min=RING, **opts)
        peer.expect("READY")
        h = api.libvchan_client_init(0, 1)
        assert h is not None, api.last_errno()
    wait_until(lambda: api.libvchan_is_open(h) != 2)
    return h, peer


# peer kinds: the implementation under test with blocking writes (a byte is in the kernel
# when write() returns, DESIGN.md "Writes"), the same with qrexec's buffer_space()-gated
# non-blocking writes (up to the write ring may still be in the peer's user space when it
# dies: lost with the process, as on Xen), and a bare socket (sendall: exactly in kernel).
SENDERS = {
    "lib-blocking": (None, "blocking", 0),
    "lib-qrexec": (None, "qrexec", RING),
    "plain": ("plain", "blocking", 0),
}


@pytest.mark.spec("READ-DATA-BEFORE-GONE", "STATE-PROMPT", "DATA-READY-KEEPS-BYTES")
@pytest.mark.parametrize("reader", ["blocking-thread", "paused"])
@pytest.mark.parametrize("sender", sorted(SENDERS))
@pytest.mark.parametrize("our_role", ["server", "client"])
def test_sigkill_sending_peer_all_kernel_bytes_arrive_in_order_then_end(
    api, spawn, sigpipe_watch, our_role, sender, reader
):
    peer_impl, style, may_lose = SENDERS[sender]
    h, peer = _open_with_peer(
        api, spawn, our_role, "send", peer_impl, seed=7, style=style, chunk=20000
    )
    check = _stream.Checker(7)
    if reader == "blocking-thread":
        # we read continuously with blocking reads; the peer dies while bytes flow
        bg = run_bg(read_stream, api, h, check, None, scaled(30), True)
        peer.wait_value("ACK", 600_000)
        peer.kill()
        t_kill = time.monotonic()
        assert bg.result() is False, "the blocking read must end with -1 after the data"
        assert bg.t_end is not None and bg.t_end - t_kill < PROMPT
    else:
        # we read some, stop, the peer fills the buffers and dies: unread data remains
        read_stream(api, h, check, until=300_000)
        peer.wait_value("ACK", check.count + 1)
        peer.wait_stalled()  # blocked on full buffers (not required for correctness)
        peer.kill()
        wait_until(lambda: api.libvchan_is_open(h) == VCHAN_DISCONNECTED, PROMPT)
        assert api.libvchan_data_ready(h) > 0, "unread bytes must stay visible"
        assert read_stream(api, h, check) is False
    acked = peer.last.get("ACK", 0)
    assert check.bad is None
    assert check.count >= acked - may_lose, (
        f"lost bytes: peer had {acked} accepted, {check.count} arrived"
    )
    assert api.libvchan_is_open(h) == VCHAN_DISCONNECTED
    buf = bytearray(10)
    assert api.libvchan_read(h, buf, 10) == -1
    assert api.libvchan_recv(h, buf, 1) == -1
    assert api.libvchan_write(h, b"x", 1) == -1
    assert api.libvchan_send(h, b"x", 1) == -1
    assert not sigpipe_watch, "SIGPIPE raised"


def _writer(api, h, seed: int, blocking: bool):
    """Write the stream until write() fails; return (bytes accepted, errno)."""
    sent = 0
    api.libvchan_set_blocking(h, blocking)
    while True:
        data = _stream.chunk(seed, sent, 50_000)
        n = api.libvchan_write(h, data, len(data))
        if n < 0:
            return sent, api.last_errno()
        if n == 0:
            assert not blocking, "a blocking write returned 0"
            if api.libvchan_wait(h) < 0:
                return sent, api.last_errno()
        sent += n


@pytest.mark.spec("STATE-PROMPT")
@pytest.mark.parametrize("mode", ["blocking", "nonblocking+wait"])
@pytest.mark.parametrize("our_role", ["server", "client"])
def test_sigkill_receiving_peer_writer_gets_epipe_promptly(
    api, spawn, sigpipe_watch, our_role, mode
):
    h, peer = _open_with_peer(api, spawn, our_role, "recv", None, seed=9, chunk=4096)
    bg = run_bg(_writer, api, h, 9, mode == "blocking")
    peer.wait_value("GOT", 500_000)
    peer.kill()
    t_kill = time.monotonic()
    sent, err = bg.result()
    assert bg.t_end is not None and bg.t_end - t_kill < PROMPT, "writer not told promptly"
    assert err == errno.EPIPE, f"errno {err}, want EPIPE"
    assert "BAD" not in peer.last, f"peer saw a wrong byte at {peer.last.get('BAD')}"
    assert peer.last["GOT"] <= sent
    wait_until(lambda: api.libvchan_is_open(h) == VCHAN_DISCONNECTED, PROMPT)
    assert api.libvchan_send(h, b"x", 1) == -1
    assert not sigpipe_watch, "SIGPIPE raised"


@pytest.mark.spec("READ-DATA-BEFORE-GONE")
@pytest.mark.parametrize("our_role", ["server", "client"])
def test_sigkill_peer_during_blocking_recv_returns_minus1_bytes_stay(api, spawn, our_role):
    h, peer = _open_with_peer(api, spawn, our_role, "send", "plain", seed=3, total=1000, chunk=1000)
    peer.expect("DONE")
    buf = bytearray(5000)
    bg = run_bg(api.libvchan_recv, h, buf, 5000)  # 1000 are there, 5000 never will be
    bg.assert_blocked(0.1)
    peer.kill()
    assert bg.result(PROMPT + 1) == -1
    assert api.libvchan_is_open(h) == VCHAN_DISCONNECTED
    check = _stream.Checker(3)
    assert read_stream(api, h, check) is False
    assert check.count == 1000 and check.bad is None


@pytest.mark.spec("STATE-PROMPT")
@pytest.mark.parametrize("our_role", ["server", "client"])
def test_sigkill_idle_peer_wakes_wait_and_select_fd(api, spawn, our_role):
    h, peer = _open_with_peer(api, spawn, our_role, "hold", None)
    fd = api.libvchan_fd_for_select(h)
    settle(api, h)
    assert not fd_readable(fd)
    assert api.libvchan_is_open(h) == VCHAN_CONNECTED
    bg = run_bg(api.libvchan_wait, h)
    bg.assert_blocked(0.1)
    peer.kill()
    assert bg.result(PROMPT) == 0
    assert api.libvchan_is_open(h) == VCHAN_DISCONNECTED
