"""The Pythonic API over any libvchan shared library (vchan._backend): selection, interop."""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import vchan
from tests import _backends
from tests.conftest import TIMEOUT, bounded, pattern, wait_until
from vchan import _backend, _core, _speedups
from vchan._backend import CEndpoint


def clib_path() -> str:
    """Path of our C library, built if needed; skips the test if it is not written yet."""
    return _backends.backend_arg("c")


def backend_arg(name: str) -> str:
    return _backends.backend_arg(name)


@pytest.fixture(params=_backends.names())
def backend(request: pytest.FixtureRequest, sockdir: str) -> Iterator[str]:
    """A backend argument: ``python``, our C library, or ``$VCHAN_TEST_LIB``."""
    yield backend_arg(request.param)


# ---------------------------------------------------------------------------- selection


def test_default_backend_is_the_engine(sockdir, monkeypatch):
    monkeypatch.delenv(_backend.BACKEND_ENV, raising=False)
    assert _backend.resolve(None) == vchan.ENGINE == "speedups"  # built for the suite
    with vchan.server(1, 5) as srv:
        assert srv.read_ring == 65536
        assert isinstance(srv._endpoint(), _speedups.Channel)


def test_engine_names_are_backends(sockdir):
    for name, cls in (("python", _core.Channel), ("speedups", _speedups.Channel)):
        with vchan.server(0, 5, 4097, 100, backend=name) as srv:
            assert isinstance(srv._endpoint(), cls)
            assert (srv.read_ring, srv.write_ring) == (8192, 2048)
            with vchan.client(0, 5, timeout=0, backend=name) as cli:
                assert isinstance(cli._endpoint(), cls)
                assert (cli.read_ring, cli.write_ring) == (65536, 65536)


def test_env_selects_backend(sockdir, monkeypatch):
    monkeypatch.setenv(_backend.BACKEND_ENV, "python")
    assert _backend.resolve(None) == "python"
    monkeypatch.setenv(_backend.BACKEND_ENV, "speedups")
    with vchan.server(1, 5) as srv:
        assert isinstance(srv._endpoint(), _speedups.Channel)
    assert _backend.resolve("/x/lib.so") == "/x/lib.so"  # the argument wins
    path = clib_path()
    monkeypatch.setenv(_backend.BACKEND_ENV, path)
    with vchan.server(1, 5) as srv:
        assert isinstance(srv._endpoint(), CEndpoint)
        assert srv.read_ring is None  # unknown for C libraries


def test_unloadable_backend_is_a_clear_error(sockdir):
    with pytest.raises(vchan.InvalidArgument, match="cannot load libvchan backend 'nosuch'"):
        vchan.server(1, 5, backend="nosuch")
    with pytest.raises(vchan.InvalidArgument, match="/nonexistent/lib.so"):
        vchan.client(1, 5, backend="/nonexistent/lib.so")
    assert os.listdir(sockdir) == []


def test_short_names_mean_libvchan_name_so():
    assert _backend._library_spec("xen") == "libvchan-xen.so"
    assert _backend._library_spec("libvchan-xen.so") == "libvchan-xen.so"
    assert _backend._library_spec("./x") == "./x"


def test_load_library_is_cached():
    path = clib_path()
    assert _backend.load_library(path) is _backend.load_library(path)


def test_allow_any_uid_needs_an_engine(sockdir):
    path = clib_path()
    with pytest.raises(vchan.InvalidArgument, match="VCHAN_ALLOW_ANY_UID"):
        vchan.server(1, 5, allow_any_uid=True, backend=path)


# ---------------------------------------------------------------------------- behaviour


def test_round_trip(backend, sockdir):
    with vchan.server(0, 7, backend=backend) as srv:
        assert srv.state == vchan.State.WAITING
        with vchan.client(0, 7, timeout=TIMEOUT, backend=backend) as cli:
            wait_until(lambda: srv.state == vchan.State.CONNECTED)
            cli.send(b"hello")
            assert srv.recv(5) == b"hello"
            srv.write(b"world!")
            assert bounded(cli.recv, 6) == b"world!"
            p = select.poll()
            p.register(srv.fileno(), select.POLLIN)
            assert p.poll(int(TIMEOUT * 1000))
            srv.wait()
        assert srv.read() == b""  # end of stream once the client closed
        assert srv.state == vchan.State.DISCONNECTED


@pytest.mark.spec("WIRE-INTEROP")
@pytest.mark.parametrize(("srv_name", "cli_name"), [("python", "c"), ("c", "python")])
def test_backends_interoperate(srv_name, cli_name, sockdir):
    data = os.urandom(300_000)
    with vchan.server(0, 8, backend=backend_arg(srv_name)) as srv:
        with vchan.client(0, 8, timeout=TIMEOUT, backend=backend_arg(cli_name)) as cli:
            writer = bounded(lambda: cli.write(data))
            assert writer == len(data)
            got = bytearray()
            while len(got) < len(data):
                got += bounded(srv.read)
            assert bytes(got) == data


