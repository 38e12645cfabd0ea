"""The callback server, like :func:`asyncio.start_unix_server`: :func:`start_server`."""

from __future__ import annotations

import asyncio as _asyncio
from collections.abc import Awaitable, Callable

from vchan.asyncio._connect import until
from vchan.asyncio.streams import VchanWriter, streams
from vchan.asyncio.transport import DEFAULT_LIMIT
from vchan.channel import State, Vchan
from vchan.channel import server as _server


def _connected_check(vc: Vchan) -> Callable[[], bool]:
    return lambda: vc.state != State.WAITING


ClientConnected = Callable[[_asyncio.StreamReader, VchanWriter], Awaitable[None] | None]


class VchanServer:
    """Serves clients of one domain on one port, like :class:`asyncio.Server`.

    A vchan serves exactly one client, so after each connection a fresh vchan server
    listens again at once; each client runs ``client_connected_cb(reader, writer)``
    (a coroutine function becomes a task). Use ``async with``, :meth:`serve_forever`,
    :meth:`close` and :meth:`wait_closed`.
    """

    def __init__(
        self,
        client_connected_cb: ClientConnected,
        domain: int,
        port: int,
        read_min: int,
        write_min: int,
        limit: int,
        backend: str | None,
        allow_any_uid: bool | None,
    ) -> None:
        self._cb = client_connected_cb
        self._args = (domain, port, read_min, write_min, allow_any_uid, backend)
        self._limit = limit
        self._extra = {"domain": domain, "port": port}
        self._listening: Vchan | None = None
        self._accept_task: _asyncio.Task[None] | None = None
        self._handlers: set[_asyncio.Task[None]] = set()
        self._closed = _asyncio.get_running_loop().create_future()

    def _listen(self) -> Vchan:
        domain, port, read_min, write_min, allow_any_uid, backend = self._args
        vc = _server(
            domain, port, read_min, write_min, allow_any_uid=allow_any_uid, backend=backend
        )
        vc.set_blocking(False)
        return vc

    def _start(self) -> None:
        self._listening = self._listen()  # errors surface in start_server()
        self._accept_task = _asyncio.get_running_loop().create_task(self._accept_loop())
        self._accept_task.add_done_callback(lambda _task: self.close())

    async def _accept_loop(self) -> None:
        try:
            while True:
                vc = self._listening
                if vc is None:
                    vc = self._listening = self._listen()
                await until(vc.fileno(), _connected_check(vc))
                self._listening = None
                self._spawn(vc)
        finally:
            if self._listening is not None:
                self._listening.close()
                self._listening = None

    def _spawn(self, vc: Vchan) -> None:
        loop = _asyncio.get_running_loop()
        reader, writer = streams(vc, self._limit, self._extra)

        def failed(exc: BaseException) -> None:
            # As asyncio's servers do: report the handler's error, close its channel.
            loop.call_exception_handler(
                {
                    "message": "vchan client_connected_cb failed",
                    "exception": exc,
                    "transport": writer.transport,
                }
            )
            writer.transport.abort()

        try:
            result = self._cb(reader, writer)
        except Exception as exc:  # noqa: BLE001 - reported, the server keeps serving
            failed(exc)
            return
        if _asyncio.iscoroutine(result):
            task = loop.create_task(result)
            self._handlers.add(task)

            def done(task: _asyncio.Task[None]) -> None:
                self._handlers.discard(task)
                exc = None if task.cancelled() else task.exception()
                if exc is not None:
                    failed(exc)

            task.add_done_callback(done)

    def is_serving(self) -> bool:
        return self._accept_task is not None and not self._accept_task.done()

    def close(self) -> None:
        """Stop listening (connected clients are not affected)."""
        if self._accept_task is not None:
            self._accept_task.cancel()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await _asyncio.shield(self._closed)
        if self._accept_task is not None:
            try:
                await self._accept_task
            except _asyncio.CancelledError:
                pass

    async def serve_forever(self) -> None:
        """Serve until cancelled (then stop listening)."""
        try:
            await _asyncio.shield(self._closed)
        finally:
            self.close()
            await self.wait_closed()

    async def __aenter__(self) -> VchanServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


async def start_server(
    client_connected_cb: ClientConnected,
    domain: int,
    port: int,
    read_min: int = 65536,
    write_min: int = 65536,
    *,
    limit: int = DEFAULT_LIMIT,
    backend: str | None = None,
    allow_any_uid: bool | None = None,
) -> VchanServer:
    """Serve clients of ``domain`` on ``port`` with a callback, like
    :func:`asyncio.start_unix_server`; returns once listening."""
    srv = VchanServer(
        client_connected_cb, domain, port, read_min, write_min, limit, backend, allow_any_uid
    )
    srv._start()
    return srv
