"""vchan.asyncio: streams, back-pressure, cancellation, timeouts, end of stream."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
import warnings
from collections.abc import Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

import vchan
import vchan.asyncio as va
from tests import _backends
from tests.conftest import SETTLE, TIMEOUT, pattern, sock_path

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
    """Run ``coro`` in a fresh event loop; fail if it takes longer than ``timeout``."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture(autouse=True)
def _private_socket_dir(sockdir: str) -> str:
    return sockdir


@pytest.fixture(autouse=True)
def _asyncio_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every loop here runs in asyncio's debug mode (slow callbacks, wrong-thread calls,
    never-awaited coroutines and unclosed resources are reported)."""
    monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")


@pytest.fixture(params=_backends.names())
def backend(request: pytest.FixtureRequest, sockdir: str) -> Iterator[str]:
    """``python``, our C library, or ``$VCHAN_TEST_LIB``."""
    yield _backends.backend_arg(request.param)


async def pair(
    port: int,
    backend: str = "python",
    limit: int = va.DEFAULT_LIMIT,
    read_min: int = 65536,
    write_min: int = 65536,
) -> tuple[
    tuple[asyncio.StreamReader, va.VchanWriter], tuple[asyncio.StreamReader, va.VchanWriter]
]:
    """(server streams, client streams), connected to each other in domain 0."""
    srv = asyncio.create_task(
        va.open_server(0, port, read_min, write_min, limit=limit, backend=backend)
    )
    cli = await va.open_client(0, port, limit=limit, backend=backend)
    return await srv, cli


async def not_done_after(aw: Awaitable[Any], settle: float = SETTLE) -> asyncio.Task[Any]:
    """Start ``aw`` as a task and assert it is still pending after ``settle`` seconds."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=settle)
    assert not done, f"{aw!r} finished instead of waiting"
    return task


def open_fds() -> set[int]:
    """This process's open fds (after collecting garbage that may still hold some)."""
    gc.collect()
    return {int(n) for n in os.listdir("/proc/self/fd")}


# --------------------------------------------------------------------------------- basics


def test_round_trip_and_stream_methods(backend):
    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(1, backend)
        assert isinstance(sr, asyncio.StreamReader)
        assert sw.get_extra_info("port") == 1
        assert isinstance(sw.get_extra_info("vchan"), vchan.Vchan)
        cw.write(b"line one\nline two\nrecord;")
        cw.writelines([b"abc", b"def"])
        await cw.drain()
        assert await sr.readline() == b"line one\n"
        assert await sr.readuntil(b"\n") == b"line two\n"
        assert await sr.readuntil(b";") == b"record;"
        assert await sr.readexactly(6) == b"abcdef"
        sw.write(b"reply")
        assert await cr.readexactly(5) == b"reply"
        assert not cw.can_write_eof()
        with pytest.raises(NotImplementedError):
            cw.write_eof()
        cw.close()
        await cw.wait_closed()
        assert cw.is_closing()
        assert await sr.read() == b""  # the client closed: end of stream
        assert sr.at_eof()
        sw.close()
        await sw.wait_closed()

    run(main())


def test_large_transfer_both_ways(backend):
    data_up = pattern(3_000_000, seed=1)
    data_down = pattern(2_000_000, seed=2)

    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(2, backend)

        async def send(w: va.VchanWriter, data: bytes) -> None:
            for i in range(0, len(data), 100_000):
                w.write(data[i : i + 100_000])
                await w.drain()

        results = await asyncio.gather(
            send(cw, data_up),
            send(sw, data_down),
            sr.readexactly(len(data_up)),
            cr.readexactly(len(data_down)),
        )
        assert results[2] == data_up
        assert results[3] == data_down
        for w in (cw, sw):
            w.close()
            await w.wait_closed()

    run(main())


def test_no_thread_per_channel(sockdir, monkeypatch):
    """Readiness comes from the event loop; the engine's pusher thread is never needed."""
    from vchan import _core

    started: list[object] = []
    original = _core.Channel._start_pusher

    def spy(self: _core.Channel) -> None:
        started.append(self)
        original(self)

    monkeypatch.setattr(_core.Channel, "_start_pusher", spy)
    data = pattern(4_000_000)

    async def main() -> None:
        before = threading.active_count()
        (sr, sw), (cr, cw) = await pair(3)
        cw.write(data)
        got = await sr.readexactly(len(data))
        await cw.drain()
        assert got == data
        assert threading.active_count() == before
        cw.close()
        sw.close()
        await cw.wait_closed()
        await sw.wait_closed()

    run(main())
    assert started == []


