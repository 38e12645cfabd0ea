"""asyncio streams over vchans: ``reader, writer = await vchan.asyncio.open_client(0, 111)``.

Everything is driven by the vchan's select fd on the event loop (``loop.add_reader``): no
thread per channel, no polling loop. The fd is edge-like (only ``wait()`` clears it, and it
does not stay readable while unread data waits), so each wake-up calls ``wait()`` and then
reads until nothing is left and writes until a write falls short; any later event (data
arrived, the peer left, or the peer consumed data after a write fell short, which is what
asks for that event) makes the fd readable again.

* :func:`open_client` connects with the asynchronous client init, so it honours
  cancellation, ``asyncio.timeout()`` and ``asyncio.wait_for()``.
* :func:`open_server` listens, and returns once a client has connected (cancel it to stop
  listening: the socket file is removed).
* :func:`start_server` is the callback form, like :func:`asyncio.start_unix_server`: each
  client gets its own ``(reader, writer)``; a fresh vchan server listens again as soon as one
  is taken, since a vchan serves exactly one client.
* :func:`connect` and :func:`listen` are the protocol/transport forms.

The reader is an :class:`asyncio.StreamReader`; the writer (:class:`VchanWriter`) has the
:class:`asyncio.StreamWriter` interface. ``write()`` puts into the vchan what fits at once
and queues the rest; ``drain()`` waits while more than the high-water mark (64 KiB by
default) is queued, the queue being moved into the vchan as far as it fits whenever the
vchan has room; it raises :class:`vchan.Disconnected` if the peer
left before taking queued bytes. The end of the stream (``read()`` returning ``b""``) comes
after every byte the peer wrote before it closed. A vchan has no half-close, so
``can_write_eof()`` is False.
"""

from __future__ import annotations

import asyncio as _asyncio
import errno as _errno
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from vchan import _backend, _config, _core, _engine
from vchan.channel import State, Vchan
from vchan.channel import server as _server
from vchan.exceptions import Disconnected, from_oserror

__all__ = [
    "VchanServer",
    "VchanTransport",
    "VchanWriter",
    "connect",
    "listen",
    "open_client",
    "open_server",
    "start_server",
]

#: StreamReader buffer limit and write-queue high-water mark, as in asyncio.
DEFAULT_LIMIT = 2**16
_CHUNK = 65536
#: errnos of a read or write that found the peer gone.
#: Writes smaller than this coalesce (see VchanTransport.write).
_SMALL = 16384
#: An empty write queue keeps its memory up to this size.
_KEEP = 1 << 20
_GONE = frozenset({_errno.EPIPE, _errno.ECONNRESET})


