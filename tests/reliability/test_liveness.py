"""Liveness: a reader waiting for a full ring must get it, whatever the writer's chunking.

On Xen a ring of R bytes holds R bytes, so ``recv(R)`` completes once the writer has
written R. Over a socket, the kernel charges every write several hundred bytes of
overhead, so a writer of small chunks is blocked (buffer_space() 0) long before R payload
bytes are queued; unless the reader's library moves queued bytes out of the kernel while
it waits, ``recv(R)`` would never be satisfied and the two ends deadlock. Found by the
soak (tests/soak.py, seed 1, round 5).
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import TIMEOUT, bounded, connected_pair, run_bg, scaled
from tests.reliability import _stream

RING = 65536


def _small_writer(api, h, chunk: int, total: int) -> int:
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        data = _stream.chunk(1, sent, n)
        assert api.libvchan_write(h, data, n) == n
        sent += n
    return sent


@pytest.mark.parametrize("chunk", [1, 100])
@pytest.mark.parametrize("mode", ["blocking", "nonblocking+wait"])
def test_recv_of_whole_ring_completes_with_small_writes(api, sockdir, mode, chunk):
    srv, cli = connected_pair(api, read_min=RING, write_min=RING)
    total = 2 * RING if chunk > 1 else RING // 2
    want = RING if chunk > 1 else RING // 4
    wr = run_bg(_small_writer, api, cli, chunk, total)
    check = _stream.Checker(1)
    buf = bytearray(RING)
    api.libvchan_set_blocking(srv, mode == "blocking")
    end = time.monotonic() + 3 * TIMEOUT
    while check.count < total:
        if mode == "blocking":
            n = bounded(api.libvchan_recv, srv, buf, want)
        else:
            n = api.libvchan_recv(srv, buf, want)
            if n == 0:
                ret = run_bg(api.libvchan_wait, srv)
                ret.thread.join(scaled(5))
                assert not ret.thread.is_alive(), (
                    f"deadlock: recv({want}) returns 0 with {api.libvchan_data_ready(srv)} "
                    f"bytes ready, the writer is blocked and wait() never returns"
                )
                continue
        assert n == want
        assert check.feed(buf[:n]), f"wrong byte at {check.bad}"
        assert time.monotonic() < end
    assert wr.result() == total


@pytest.mark.parametrize("chunk", [1, 100, 4096])
def test_nonblocking_read_and_wait_keep_up_with_small_blocking_writes(api, sockdir, chunk):
    """The soak's hang (seed 2, round 26): read() + wait() against 100-byte writes."""
    srv, cli = connected_pair(api, read_min=RING, write_min=RING)
    total = 300_000 if chunk > 1 else 30_000
    wr = run_bg(_small_writer, api, cli, chunk, total)
    check = _stream.Checker(1)
    buf = bytearray(RING)
    api.libvchan_set_blocking(srv, False)
    rng = __import__("random").Random(chunk)
    while check.count < total:
        n = api.libvchan_read(srv, buf, rng.choice([1, 100, 4096, RING]))
        assert n >= 0
        if n == 0:
            ret = run_bg(api.libvchan_wait, srv)
            ret.thread.join(scaled(5))
            assert not ret.thread.is_alive(), (
                f"missed event: wait() blocks with {api.libvchan_data_ready(srv)} bytes "
                f"ready after {check.count}"
            )
            continue
        assert check.feed(buf[:n]), f"wrong byte at {check.bad}"
    assert wr.result() == total