def test_client_timeout(backend, sockdir):
    t0 = time.monotonic()
    with pytest.raises(vchan.ConnectTimeout):
        vchan.client(0, 9, timeout=0.2, backend=backend)
    assert 0.15 < time.monotonic() - t0 < TIMEOUT


def test_client_timeout_zero_and_missing_dir(backend, sockdir, monkeypatch):
    with pytest.raises(vchan.ConnectTimeout):
        vchan.client(0, 9, timeout=0, backend=backend)
    monkeypatch.setenv("VCHAN_SOCKET_DIR", os.path.join(sockdir, "missing"))
    with pytest.raises(vchan.SocketDirMissing):
        vchan.client(0, 9, timeout=1, backend=backend)


def test_client_waits_for_a_late_server(backend, sockdir):
    """The timeout-capable client (async init + poll) connects when the server appears."""
    env = dict(os.environ, VCHAN_BACKEND=backend)
    code = (
        "from vchan import _backend as b; p = b.start_client(0, 10); print('started', "
        f"flush=True); ep = b.wait_client(p, {TIMEOUT!r}); ep.send(memoryview(b'late'), 4); "
        "ep.close()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"  # the client is waiting now
        with vchan.server(0, 10, backend=backend) as srv:
            assert bounded(srv.recv, 4) == b"late"
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.spec("ADDR-REFUSE-BAD")
def test_use_after_close_and_errors_map(backend, sockdir):
    srv = vchan.server(0, 11, backend=backend)
    ep = srv._endpoint()
    srv.close()
    with pytest.raises(ValueError):
        srv.read()
    if isinstance(ep, CEndpoint):
        with pytest.raises(OSError) as info:
            ep.data_ready()
        assert info.value.errno == errno.EBADF
    with pytest.raises(vchan.InvalidArgument):
        vchan.server(40000, 1, backend=backend)


@pytest.mark.spec("ADDR-REFUSE-BAD")
@pytest.mark.parametrize("side", ["server", "client"])
def test_must_bad_input_raises_the_exception_that_names_it(backend, sockdir, monkeypatch, side):
    """SPEC §1, the Pythonic API: a bad VCHAN_DOMAIN, domain, port or ring minimum raises
    InvalidArgument, a socket path too long for sun_path SocketPathTooLong (both
    ValueErrors, with a message); nothing is created, and a client whose VCHAN_DOMAIN is bad
    does not fall back to domain 0 (a server listens there)."""
    fallback = vchan.server(0, 1, backend=backend)  # what a fallback client would reach
    before = sorted(os.listdir(sockdir))

    def init(domain: int = 0, port: int = 1, read_min: int = 0) -> vchan.Vchan:
        if side == "server":
            return vchan.server(domain, port, read_min, 0, backend=backend)
        return vchan.client(domain, port, timeout=TIMEOUT, backend=backend)

    cases: list[tuple[dict[str, str], dict[str, int], type[Exception]]] = [
        ({"VCHAN_DOMAIN": value}, {}, vchan.InvalidArgument)
        for value in ("abc", "-1", "32752", "", "1.0")
    ]
    cases += [({}, {"domain": 32752}, vchan.InvalidArgument)]
    cases += [({}, {"domain": -1}, vchan.InvalidArgument)]
    cases += [({}, {"port": -1}, vchan.InvalidArgument)]
    if side == "server":
        cases += [({}, {"read_min": (1 << 20) + 1}, vchan.InvalidArgument)]
    long_dir = os.path.join(sockdir, "d" * 120)
    os.mkdir(long_dir)
    cases += [({"VCHAN_SOCKET_DIR": long_dir}, {}, vchan.SocketPathTooLong)]
    for env, args, expected in cases:
        with monkeypatch.context() as m:
            for name, value in env.items():
                m.setenv(name, value)
            with pytest.raises(expected) as info:
                bounded(lambda a=args: init(**a))
        assert isinstance(info.value, ValueError)
        assert str(info.value), f"{env} {args}: an exception without a message"
    assert os.listdir(long_dir) == []
    assert sorted(os.listdir(sockdir)) == sorted([*before, os.path.basename(long_dir)])
    assert fallback.state == vchan.State.WAITING, "a bad VCHAN_DOMAIN fell back to domain 0"
    fallback.close()


# ------------------------------------------------- libraries without libvchan_set_blocking


def _no_set_blocking_lib() -> Any:
    """Our C library, minus ``libvchan_set_blocking`` (like the reference libvchan-socket)."""
    from vchan._cffi import CLibvchan

    class NoSetBlocking(CLibvchan):
        def libvchan_set_blocking(self, handle: Any, blocking: bool) -> None:
            raise NotImplementedError(f"{self.path} has no libvchan_set_blocking")

    return NoSetBlocking(clib_path())


def _emulated_pair(lib: Any, port: int) -> tuple[vchan.Vchan, vchan.Vchan]:
    h = lib.libvchan_server_init(0, port, 65536, 65536)
    assert h is not None
    srv = vchan.Vchan(CEndpoint(lib, h))
    ret = lib.libvchan_client_init_async(0, port)
    assert ret is not None
    cli = vchan.Vchan(_backend.wait_client(_backend._CPending(lib, *ret), TIMEOUT))
    wait_until(lambda: srv.state == vchan.State.CONNECTED)
    return srv, cli


def test_emulated_non_blocking_mode(sockdir):
    lib = _no_set_blocking_lib()
    srv, cli = _emulated_pair(lib, 50)
    with srv, cli:
        srv.set_blocking(False)
        cli.set_blocking(False)
        assert not srv.blocking
        with pytest.raises(BlockingIOError):
            srv.read(10)
        with pytest.raises(BlockingIOError):
            srv.recv(10)
        big = pattern(1_000_000)
        taken = 0
        while True:  # write what fits, never waiting
            try:
                taken += cli.write(big[taken:])
            except BlockingIOError:
                break
        assert 0 < taken < len(big)
        with pytest.raises(BlockingIOError):
            cli.send(b"x" * 65536)
        got = bytearray()
        while len(got) < taken:
            try:
                got += srv.read(65536)
            except BlockingIOError:
                srv.wait()
        assert bytes(got) == big[:taken]
        cli.write(b"tail")
        cli.close()
        wait_until(lambda: srv.state == vchan.State.DISCONNECTED)
        assert srv.read(100) == b"tail"  # data that arrived before the close, then EOF
        assert srv.read(100) == b""
        with pytest.raises(vchan.Disconnected):
            srv.write(b"x")
        srv.set_blocking(True)
        assert srv.blocking


def test_asyncio_streams_over_emulated_non_blocking(sockdir):
    import asyncio

    import vchan.asyncio as va
    from vchan.asyncio.streams import streams

    lib = _no_set_blocking_lib()
    up, down = pattern(2_000_000, 1), pattern(2_000_000, 2)

    async def main() -> None:
        srv, cli = _emulated_pair(lib, 51)
        sr, sw = streams(srv, va.DEFAULT_LIMIT, {})
        cr, cw = streams(cli, va.DEFAULT_LIMIT, {})
        cw.write(up)
        sw.write(down)
        got_up, got_down, _, _ = await asyncio.gather(
            sr.readexactly(len(up)), cr.readexactly(len(down)), cw.drain(), sw.drain()
        )
        assert got_up == up and got_down == down
        cw.write(b"bye")
        cw.close()
        await cw.wait_closed()
        assert await sr.read() == b"bye"
        assert await sr.read() == b""

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def test_c_backend_does_not_load_the_pure_engine(sockdir):
    """The layers take the shared constants from vchan._constants: a process that drives a C
    library never imports vchan._core (nor registers its at-fork hook), even when the pure
    engine is this process's engine; the rings of a C library's channel are unknown."""
    code = (
        "import sys, vchan, vchan.asyncio, vchan.libvchan\n"
        "srv = vchan.server(0, 77)\n"
        "assert srv.state == vchan.State.WAITING\n"
        "assert srv.read_ring is None and srv.write_ring is None\n"
        "srv.close()\n"
        "assert 'vchan._core' not in sys.modules, 'the pure engine was imported'\n"
    )
    env = dict(
        os.environ, VCHAN_PURE_PYTHON="1", VCHAN_BACKEND=clib_path(), VCHAN_SOCKET_DIR=sockdir
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=TIMEOUT)


def test_endpoint_rings(sockdir):
    """Ring sizes are part of the endpoint: the engines tell them, a C library cannot."""
    for name in ("python", "speedups", "c"):
        srv = vchan.server(0, 78, 4096, 8192, backend=backend_arg(name))
        try:
            expected = (None, None) if name == "c" else (4096, 8192)
            assert (srv.read_ring, srv.write_ring) == expected
            cli = vchan.client(0, 78, backend=backend_arg(name))
            ring = None if name == "c" else 65536
            assert (cli.read_ring, cli.write_ring) == (ring, ring)
            cli.close()
        finally:
            srv.close()