# ---------------------------------------------------------------------------- end of stream


@pytest.mark.spec("READ-DATA-BEFORE-GONE")
def test_end_of_stream_after_all_data(backend):
    """A peer that writes and closes at once: every byte, then b""."""
    data = pattern(500_000)

    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(4, backend)
        cw.write(data)
        cw.close()
        await cw.wait_closed()
        assert await sr.read(-1) == data
        assert await sr.read(100) == b""
        assert sr.at_eof()
        await sw.wait_closed()  # the transport closed itself: the peer is gone
        assert sw.is_closing()

    run(main())


def test_incomplete_read_at_end_of_stream(backend):
    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(5, backend)
        cw.write(b"partial")
        cw.close()
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await sr.readexactly(100)
        assert info.value.partial == b"partial"
        with pytest.raises(asyncio.IncompleteReadError):
            await sr.readuntil(b"\n")

    run(main())


def test_reader_waiting_when_peer_closes(backend):
    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(6, backend)
        reading = await not_done_after(sr.read(10))
        cw.close()
        assert await reading == b""

    run(main())


def test_async_iteration_over_lines():
    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(7)
        cw.write(b"a\nb\nc")
        cw.close()
        assert [line async for line in sr] == [b"a\n", b"b\n", b"c"]

    run(main())


def test_peer_gone_with_queued_bytes_fails_drain(backend):
    """drain() reports bytes the peer never took; the reader still gets all it was sent."""

    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(8, backend)
        sw.write(b"last words")
        await sw.drain()
        cw.write(pattern(4_000_000))  # far more than the rings and socket buffers hold
        draining = await not_done_after(cw.drain())
        assert cw.transport.get_write_buffer_size() > 0
        sw.close()  # the server leaves without reading
        with pytest.raises(vchan.Disconnected):
            await draining
        assert await cr.read() == b"last words"
        assert await cr.read() == b""
        with pytest.raises(vchan.Disconnected):
            await cw.drain()

    run(main())


def test_write_after_close_fails_drain():
    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(9)
        cw.close()
        await cw.wait_closed()
        cw.write(b"too late")
        with pytest.raises(ConnectionResetError):
            await cw.drain()

    run(main())


@pytest.mark.spec("CLOSE-DELIVERS")
def test_close_delivers_queued_bytes(backend):
    """close() with bytes still queued: they reach a peer that keeps reading."""
    data = pattern(3_000_000)

    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(10, backend)
        cw.write(data)
        assert cw.transport.get_write_buffer_size() > 0
        cw.close()
        closing = await not_done_after(cw.wait_closed())  # waits for the reader
        assert await sr.readexactly(len(data)) == data
        await closing
        assert await sr.read() == b""

    run(main())


# ---------------------------------------------------------------------------- back-pressure


def test_drain_waits_for_buffer_space(backend):
    """A peer that does not read: the queue grows, drain() waits; reading releases it."""
    data = pattern(4_000_000)

    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(11, backend)
        cw.write(data)
        draining = await not_done_after(cw.drain())
        low, high = cw.transport.get_write_buffer_limits()
        queued = cw.transport.get_write_buffer_size()
        assert queued > high
        assert sw.get_extra_info("vchan").data_ready() > 0
        got = await sr.readexactly(len(data))
        await draining
        assert got == data
        assert cw.transport.get_write_buffer_size() == 0
        cw.close()
        sw.close()

    run(main())


def test_write_buffer_limits(sockdir):
    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(12)
        cw.transport.set_write_buffer_limits(high=10_000_000)
        assert cw.transport.get_write_buffer_limits() == (2_500_000, 10_000_000)
        cw.write(pattern(4_000_000))
        await cw.drain()  # under the high-water mark: returns at once
        assert cw.transport.get_write_buffer_size() > 0
        draining = await not_done_after(_lower(cw))
        assert await sr.readexactly(4_000_000) == pattern(4_000_000)
        await draining
        with pytest.raises(ValueError):
            cw.transport.set_write_buffer_limits(high=1, low=2)
        cw.close()
        sw.close()

    async def _lower(w: va.VchanWriter) -> None:
        w.transport.set_write_buffer_limits(high=0)
        await w.drain()

    run(main())


