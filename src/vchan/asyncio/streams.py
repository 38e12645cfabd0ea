"""asyncio streams over a vchan: :func:`open_client`, :func:`open_server`, :class:`VchanWriter`."""

from __future__ import annotations

import asyncio as _asyncio
from collections.abc import Iterable
from typing import Any

from vchan.asyncio._connect import connected_client, connected_server
from vchan.asyncio.transport import DEFAULT_LIMIT, VchanTransport, ViewProtocol
from vchan.channel import Vchan


class _StreamProtocol(ViewProtocol):
    """Feeds a StreamReader and keeps the writer's flow control (drain) and close waiter."""

    def __init__(self, reader: _asyncio.StreamReader) -> None:
        self._reader = reader
        self._loop = _asyncio.get_running_loop()
        self._paused = False
        self._lost = False
        self._eof = False
        self._waiters: list[_asyncio.Future[None]] = []
        self._closed: _asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: _asyncio.BaseTransport) -> None:
        self._reader.set_transport(transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed_data(data)

    def feed_view(self, view: memoryview) -> None:
        self._reader.feed_data(view)  # feed_data copies

    def eof_received(self) -> bool:
        self._eof = True
        self._reader.feed_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if not self._eof:
            self._eof = True
            if exc is None or isinstance(exc, ConnectionError):
                self._reader.feed_eof()
            else:
                self._reader.set_exception(exc)
        self._wake(exc)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(None)

    def _wake(self, exc: Exception | None) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    async def drain_helper(self) -> None:
        if self._lost or not self._paused:
            return
        waiter: _asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)

    async def wait_closed(self) -> None:
        await _asyncio.shield(self._closed)


class VchanWriter:
    """The writing half, with the interface of :class:`asyncio.StreamWriter`."""

    def __init__(
        self, transport: VchanTransport, protocol: _StreamProtocol, reader: _asyncio.StreamReader
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._reader = reader

    @property
    def transport(self) -> VchanTransport:
        return self._transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write what the vchan takes now and queue the rest (see :meth:`drain`)."""
        self._transport.write(data)

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._transport.writelines(data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        self._transport.write_eof()

    def close(self) -> None:
        """Close once queued bytes are in the vchan (they then reach a reading peer)."""
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    async def wait_closed(self) -> None:
        await self._protocol.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    async def drain(self) -> None:
        """Wait until the queue is below the high-water mark.

        Raises :class:`vchan.Disconnected` if the peer left before taking queued bytes, and
        :class:`ConnectionResetError` after writing to a closed writer.
        """
        transport = self._transport
        if transport.write_error is not None:
            raise transport.write_error
        protocol = self._protocol
        if protocol._paused and not protocol._lost:  # else nothing to wait for: no hop
            await protocol.drain_helper()
            if transport.write_error is not None:
                raise transport.write_error

    async def __aenter__(self) -> VchanWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        return f"<VchanWriter {self._transport!r}>"


def streams(
    vc: Vchan, limit: int, extra: dict[str, Any]
) -> tuple[_asyncio.StreamReader, VchanWriter]:
    loop = _asyncio.get_running_loop()
    reader = _asyncio.StreamReader(limit=limit, loop=loop)
    protocol = _StreamProtocol(reader)
    transport = VchanTransport(loop, vc, protocol, extra)
    return reader, VchanWriter(transport, protocol, reader)


async def open_client(
    domain: int,
    port: int,
    *,
    limit: int = DEFAULT_LIMIT,
    backend: str | None = None,
    allow_any_uid: bool | None = None,
) -> tuple[_asyncio.StreamReader, VchanWriter]:
    """Connect to the vchan server in ``domain`` on ``port``, waiting for it to appear.

    Bound the wait with ``asyncio.timeout()`` (or cancel the task). ``backend`` and
    ``allow_any_uid`` are as for :func:`vchan.client`; ``limit`` as for asyncio's streams.
    """
    vc = await connected_client(domain, port, allow_any_uid, backend)
    return streams(vc, limit, {"domain": domain, "port": port})


async def open_server(
    domain: int,
    port: int,
    read_min: int = 65536,
    write_min: int = 65536,
    *,
    limit: int = DEFAULT_LIMIT,
    backend: str | None = None,
    allow_any_uid: bool | None = None,
) -> tuple[_asyncio.StreamReader, VchanWriter]:
    """Serve the client in ``domain`` on ``port``; returns once it has connected.

    Listening starts at once (errors such as :class:`vchan.ServerExists` are raised before
    the first wait); cancelling stops listening and removes the socket file.
    """
    vc = await connected_server(domain, port, read_min, write_min, allow_any_uid, backend)
    return streams(vc, limit, {"domain": domain, "port": port})
