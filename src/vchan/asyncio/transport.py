"""The asyncio transport over a vchan, and its protocol-level openers ``connect``/``listen``.

The transport keeps CPython's transport contract (``asyncio.selector_events``): a protocol
callback that raises is reported through the loop's exception handler and closes the
transport with that exception passed to ``connection_lost()``; a transport that is garbage
collected without being closed warns with a :class:`ResourceWarning`.
"""

from __future__ import annotations

import asyncio as _asyncio
import errno as _errno
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from vchan._constants import DISCONNECTED
from vchan.asyncio._connect import connected_client, connected_server
from vchan.channel import Vchan, endpoint_of
from vchan.exceptions import Disconnected, from_oserror

#: StreamReader buffer limit and write-queue high-water mark, as in asyncio.
DEFAULT_LIMIT = 2**16
_CHUNK = 65536
#: Writes smaller than this coalesce (see VchanTransport.write).
_SMALL = 16384
#: An empty write queue keeps its memory up to this size.
_KEEP = 1 << 20
#: errnos of a read or write that found the peer gone.
_GONE = frozenset({_errno.EPIPE, _errno.ECONNRESET})


class ViewProtocol(_asyncio.Protocol):
    """A protocol whose ``feed_view`` takes a view of the transport's read buffer.

    ``feed_view(view)`` stands for ``data_received(bytes(view))`` and must copy what it keeps
    (the buffer is reused): the stream protocol feeds its reader without an extra copy.
    """

    def feed_view(self, view: memoryview) -> None:
        self.data_received(bytes(view))


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
        # Set last: __del__ warns about (and closes) an open transport, fully made.
        self._vc: Vchan | None = None
        self._protocol = protocol
        self._fd = vc.fileno()
        vc.set_blocking(False)
        # The engine's endpoint, called directly (no Vchan layer) on the hot paths: its
        # methods return counts (0: nothing now) and raise OSError with an errno.
        endpoint = endpoint_of(vc)
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
        self._vc = vc
        loop.call_soon(self._call_connection_made)
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
                    gone = self._ep_is_open() == DISCONNECTED
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
        feed: Callable[[memoryview], None]
        if isinstance(protocol, ViewProtocol):
            feed = protocol.feed_view  # copies: a view of our buffer is fine
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
            try:
                feed(view[:n])
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001 - the protocol's: close with it
                self._protocol_failed(exc, "data_received")
                return
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
            self._resume_protocol()
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
                if not self._call_protocol("data_received", bytes(view[:n])):
                    return
            self._eof = True
            # A vchan has no half-close: eof_received()'s answer is moot.
            if not self._call_protocol("eof_received"):
                return
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
        self._loop.call_soon(self._call_connection_lost, exc)

    # -- protocol callbacks (CPython's contract: a raising callback closes the transport)

    def _protocol_failed(self, exc: BaseException, callback: str) -> None:
        """A protocol callback raised: report it as CPython's ``_fatal_error`` does (the
        loop's exception handler), then close at once, ``exc`` going to connection_lost."""
        self._loop.call_exception_handler(
            {
                "message": f"Fatal error: protocol.{callback}() call failed.",
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            }
        )
        if self._vc is None:
            return
        err = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
        self.write_error = self.write_error or err
        self._drop_queue()
        self._shutdown(err)

    def _call_protocol(self, callback: str, *args: object) -> bool:
        """Call the protocol's ``callback``; if it raises, close with that error (False)."""
        try:
            getattr(self._protocol, callback)(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - the protocol's: close with it
            self._protocol_failed(exc, callback)
            return False
        return True

    def _call_connection_made(self) -> None:
        self._call_protocol("connection_made", self)

    def _call_connection_lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as err:  # noqa: BLE001 - nothing is left to close: report it
            self._loop.call_exception_handler(
                {
                    "message": "Fatal error: protocol.connection_lost() call failed.",
                    "exception": err,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    def _pause_protocol(self) -> None:
        self._write_paused = True
        self._call_protocol("pause_writing")

    def _resume_protocol(self) -> None:
        self._write_paused = False
        self._call_protocol("resume_writing")

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # As CPython's _SelectorTransport: an open transport that nobody references any more
        # (the loop holds its reader while the loop lives) was never closed.
        vc = getattr(self, "_vc", None)
        if vc is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._vc = None
            vc.close()

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
            self._pause_protocol()

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
                self._pause_protocol()
            elif self._write_paused and queued <= low:
                self._resume_protocol()

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


async def connect(
    protocol_factory: Callable[[], _asyncio.BaseProtocol],
    domain: int,
    port: int,
    *,
    backend: str | None = None,
    allow_any_uid: bool | None = None,
) -> tuple[VchanTransport, _asyncio.BaseProtocol]:
    """Like ``loop.create_unix_connection``: a client transport and its protocol."""
    vc = await connected_client(domain, port, allow_any_uid, backend)
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
    vc = await connected_server(domain, port, read_min, write_min, allow_any_uid, backend)
    protocol = protocol_factory()
    transport = VchanTransport(
        _asyncio.get_running_loop(), vc, protocol, {"domain": domain, "port": port}
    )
    return transport, protocol