def test_reader_limit_pauses_reading(backend):
    """A reader that does not read stops pulling from the vchan (the peer's drain waits)."""
    data = pattern(3_000_000)

    async def main() -> None:
        (sr, sw), (cr, cw) = await pair(13, backend, limit=4096)
        cw.write(data)
        draining = await not_done_after(cw.drain())
        assert not sw.transport.is_reading()
        assert len(sr._buffer) <= 2 * 4096 + 65536  # paused, not slurping everything
        got = await sr.readexactly(len(data))
        await draining
        assert got == data
        cw.close()
        sw.close()

    run(main())


# ---------------------------------------------------------------------- cancellation, timeouts


def test_open_client_timeout(backend):
    async def main() -> None:
        fds = open_fds()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await va.open_client(0, 20, backend=backend)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(va.open_client(0, 20, backend=backend), 0.1)
        assert not open_fds() - fds  # the attempts were closed

    run(main())


def test_open_client_cancel_then_server_is_free(backend, sockdir):
    async def main() -> None:
        fds = open_fds()
        task = asyncio.create_task(va.open_client(0, 21, backend=backend))
        await not_done_after(asyncio.shield(task))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not open_fds() - fds  # nothing of ours left open
        # A server started now is not taken by the abandoned attempt.
        srv = asyncio.create_task(va.open_server(0, 21, backend=backend))
        await not_done_after(asyncio.shield(srv))
        (cr, cw) = await va.open_client(0, 21, backend=backend)
        sr, sw = await srv
        cw.write(b"x")
        assert await sr.readexactly(1) == b"x"
        cw.close()
        sw.close()

    run(main())


def test_open_client_waits_for_late_server(backend):
    async def main() -> None:
        client = await not_done_after(va.open_client(0, 22, backend=backend))
        server = asyncio.create_task(va.open_server(0, 22, backend=backend))
        cr, cw = await client
        sr, sw = await server
        sw.write(b"hi")
        assert await cr.readexactly(2) == b"hi"
        cw.close()
        sw.close()

    run(main())


def test_open_server_cancel_removes_socket(backend, sockdir):
    async def main() -> None:
        fds = open_fds()
        task = await not_done_after(va.open_server(0, 23, backend=backend))
        assert sock_path(sockdir, 0, 0, 23).exists()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not sock_path(sockdir, 0, 0, 23).exists()
        assert not open_fds() - fds  # nothing of ours left open

    run(main())


def test_open_server_timeout(sockdir):
    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await va.open_server(0, 24)
        assert os.listdir(sockdir) == []

    run(main())


@pytest.mark.spec("ADDR-REFUSE-BAD")
def test_errors_are_raised_at_once(sockdir, monkeypatch):
    async def main() -> None:
        with pytest.raises(vchan.InvalidArgument):
            await va.open_client(-1, 1)
        with pytest.raises(vchan.InvalidArgument):
            await va.open_server(0, 1, read_min=1 << 30)
        srv = asyncio.create_task(va.open_server(0, 25))
        await not_done_after(asyncio.shield(srv))
        with pytest.raises(vchan.ServerExists):
            await va.open_server(0, 25)
        srv.cancel()
        monkeypatch.setenv("VCHAN_SOCKET_DIR", os.path.join(sockdir, "missing"))
        with pytest.raises(vchan.SocketDirMissing):
            await va.open_client(0, 1)

    run(main())


