"""SPEC §1: the implementations interoperate with each other on the wire, both ways."""

from __future__ import annotations

import pytest

from tests.conftest import (
    VCHAN_CONNECTED,
    VCHAN_DISCONNECTED,
    bounded,
    pattern,
    read_all_until_eof,
    run_bg,
    wait_until,
)


def _pump(api, h, data: bytes) -> int:
    return api.libvchan_write(h, data, len(data))


def _drain(api, h, n: int) -> bytes:
    out = bytearray()
    buf = bytearray(65536)
    while len(out) < n:
        k = api.libvchan_read(h, buf, len(buf))
        assert k > 0, api.last_errno()
        out += buf[:k]
    return bytes(out)


@pytest.mark.spec("WIRE-INTEROP", "WAITING-SEND-BUFFERS")
def test_must_interoperate_across_implementations(api_pair, sockdir):
    sapi, capi = api_pair
    srv = sapi.libvchan_server_init(0, 1, 65536, 65536)
    assert srv is not None
    assert sapi.libvchan_send(srv, b"handshake", 9) == 9  # before the client exists
    cli = bounded(capi.libvchan_client_init, 0, 1)
    assert cli is not None
    wait_until(lambda: sapi.libvchan_is_open(srv) == VCHAN_CONNECTED)
    assert _drain(capi, cli, 9) == b"handshake"
    down, up = pattern(2 << 20, seed=41), pattern(2 << 20, seed=42)
    w1 = run_bg(_pump, sapi, srv, down)
    w2 = run_bg(_pump, capi, cli, up)
    r1 = run_bg(_drain, capi, cli, len(down))
    r2 = run_bg(_drain, sapi, srv, len(up))
    assert r1.result() == down
    assert r2.result() == up
    assert w1.result() == len(down) and w2.result() == len(up)
    # close with bytes in flight: all delivered, then DISCONNECTED on the other side
    assert capi.libvchan_send(cli, b"last", 4) == 4
    capi.libvchan_close(cli)
    wait_until(lambda: sapi.libvchan_is_open(srv) == VCHAN_DISCONNECTED)
    sapi.libvchan_set_blocking(srv, False)
    assert read_all_until_eof(sapi, srv) == b"last"


@pytest.mark.spec("WIRE-INTEROP")
def test_must_async_client_of_one_impl_reaches_server_of_other(api_pair, sockdir):
    sapi, capi = api_pair
    ret = capi.libvchan_client_init_async(0, 1)
    assert ret is not None
    h, _ = ret
    assert capi.libvchan_client_init_async_finish(h, False) == 1
    srv = sapi.libvchan_server_init(0, 1, 0, 0)
    assert bounded(capi.libvchan_client_init_async_finish, h, True) == 0
    wait_until(lambda: sapi.libvchan_is_open(srv) == VCHAN_CONNECTED)
    assert capi.libvchan_send(h, b"x" * 100, 100) == 100
    assert _drain(sapi, srv, 100) == b"x" * 100