async def _until(fd: int, step: Callable[[], bool]) -> None:
    """Call ``step()`` now and whenever ``fd`` is readable, until it returns True."""
    if step():
        return
    loop = _asyncio.get_running_loop()
    fut: _asyncio.Future[None] = loop.create_future()

    def on_ready() -> None:
        if fut.done():
            return
        try:
            if step():
                fut.set_result(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            fut.set_exception(exc)

    loop.add_reader(fd, on_ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


class VchanTransport(_asyncio.Transport):
    """An asyncio transport over a connected :class:`vchan.Vchan` (non-blocking).

    Extra info: ``"vchan"`` (the :class:`Vchan`), ``"domain"`` (the peer's), ``"port"``.
    """

    def __init__(
        self,
        loop: _asyncio.AbstractEventLoop,
        vc: Vchan,
        protocol: _asyncio.BaseProtocol,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(dict(extra or {}, vchan=vc))
        self._loop = loop
        self._vc: Vchan | None = vc
        self._protocol = protocol
        self._fd = vc.fileno()
        vc.set_blocking(False)
        # The engine's endpoint, called directly (no Vchan layer) on the hot paths: its
        # methods return counts (0: nothing now) and raise OSError with an errno.
        endpoint = vc._endpoint()
        self._ep_wait = endpoint.wait
        self._ep_read = endpoint.read
        self._ep_write = endpoint.write
        self._ep_is_open = endpoint.is_open
        #: Largest single write (a non-blocking write takes at most the write ring, SPEC §4).
        self._wcap = vc.write_ring or _CHUNK
        # Every read takes all the ring holds at once, into this one buffer.
        self._rbuf = memoryview(bytearray(vc.read_ring or _CHUNK))
        # The write queue: bytes [_wpos, _wend) of _wbuf. _wbuf is only ever written by
        # equal-length slice assignment or replaced (never resized), so a lingering view of
        # it (an exception's frames) cannot make a later write fail; and a steady stream
        # reuses the same memory instead of reallocating it batch after batch.
        self._wbuf = bytearray()
        self._wpos = 0
        self._wend = 0
        self._high = DEFAULT_LIMIT
        self._low = DEFAULT_LIMIT // 4
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        self._closing = False
        self._scheduled = False
        # Small writes: the first one since our last callback goes straight into the vchan
        # (a reply costs no loop iteration); further ones coalesce in the queue until a
        # flush that runs before the loop next sleeps (one engine write per batch).
        self._wrote = False
        self._flush_soon = False
        #: Why queued bytes were dropped (the peer left, or written after close).
        self.write_error: Exception | None = None
        loop.call_soon(protocol.connection_made, self)
        loop.add_reader(self._fd, self._on_ready)
        self._schedule()  # bytes (or the peer's departure) may predate the transport

    # -- event handling ---------------------------------------------------------------
    #
    # Notification (SPEC §5): the select fd is readable after data arrived, the peer left,
    # or (only when asked, by a write that fell short) the peer consumed. Only wait() clears
    # it, and after wait() it stays unreadable until something new happens, even if unread
    # bytes wait. So a wake-up runs wait() first, then moves queued output until a write
    # falls short (which asks for the consumption event that wakes us when there is room)
    # and reads until nothing is left. Output is queued only after a short write, so the
    # loop never sleeps with output pending and no request armed.

    def _schedule(self) -> None:
        if not self._scheduled and self._vc is not None:
            self._scheduled = True
            self._loop.call_soon(self._service)

    def _on_ready(self) -> None:
        """The select fd polled readable (the event loop's reader callback)."""
        if self._vc is None:
            return
        self._wrote = False
        try:
            # It polled readable, so wait() does not block (and nothing since can have
            # cleared it: only wait() clears it, and only this callback calls wait()).
            self._ep_wait()
        except (OSError, ValueError) as exc:
            self._fatal(exc)
            return
        self._service()

    def _service(self) -> None:
        self._scheduled = False
        if self._vc is None:
            return
        if self._wend and not self._flush():
            return
        if not self._closing:
            if not self._read_paused:
                self._pull()
            elif not self._eof:
                # Not reading: the peer's departure must still close us (and fail drain()).
                try:
                    gone = self._ep_is_open() == _core.DISCONNECTED
                except (OSError, ValueError) as exc:
                    self._fatal(exc)
                    return
                if gone:
                    self._peer_gone()
        if self._closing and not self._wend:
            self._shutdown(None)

    def _deferred_flush(self) -> None:
        """Move coalesced small writes in (scheduled by write(), so it runs before the loop
        sleeps: queued output never waits without a short write having asked for room)."""
        self._flush_soon = False
        self._wrote = False
        if self._vc is None or not self._wend or not self._flush():
            return
        if self._closing and not self._wend:
            self._shutdown(None)

    def _pull(self) -> None:
        """Read until the vchan has nothing more (or reading pauses, or the stream ends).

        Reading until a read returns nothing (rather than stopping at a short read) is what
        finds the end of the stream when the peer wrote and left before the wait(): its
        departure was that same event."""
        view = self._rbuf
        size = len(view)
        read = self._ep_read
        protocol = self._protocol
        feed: Callable[[Any], None]
        if type(protocol) is _StreamProtocol:
            feed = protocol._reader.feed_data  # copies: a view of our buffer is fine
        else:
            assert isinstance(protocol, _asyncio.Protocol)
            received = protocol.data_received

            def feed(chunk: memoryview) -> None:
                received(bytes(chunk))

        err: BaseException | None = None
        while not self._read_paused and self._vc is not None:
            try:
                n = read(view, size)
            except (OSError, ValueError) as exc:
                err = exc
                break
            if not n:
                return
            feed(view[:n])
        else:
            return
        # Outside the except block, so the exception no longer pins views of our buffers.
        if isinstance(err, OSError) and err.errno in _GONE:
            self._peer_gone()
        else:
            self._fatal(err)

    def _flush(self) -> bool:
        """Move queued output into the vchan until a write falls short (that asks for the
        consumption event) or nothing is left; False if the transport closed."""
        write = self._ep_write
        cap = self._wcap
        pos, end = self._wpos, self._wend
        err: BaseException | None = None
        # No `with`/release(): a backend may still hold a buffer export of a slice (cffi's
        # from_buffer, kept alive by an exception's traceback), and releasing the parent
        # view under it corrupts the export count. Dropping the reference is enough.
        view = memoryview(self._wbuf)
        while pos < end:
            size = end - pos
            if size > cap:
                size = cap
            try:
                n = write(view[pos:], size)
            except (OSError, ValueError) as exc:
                err = exc
                break
            pos += n
            if n < size:
                break
        del view
        if pos == end:
            pos = end = 0
            if len(self._wbuf) > _KEEP:
                self._wbuf = bytearray()  # after a burst, give the memory back
        self._wpos, self._wend = pos, end
        if err is not None:
            if isinstance(err, OSError) and err.errno in _GONE:
                self._peer_gone()
            else:
                self._fatal(err)
            return False
        if self._write_paused and end - pos <= self._low:
            self._write_paused = False
            self._protocol.resume_writing()
        return self._vc is not None

    def _queue(self, view: memoryview) -> None:
        """Append to the write queue (moving it to a larger buffer when it does not fit)."""
        n = len(view)
        pos, end = self._wpos, self._wend
        wbuf = self._wbuf
        if end + n > len(wbuf):
            keep = end - pos
            new = bytearray(max(2 * (keep + n), _CHUNK))
            new[:keep] = memoryview(wbuf)[pos:end]
            self._wbuf = wbuf = new
            pos, end = 0, keep
            self._wpos = 0
        wbuf[end : end + n] = view
        self._wend = end + n

    def _drop_queue(self) -> int:
        """Empty the write queue (a new buffer: a view of the old may be alive); its size."""
        queued = self._wend - self._wpos
        self._wbuf = bytearray()
        self._wpos = self._wend = 0
        return queued

    def _peer_gone(self) -> None:
        """The peer left: deliver what it sent, then the end of stream, then close."""
        if not self._eof and not self._closing:
            protocol = self._protocol
            assert isinstance(protocol, _asyncio.Protocol)
            view = self._rbuf
            while True:
                try:
                    n = self._ep_read(view, len(view))
                except (OSError, ValueError):
                    break
                if not n:
                    break
                protocol.data_received(bytes(view[:n]))
            self._eof = True
            protocol.eof_received()
        self._eof = True
        exc: Exception | None = None
        if self._wend:
            exc = Disconnected(
                f"vchan peer disconnected with {self._drop_queue()} bytes not yet taken"
            )
            self.write_error = exc
        self._shutdown(exc)

    def _fatal(self, exc: BaseException | None) -> None:
        err = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
        if isinstance(err, OSError):
            err = from_oserror(err)
        err = err.with_traceback(None)  # keep no frames (nor their views) alive
        self.write_error = self.write_error or err
        self._drop_queue()
        self._shutdown(err)

    def _shutdown(self, exc: Exception | None) -> None:
        vc, self._vc = self._vc, None
        if vc is None:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        vc.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)

    # -- asyncio.Transport ----------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write what the vchan takes now; queue the rest (moved in as room appears)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):  # noqa: UP038 - faster
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        view = memoryview(data)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        size = len(view)
        if not size:
            return
        if self._vc is None or self._closing:
            if self.write_error is None:
                self.write_error = ConnectionResetError("write on a closed vchan")
            return
        if self._wend:
            # Queued output: either the last write fell short, which asked for the
            # consumption event (the wake-up it brings moves this too), or a flush is
            # scheduled (coalescing small writes).
            self._queue(view)
        elif self._wrote and size < _SMALL:
            self._queue(view)  # a further small write before the loop ran our callbacks
            if not self._flush_soon:
                self._flush_soon = True
                self._loop.call_soon(self._deferred_flush)
        else:
            self._wrote = True
            err: BaseException | None = None
            try:
                # All of it: a write capped at the ring is short too, so it asks (SPEC §5).
                n = self._ep_write(view, size)
            except (OSError, ValueError) as exc:
                err = exc
                n = 0
            if err is not None:  # handled outside the except block (no view kept alive)
                if isinstance(err, OSError) and err.errno in _GONE:
                    self._queue(view)  # reported as bytes the peer never took
                    self._peer_gone()
                else:
                    self._fatal(err)
                return
            if n == size:
                return
            # Short: nothing fitted, or the write was capped at the ring (there may be room
            # for more). Either way the engine armed the consumption request.
            self._queue(view[n:])
            if n >= self._wcap and not self._flush():
                return
        if not self._write_paused and self._wend - self._wpos > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a vchan has no half-close: use close()")

    def get_write_buffer_size(self) -> int:
        return self._wend - self._wpos

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_LIMIT if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        if self._vc is not None:
            queued = self._wend - self._wpos
            if not self._write_paused and queued > high:
                self._write_paused = True
                self._protocol.pause_writing()
            elif self._write_paused and queued <= low:
                self._write_paused = False
                self._protocol.resume_writing()

    def is_reading(self) -> bool:
        return self._vc is not None and not self._read_paused and not self._closing

    def pause_reading(self) -> None:
        self._read_paused = True

    def resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            self._schedule()  # data may be waiting with no new event to come

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; close the vchan once the queued bytes are in it."""
        if self._closing:
            return
        self._closing = True
        if self._wend:
            self._schedule()
        else:
            self._shutdown(None)

    def abort(self) -> None:
        """Close now, dropping queued bytes."""
        if self._wend:
            self.write_error = ConnectionAbortedError("vchan transport aborted")
            self._drop_queue()
        self._closing = True
        self._shutdown(None)

    def set_protocol(self, protocol: _asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> _asyncio.BaseProtocol:
        return self._protocol

    def __repr__(self) -> str:
        state = "closed" if self._vc is None else "closing" if self._closing else "open"
        return f"<VchanTransport fd={self._fd} {state} queued={self._wend - self._wpos}>"


class _StreamProtocol(_asyncio.Protocol):
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


def _streams(
    vc: Vchan, limit: int, extra: dict[str, Any]
) -> tuple[_asyncio.StreamReader, VchanWriter]:
    loop = _asyncio.get_running_loop()
    reader = _asyncio.StreamReader(limit=limit, loop=loop)
    protocol = _StreamProtocol(reader)
    transport = VchanTransport(loop, vc, protocol, extra)
    return reader, VchanWriter(transport, protocol, reader)


async def _connected_client(
    domain: int, port: int, allow_any_uid: bool | None, backend: str | None
) -> Vchan:
    try:
        pending = _backend.start_client(domain, port, allow_any_uid=allow_any_uid, backend=backend)
    except OSError as exc:
        raise from_oserror(exc) from None
    try:
        await _until(pending.fileno(), lambda: pending.finish(False) == 0)
    except OSError as exc:
        pending.close()
        raise from_oserror(exc) from None
    except BaseException:
        pending.close()  # cancelled (or timed out): abandon the attempt
        raise
    endpoint = pending.endpoint()
    ring = _config.CLIENT_RING if _engine.is_channel(endpoint) else None
    return Vchan(endpoint, read_ring=ring, write_ring=ring)


async def _connected_server(
    domain: int,
    port: int,
    read_min: int,
    write_min: int,
    allow_any_uid: bool | None,
    backend: str | None,
) -> Vchan:
    vc = _server(domain, port, read_min, write_min, allow_any_uid=allow_any_uid, backend=backend)
    try:
        vc.set_blocking(False)
        await _until(vc.fileno(), lambda: vc.state != State.WAITING)
    except BaseException:
        vc.close()  # stop listening: the socket file goes away
        raise
    return vc


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
    vc = await _connected_client(domain, port, allow_any_uid, backend)
    return _streams(vc, limit, {"domain": domain, "port": port})


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
    vc = await _connected_server(domain, port, read_min, write_min, allow_any_uid, backend)
    return _streams(vc, limit, {"domain": domain, "port": port})


async def connect(
    protocol_factory: Callable[[], _asyncio.BaseProtocol],
    domain: int,
    port: int,
    *,
    backend: str | None = None,
    allow_any_uid: bool | None = None,
) -> tuple[VchanTransport, _asyncio.BaseProtocol]:
    """Like ``loop.create_unix_connection``: a client transport and its protocol."""
    vc = await _connected_client(domain, port, allow_any_uid, backend)
    protocol = protocol_factory()
    transport = VchanTransport(
        _asyncio.get_running_loop(), vc, protocol, {"domain": domain, "port": port}
    )
    return transport, protocol


async def listen(
    protocol_factory: Callable[[], _asyncio.BaseProtocol],
    domain: int,
    port: int,
    read_min: int = 65536,
    write_min: int = 65536,
    *,
    backend: str | None = None,
    allow_any_uid: bool | None = None,
) -> tuple[VchanTransport, _asyncio.BaseProtocol]:
    """Serve one client with a protocol; returns once it has connected."""
    vc = await _connected_server(domain, port, read_min, write_min, allow_any_uid, backend)
    protocol = protocol_factory()
    transport = VchanTransport(
        _asyncio.get_running_loop(), vc, protocol, {"domain": domain, "port": port}
    )
    return transport, protocol


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
                await _until(vc.fileno(), _connected_check(vc))
                self._listening = None
                self._spawn(vc)
        finally:
            if self._listening is not None:
                self._listening.close()
                self._listening = None

    def _spawn(self, vc: Vchan) -> None:
        loop = _asyncio.get_running_loop()
        reader, writer = _streams(vc, self._limit, self._extra)

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