def test_untrusted_connection_does_not_block_the_loop(sockdir, monkeypatch):
    """A WAITING server that refuses a peer keeps waiting without blocking the loop
    (the pure engine, told to refuse the first peer; any uid: see the next test)."""
    from vchan import _core

    refused: list[bool] = []
    monkeypatch.setattr(
        _core.Channel, "_trusted", lambda self, sock: refused.append(True) or len(refused) > 1
    )

    async def main() -> None:
        srv = await not_done_after(va.open_server(0, 26, backend="python"))
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(str(sock_path(sockdir, 0, 0, 26)))
        ticks = 0
        while not refused:  # the loop keeps running while the refusal happens
            await asyncio.sleep(0.001)
            ticks += 1
        assert not srv.done()
        raw.close()
        raw2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw2.connect(str(sock_path(sockdir, 0, 0, 26)))
        sr, sw = await srv
        raw2.sendall(b"plain socket peer")
        assert await sr.readexactly(17) == b"plain socket peer"
        raw2.close()
        assert await sr.read() == b""

    run(main())


def test_other_uid_connection_does_not_block_the_loop(backend, sockdir):
    """The same with a real peer of another uid (nobody), for every backend."""
    from tests.reliability.test_security import _as_nobody, _intruder, _nobody, _reap

    nobody = _nobody()
    path = str(sock_path(sockdir, 0, 0, 27))
    os.chmod(sockdir, 0o777)

    async def main() -> None:
        old = os.umask(0)
        try:
            srv = asyncio.create_task(va.open_server(0, 27, backend=backend))
            await not_done_after(asyncio.shield(srv))
        finally:
            os.umask(old)
        pid, ready = _as_nobody(_intruder(path, b"intruder", None), nobody)
        try:
            code = -1
            while code == -1:  # the loop keeps running while the refusal happens
                await asyncio.sleep(0.001)
                got, status = os.waitpid(pid, os.WNOHANG)
                if got:
                    code = os.waitstatus_to_exitcode(status)
        except BaseException:
            _reap(pid, 0)
            raise
        finally:
            os.close(ready)
        assert code == 0, f"nobody's connection was not refused (child code {code})"
        await not_done_after(asyncio.shield(srv))
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(path)
        sr, sw = await srv
        raw.sendall(b"plain socket peer")
        assert await sr.readexactly(17) == b"plain socket peer"
        raw.close()
        assert await sr.read() == b""
        sw.close()

    run(main())


# ------------------------------------------------------------------------ callback and protocol


def test_start_server_serves_one_client_after_another(sockdir):
    async def handle(reader: asyncio.StreamReader, writer: va.VchanWriter) -> None:
        name = await reader.readline()
        writer.write(b"hello " + name)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        async with await va.start_server(handle, 0, 30) as server:
            assert server.is_serving()
            for who in (b"a\n", b"b\n", b"c\n"):
                reader, writer = await va.open_client(0, 30)
                writer.write(who)
                assert await reader.read() == b"hello " + who
                writer.close()
        assert not server.is_serving()
        assert not sock_path(sockdir, 0, 0, 30).exists()

    run(main())


def test_start_server_plain_callback_and_serve_forever(sockdir):
    seen: list[va.VchanWriter] = []

    def handle(reader: asyncio.StreamReader, writer: va.VchanWriter) -> None:
        seen.append(writer)
        writer.write(b"!")

    async def main() -> None:
        server = await va.start_server(handle, 0, 31)
        forever = asyncio.create_task(server.serve_forever())
        reader, writer = await va.open_client(0, 31)
        assert await reader.readexactly(1) == b"!"
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        assert not server.is_serving()
        assert len(seen) == 1
        writer.close()
        seen[0].close()

    run(main())


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data.upper())

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


def test_protocol_transport_forms(backend):
    async def main() -> None:
        listening = asyncio.create_task(va.listen(Echo, 0, 40, backend=backend))
        transport, proto = await va.connect(Echo, 0, 40, backend=backend)
        s_transport, s_proto = await listening
        assert isinstance(s_proto, Echo)
        reader = asyncio.StreamReader()
        # Swap the client's protocol for a stream reader to look at the echo.
        rp = asyncio.StreamReaderProtocol(reader)
        transport.set_protocol(rp)
        rp.connection_made(transport)
        transport.write(b"shout")
        assert await reader.readexactly(5) == b"SHOUT"
        transport.close()
        assert await s_proto.lost is None
        assert s_proto.eof

    run(main())


