"""SPEC §6 (ring sizes), observed through buffer_space(), data_ready() and read()."""

from __future__ import annotations

import errno
import os

import pytest

from tests.conftest import (
    bounded,
    bounded_err,
    pattern,
    read_exact,
    run_bg,
    wait_until,
)

MIB = 1 << 20

# (read_min, write_min) -> (read ring, write ring): the SPEC's examples, then each rule
SERVER_RINGS = [
    ((0, 0), (1024, 2048)),
    ((2048, 2048), (2048, 4096)),
    ((4097, 100), (8192, 2048)),
    ((65536, 65536), (65536, 65536)),
    ((1024, 2048), (1024, 2048)),
    ((2048, 1024), (2048, 1024)),
    ((1025, 2048), (2048, 4096)),
    ((100, 3000), (2048, 4096)),
    ((3000, 2000), (4096, 2048)),
    ((5000, 5000), (8192, 8192)),
    ((4096, 4096), (4096, 4096)),
    ((MIB, 0), (MIB, 2048)),
    ((0, MIB), (2048, MIB)),
    ((MIB, MIB), (MIB, MIB)),
]


def _ids(case) -> str:
    return f"{case[0][0]}-{case[0][1]}"


@pytest.mark.parametrize(("mins", "rings"), SERVER_RINGS, ids=[_ids(c) for c in SERVER_RINGS])
def test_must_server_write_ring_follows_xen_rules(api, sockdir, mins, rings):
    srv = api.libvchan_server_init(0, 1, *mins)
    assert srv is not None, api.last_errno()
    bs = api.libvchan_buffer_space(srv)
    assert bs == rings[1], f"fresh server {mins}: buffer_space {bs}, write ring {rings[1]}"
    # and that promise is honest: a WAITING server buffers exactly its write ring
    api.libvchan_set_blocking(srv, False)
    data = pattern(rings[1] + 1)
    assert api.libvchan_write(srv, data, len(data)) == rings[1]


@pytest.mark.parametrize(("mins", "rings"), SERVER_RINGS, ids=[_ids(c) for c in SERVER_RINGS])
def test_must_server_read_ring_follows_xen_rules(api, sockdir, mins, rings):
    read_ring = rings[0]
    srv = api.libvchan_server_init(0, 1, *mins)
    assert srv is not None, api.last_errno()
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    total = read_ring + 5000
    data = pattern(total)
    wr = run_bg(api.libvchan_write, cli, data, total)  # client write ring is 64 KiB
    if read_ring <= 65536:
        # larger read rings cannot fill: the client's capacity is sized for its 64 KiB ring
        wait_until(lambda: api.libvchan_data_ready(srv) == read_ring)
        for _ in range(5):
            assert api.libvchan_data_ready(srv) == read_ring, "data_ready above the read ring"
    buf = bytearray(total)
    got = bytearray()
    while len(got) < total:
        n = api.libvchan_read(srv, buf, total)
        assert 0 < n <= read_ring, f"read returned {n}, read ring {read_ring}"
        got += buf[:n]
    assert got == data
    assert wr.result() == total
    # recv of exactly the ring is allowed, one more is refused (blocking)
    r = bounded_err(api, api.libvchan_recv, srv, bytearray(read_ring + 1), read_ring + 1)
    assert r == (-1, errno.EMSGSIZE)


@pytest.mark.parametrize("mins", [(MIB + 1, 0), (0, MIB + 1), (MIB + 1, MIB + 1), (2**62, 0)])
def test_must_server_init_fails_when_a_minimum_exceeds_2_20(api, sockdir, mins):
    assert bounded_err(api, api.libvchan_server_init, 0, 1, *mins) == (None, errno.EINVAL)
    assert os.listdir(sockdir) == []


def test_must_client_rings_are_65536(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 65536 * 4, 65536 * 4)
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    # write ring: buffer_space is honest and never above 65536; with the system's
    # socket-buffer limits (wmem_max) large enough it is exactly 65536
    bs = api.libvchan_buffer_space(cli)
    with open("/proc/sys/net/core/wmem_max") as f:
        wmem_max = int(f.read())
    if wmem_max >= 212992:
        assert bs == 65536
    else:
        assert 0 < bs <= 65536
    # read ring: data_ready and read cap at 65536 even when the server sends more
    data = pattern(200000)
    wr = run_bg(api.libvchan_write, srv, data, len(data))
    wait_until(lambda: api.libvchan_data_ready(cli) == 65536)
    buf = bytearray(len(data))
    n = api.libvchan_read(cli, buf, len(buf))
    assert 0 < n <= 65536
    api.libvchan_set_blocking(cli, False)
    assert buf[:n] + read_exact(api, cli, len(data) - n) == data
    assert wr.result() == len(data)
