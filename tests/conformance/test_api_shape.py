"""The Python-level surface shared by vchan.libvchan and vchan._cffi (SPEC §1 bad arguments).

A bad argument is refused with a clear error (EINVAL), never a crash or a silent default.
"""

from __future__ import annotations

import errno

import pytest

from tests.conftest import VCHAN_DISCONNECTED, connected_pair


@pytest.mark.spec("ADDR-REFUSE-BAD")
@pytest.mark.parametrize(
    ("domain", "port"), [(2**40, 1), (0, 2**31), (0, 2**40), (-(2**40), 1), ("0", 1), (0, 1.0)]
)
def test_must_refuse_unrepresentable_domain_or_port(api, sockdir, domain, port):
    assert api.libvchan_server_init(domain, port, 0, 0) is None
    assert api.last_errno() == errno.EINVAL
    assert api.libvchan_client_init_async(domain, port) is None
    assert api.last_errno() == errno.EINVAL


@pytest.mark.spec("ADDR-REFUSE-BAD")
@pytest.mark.parametrize("mins", [(-1, 0), (0, -1), (2**70, 0)])
def test_must_refuse_bad_ring_minimum(api, sockdir, mins):
    assert api.libvchan_server_init(0, 1, *mins) is None
    assert api.last_errno() == errno.EINVAL


@pytest.mark.spec("ADDR-REFUSE-BAD")
def test_must_refuse_bad_sizes_and_buffers_with_einval(api, sockdir):
    srv, cli = connected_pair(api)
    assert api.libvchan_send(cli, b"abc", 3) == 3
    buf = bytearray(4)
    for call in (api.libvchan_read, api.libvchan_recv):
        assert call(srv, buf, -1) == -1 and api.last_errno() == errno.EINVAL
        assert call(srv, buf, 5) == -1 and api.last_errno() == errno.EINVAL
        assert call(srv, b"read-only", 3) == -1 and api.last_errno() == errno.EINVAL
    for call in (api.libvchan_write, api.libvchan_send):
        assert call(srv, b"ab", -1) == -1 and api.last_errno() == errno.EINVAL
        assert call(srv, b"ab", 3) == -1 and api.last_errno() == errno.EINVAL
    # nothing was consumed or sent by the refused calls
    assert api.libvchan_recv(srv, buf, 3) == 3 and buf[:3] == b"abc"
    assert api.libvchan_data_ready(cli) == 0
    # memoryview and array buffers work like bytearray
    assert api.libvchan_send(cli, memoryview(b"xyz"), 3) == 3
    mv = memoryview(bytearray(8))
    assert api.libvchan_recv(srv, mv[2:], 3) == 3 and bytes(mv[2:5]) == b"xyz"


@pytest.mark.spec("ADDR-REFUSE-BAD")
def test_must_refuse_non_handles_with_einval(api, sockdir):
    buf = bytearray(4)
    for bad in (None, 0, "handle"):
        assert api.libvchan_read(bad, buf, 1) == -1 and api.last_errno() == errno.EINVAL
        assert api.libvchan_write(bad, b"x", 1) == -1 and api.last_errno() == errno.EINVAL
        assert api.libvchan_wait(bad) == -1 and api.last_errno() == errno.EINVAL
        assert api.libvchan_fd_for_select(bad) == -1
        assert api.libvchan_client_init_async_finish(bad, False) == -1
        assert api.libvchan_is_open(bad) == VCHAN_DISCONNECTED
        assert api.libvchan_data_ready(bad) == 0
        assert api.libvchan_buffer_space(bad) == 0
        api.libvchan_close(bad)  # ignored