def test_start_server_handler_errors_are_reported_and_serving_continues():
    errors: list[dict[str, Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: va.VchanWriter) -> None:
        if await reader.readexactly(1) == b"!":
            raise RuntimeError("handler failed")
        writer.write(b"ok")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        async with await va.start_server(handle, 0, 32):
            reader, writer = await va.open_client(0, 32)
            writer.write(b"!")
            assert await reader.read() == b""  # the failed handler's channel was closed
            reader, writer = await va.open_client(0, 32)
            writer.write(b".")
            assert await reader.readexactly(2) == b"ok"
            writer.close()
            await writer.wait_closed()

    run(main())
    assert [str(e["exception"]) for e in errors] == ["handler failed"]


class Raising(asyncio.Protocol):
    """Raises from the callback named ``when``; records what the transport did about it."""

    def __init__(self, when: str) -> None:
        self.when = when
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.calls: list[str] = []

    def _maybe_raise(self, name: str) -> None:
        self.calls.append(name)
        if name == self.when:
            raise ZeroDivisionError(name)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._maybe_raise("connection_made")

    def data_received(self, data: bytes) -> None:
        self._maybe_raise("data_received")

    def eof_received(self) -> bool:
        self._maybe_raise("eof_received")
        return False

    def pause_writing(self) -> None:
        self._maybe_raise("pause_writing")

    def resume_writing(self) -> None:
        self._maybe_raise("resume_writing")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        self._maybe_raise("connection_lost")


@pytest.mark.parametrize(
    "when",
    ["connection_made", "data_received", "eof_received", "pause_writing", "resume_writing"],
)
def test_raising_protocol_callback_closes_the_transport(backend, when):
    """As CPython's transports: reported to the loop's exception handler, then the transport
    closes with that exception passed to connection_lost() (nothing propagates)."""
    contexts: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: contexts.append(ctx))
        listening = asyncio.create_task(va.listen(lambda: Raising(when), 0, 41, backend=backend))
        transport, proto = await va.connect(Echo, 0, 41, backend=backend)
        s_transport, s_proto = await listening
        assert isinstance(s_proto, Raising)
        if when == "data_received":
            transport.write(b"x")
        elif when == "eof_received":
            transport.close()
        elif when in ("pause_writing", "resume_writing"):
            s_transport.set_write_buffer_limits(high=0)
            s_transport.write(b"y" * (4 << 20))  # more than the vchan takes: pauses
            if when == "resume_writing":
                assert s_transport.get_write_buffer_size()
                s_transport.set_write_buffer_limits(high=1 << 30)  # resumes
        exc = await s_proto.lost
        assert isinstance(exc, ZeroDivisionError) and str(exc) == when
        assert s_transport.is_closing()
        assert s_transport.get_extra_info("vchan").closed
        transport.close()
        await proto.lost

    run(main())
    failed = [ctx for ctx in contexts if ctx.get("protocol") is not None]
    assert [str(ctx["exception"]) for ctx in failed] == [when]
    assert failed[0]["message"] == f"Fatal error: protocol.{when}() call failed."
    assert failed[0]["transport"].is_closing()


def test_raising_connection_lost_is_reported(backend):
    contexts: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: contexts.append(ctx))
        listening = asyncio.create_task(
            va.listen(lambda: Raising("connection_lost"), 0, 42, backend=backend)
        )
        transport, proto = await va.connect(Echo, 0, 42, backend=backend)
        s_transport, s_proto = await listening
        s_transport.close()
        assert await s_proto.lost is None
        await asyncio.sleep(0)
        transport.close()
        await proto.lost

    run(main())
    assert [ctx["message"] for ctx in contexts] == [
        "Fatal error: protocol.connection_lost() call failed."
    ]
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)


def test_unclosed_transport_warns(backend):
    """As CPython's: a transport collected while open gives a ResourceWarning (and closes
    its vchan)."""
    held: list[vchan.Vchan] = []

    async def main() -> None:
        listening = asyncio.create_task(va.listen(Echo, 0, 43, backend=backend))
        transport, _proto = await va.connect(Echo, 0, 43, backend=backend)
        s_transport, _s_proto = await listening
        held.extend((transport.get_extra_info("vchan"), s_transport.get_extra_info("vchan")))
        # Both are left open: the loop's readers keep them alive until the loop closes.

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(main())
        gc.collect()
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert len([w for w in unclosed if "unclosed transport <VchanTransport" in str(w.message)]) == 2
    assert all(vc.closed for vc in held)
