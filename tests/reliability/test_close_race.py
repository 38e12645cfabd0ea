"""Faults: close() from another thread while threads are blocked in the channel.

Every blocked call (read, recv, write, send, wait, async finish) must return promptly with
an error (-1, errno EBADF per DESIGN.md), close() itself must not block, and nothing may
touch freed memory (the C library runs these under ASan in the sanitizer job).
"""

from __future__ import annotations

import errno
import time

import pytest

from tests.conftest import bounded, connected_pair, run_bg, scaled, settle, wait_until

PROMPT = scaled(0.5)
RING = 4096


def _fill(api, h) -> int:
    """Non-blocking writes until the channel takes no more (the peer does not read)."""
    api.libvchan_set_blocking(h, False)
    total = 0
    data = bytes(65536)
    for _ in range(100_000):
        n = api.libvchan_write(h, data, len(data))
        assert n >= 0
        if n == 0:
            break
        total += n
    api.libvchan_set_blocking(h, True)
    return total


def _with_errno(api, fn, *args):
    def call():
        ret = fn(*args)
        return ret, api.last_errno()

    return call


def _blocked_call(api, sockdir, call: str, state: str):
    """Set up a handle and a call on it that must block; return (handle, fn)."""
    if call == "finish":
        ret = api.libvchan_client_init_async(0, 1)  # no server: never connects
        assert ret is not None
        return ret[0], _with_errno(api, api.libvchan_client_init_async_finish, ret[0], True)
    if state == "waiting":
        h = api.libvchan_server_init(0, 1, RING, RING)
        assert h is not None
    else:
        h, peer = connected_pair(api, read_min=RING, write_min=RING)
    buf = bytearray(2 * RING)
    if call == "read":
        return h, _with_errno(api, api.libvchan_read, h, buf, 100)
    if call == "recv":
        if state == "connected":
            assert api.libvchan_send(peer, b"part", 4) == 4  # fewer than asked for
            wait_until(lambda: api.libvchan_data_ready(h) == 4)
        return h, _with_errno(api, api.libvchan_recv, h, buf, RING)
    if call == "write":
        big = bytes(4 * 1024 * 1024)  # more than ring + kernel: must wait for the reader
        return h, _with_errno(api, api.libvchan_write, h, big, len(big))
    if call == "send":
        if state == "connected":
            _fill(api, h)
        else:
            assert api.libvchan_send(h, bytes(RING), RING) == RING  # the ring is full
        return h, _with_errno(api, api.libvchan_send, h, bytes(RING), RING)
    if call == "wait":
        if state == "connected":
            settle(api, h)
        return h, _with_errno(api, api.libvchan_wait, h)
    raise AssertionError(call)


CASES = [
    (c, s) for c in ("read", "recv", "write", "send", "wait") for s in ("waiting", "connected")
] + [("finish", "connecting")]


@pytest.mark.parametrize(("call", "state"), CASES)
def test_close_from_other_thread_unblocks_call_with_error(api, sockdir, call, state):
    h, fn = _blocked_call(api, sockdir, call, state)
    bg = run_bg(fn)
    bg.assert_blocked(0.1)
    t0 = time.monotonic()
    api.libvchan_close(h)
    assert time.monotonic() - t0 < PROMPT, "close() blocked"
    ret, err = bg.result(PROMPT + 1)
    assert bg.t_end is not None and bg.t_end - t0 < PROMPT, "blocked call not woken promptly"
    assert ret == -1, f"{call} returned {ret} after close"
    assert err == errno.EBADF, f"{call} errno {err}, want EBADF"


@pytest.mark.parametrize("state", ["waiting", "connected"])
def test_close_wakes_every_thread_blocked_on_one_handle(api, sockdir, state):
    """A reader, a writer and a waiter blocked at once on the same handle all return."""
    if state == "waiting":
        h = api.libvchan_server_init(0, 1, RING, RING)
        assert api.libvchan_send(h, bytes(RING), RING) == RING
    else:
        h, _ = connected_pair(api, read_min=RING, write_min=RING)
        settle(api, h)
        _fill(api, h)
    big = bytes(1 << 20)
    calls = [
        run_bg(_with_errno(api, api.libvchan_read, h, bytearray(100), 100)),
        run_bg(_with_errno(api, api.libvchan_recv, h, bytearray(RING), RING)),
        run_bg(_with_errno(api, api.libvchan_write, h, big, len(big))),
        run_bg(_with_errno(api, api.libvchan_wait, h)),
    ]
    for bg in calls:
        bg.assert_blocked(0.05)
    t0 = time.monotonic()
    api.libvchan_close(h)
    for bg in calls:
        ret, err = bg.result(PROMPT + 1)
        assert ret == -1 and err == errno.EBADF, (ret, err)
        assert bg.t_end is not None and bg.t_end - t0 < PROMPT


def test_close_race_repeated(api, sockdir):
    """Many rounds of close() against calls just blocked (ASan: no use after free)."""
    for i in range(40):
        call = ("read", "recv", "write", "send", "wait")[i % 5]
        state = ("waiting", "connected")[(i // 5) % 2]
        h, fn = _blocked_call(api, sockdir, call, state)
        bg = run_bg(fn)
        bg.assert_blocked(0.01)
        api.libvchan_close(h)
        ret, _ = bg.result(PROMPT + 1)
        assert ret == -1
        api.close_all()  # the peer of a connected pair


@pytest.mark.spec("CLOSE-DELIVERS")
@pytest.mark.parametrize("size", [1, 2048])
def test_close_right_after_client_connected_delivers_early_writes(api, sockdir, size):
    """Found by the soak (seed 3): a WAITING server buffers a write, a client connects
    (client_init returns: for it the channel is CONNECTED) and the server closes before
    any other call. The client keeps reading: the bytes accepted before close() must reach
    it (SPEC §2), not an end of stream with nothing."""
    data = bytes(range(256)) * (size // 256) or b"x"
    lost = 0
    for i in range(20):
        srv = api.libvchan_server_init(0, 10 + i, 0, 0)
        assert api.libvchan_send(srv, data, len(data)) == len(data)
        cli = bounded(api.libvchan_client_init, 0, 10 + i)
        assert cli is not None
        api.libvchan_close(srv)
        got = bytearray()
        buf = bytearray(4096)
        end = time.monotonic() + scaled(5)
        while True:
            n = api.libvchan_read(cli, buf, len(buf))
            if n < 0:
                break
            got += buf[:n]
            assert time.monotonic() < end
        api.libvchan_close(cli)
        lost += bytes(got) != data
    assert lost == 0, f"{lost} of 20 clients got an end of stream instead of the bytes"
