"""anyio byte streams over vchans, for trio and asyncio programs alike.

``stream = await vchan.anyio.connect(0, 111)`` gives an :class:`anyio.abc.ByteStream`
(:class:`VchanStream`): ``receive()``, ``send()``, ``aclose()``, ``async with``. It runs
under either of anyio's backends (asyncio, trio); both ends need not use the same one.

* :func:`connect` waits for the server to appear (cancel it, or use ``anyio.fail_after``,
  to give up); :func:`serve` listens and returns once the client has connected;
  :func:`create_listener` gives an :class:`anyio.abc.Listener` that serves one client after
  another (a vchan serves exactly one client, so it listens again for the next).
* Everything is driven by the vchan's select fd through :func:`anyio.wait_readable`: no
  thread, no polling. Each wake-up is one ``wait()`` (which clears the fd), after which
  reads and writes are tried again; a write that falls short asks for the peer's
  consumption event, so the sender sleeps until the peer has made room.
* Cancellation: a cancelled :meth:`VchanStream.receive` has consumed nothing (bytes are
  only taken from the vchan right before it returns them). :meth:`VchanStream.send` takes
  the whole item at once: cancelling it stops the *waiting*, not the sending. Bytes it had
  not yet written stay queued in the stream and go into the vchan first, before anything a
  later ``send()`` passes, as room appears while the stream is used (``send()``,
  ``receive()``) and at ``aclose()``; ``await stream.send(b"")`` waits until they are
  in. So a cancelled call loses no byte and the stream stays usable.
* A vchan has no half-close: :meth:`VchanStream.send_eof` raises
  :class:`NotImplementedError`, as anyio's own streams do when they cannot half-close.
  Close with ``aclose()``; the peer then reads everything sent, then the end of the stream.
* Errors: the end of the stream is :class:`anyio.EndOfStream` (after every byte the peer
  sent); sending to a gone peer raises :class:`anyio.BrokenResourceError` (its cause is a
  :class:`vchan.Disconnected`); using a closed stream raises
  :class:`anyio.ClosedResourceError`. Connecting and listening raise the exceptions of
  :func:`vchan.client` and :func:`vchan.server`.

Needs anyio 4.7 or later (``pip install 'vchan[anyio]'``, plus ``trio`` for trio).
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio import TypedAttributeSet, typed_attribute

from vchan.channel import State, Vchan, client_with, endpoint_of
from vchan.channel import server as _server
from vchan.exceptions import Disconnected, from_oserror

__all__ = [
    "VchanAttribute",
    "VchanListener",
    "VchanStream",
    "connect",
    "create_listener",
    "serve",
]

#: Default size of a receive, and of one write into the vchan when its ring is unknown.
_CHUNK = 65536
#: errnos of a read or write that found the peer gone.
_GONE = frozenset({_errno.EPIPE, _errno.ECONNRESET})


class VchanAttribute(TypedAttributeSet):
    """Typed attributes of :class:`VchanStream` (``stream.extra(VchanAttribute.port)``)."""

    #: The :class:`vchan.Vchan` under the stream (non-blocking; do not read or write it).
    vchan: Vchan = typed_attribute()
    #: The peer's domain.
    domain: int = typed_attribute()
    #: The port.
    port: int = typed_attribute()


class VchanStream(anyio.abc.ByteStream):
    """An :class:`anyio.abc.ByteStream` over a connected :class:`vchan.Vchan`.

    Made by :func:`connect`, :func:`serve` and :meth:`VchanListener.accept`; it owns the
    vchan (switched to non-blocking mode) and closes it in :meth:`aclose`. One task may
    receive while another sends; two concurrent receives (or sends) raise
    :class:`anyio.BusyResourceError`.
    """

    def __init__(self, vc: Vchan, domain: int, port: int) -> None:
        vc.set_blocking(False)
        self._vc: Vchan | None = vc
        self._domain = domain
        self._port = port
        self._fd = vc.fileno()
        endpoint = endpoint_of(vc)
        self._ep_read = endpoint.read
        self._ep_write = endpoint.write
        self._ep_wait = endpoint.wait
        self._rbuf = memoryview(bytearray(vc.read_ring or _CHUNK))
        self._wcap = vc.write_ring or _CHUNK
        # Output not yet in the vchan: first the owned bytes self._queue[self._qpos:] (left
        # by cancelled sends), then the borrowed view self._item[self._ipos:] (the caller's
        # buffer, during the send() that passed it).
        self._queue = bytearray()
        self._qpos = 0
        self._item: memoryview | None = None
        self._ipos = 0
        self._broken: Exception | None = None
        # The task sleeping in wait_readable() on the select fd (at most one may), shared:
        # other tasks of this stream wait for this event, set after its wake-up.
        self._woken: anyio.Event | None = None
        self._receive_guard = anyio.ResourceGuard("reading from")
        self._send_guard = anyio.ResourceGuard("writing to")

    # -- the select fd ------------------------------------------------------------------

    async def _wait(self) -> None:
        """Sleep until the next vchan event (one ``wait()`` for all this stream's tasks)."""
        woken = self._woken
        if woken is not None:  # another task of ours sleeps on the fd: share its wake-up
            await woken.wait()
            return
        woken = self._woken = anyio.Event()
        try:
            await anyio.wait_readable(self._fd)
            if self._vc is not None:
                # It polled readable, so wait() does not block; it clears the readiness,
                # and the fd becomes readable again at the next event.
                self._ep_wait()
        except OSError as exc:
            raise self._failure(exc) from None
        finally:
            self._woken = None
            woken.set()

    def _check_open(self) -> None:
        if self._vc is None:
            raise anyio.ClosedResourceError

    def _failure(self, exc: OSError) -> Exception:
        if self._vc is None or exc.errno == _errno.EBADF:
            return anyio.ClosedResourceError()
        return from_oserror(exc)

    # -- output -------------------------------------------------------------------------

    def _queued(self) -> int:
        queued = len(self._queue) - self._qpos
        if self._item is not None:
            queued += len(self._item) - self._ipos
        return queued

    def _write_from(self, buf: bytearray | memoryview, pos: int) -> tuple[int, bool]:
        """Write ``buf[pos:]`` until done or a write falls short (which asks the peer for
        a consumption event): (new position, whether all of it went in)."""
        end = len(buf)
        write = self._ep_write
        cap = self._wcap
        view = memoryview(buf)
        err: OSError | ValueError | None = None
        try:
            while pos < end:
                size = min(end - pos, cap)
                try:
                    n = write(view[pos:], size)
                except (OSError, ValueError) as exc:
                    err = exc
                    break
                pos += n
                if n < size:
                    break
        finally:
            del view  # no view of a bytearray we may resize later stays alive
        if err is not None:
            # Outside the except block: the exception keeps no frame holding a view.
            self._fail_output(err)
        return pos, pos >= end

    def _fail_output(self, err: OSError | ValueError) -> None:
        dropped = self._drop_output()
        if isinstance(err, OSError) and err.errno in _GONE:
            self._broken = Disconnected(f"vchan peer disconnected; {dropped} bytes not taken")
        elif isinstance(err, OSError):
            self._broken = self._failure(err)
        else:
            self._broken = anyio.ClosedResourceError()
        raise self._broken_error()

    def _broken_error(self) -> Exception:
        exc = self._broken
        if isinstance(exc, anyio.ClosedResourceError):
            return anyio.ClosedResourceError()
        error = anyio.BrokenResourceError(str(exc))
        error.__cause__ = exc
        return error

    def _drop_output(self) -> int:
        dropped = self._queued()
        self._queue = bytearray()
        self._qpos = 0
        self._item = None
        self._ipos = 0
        return dropped

    def _flush(self) -> bool:
        """Move queued output into the vchan as far as it goes now; True when all went in."""
        if self._qpos < len(self._queue):
            self._qpos, done = self._write_from(self._queue, self._qpos)
            if not done:
                return False
            self._queue = bytearray()
            self._qpos = 0
        if self._item is not None:
            self._ipos, done = self._write_from(self._item, self._ipos)
            if not done:
                return False
            self._item = None
            self._ipos = 0
        return True

    def _keep_item(self) -> None:
        """The send() that lent its buffer is leaving early: copy what is left of it."""
        item = self._item
        if item is not None:
            self._queue += item[self._ipos :]
            self._item = None
            self._ipos = 0

    # -- anyio.abc.ByteStream -------------------------------------------------------------

    async def receive(self, max_bytes: int = _CHUNK) -> bytes:
        """Up to ``max_bytes`` bytes (at most the read ring), waiting for some.

        Raises :class:`anyio.EndOfStream` once the peer is gone and everything it sent has
        been received. Cancellation consumes nothing.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        with self._receive_guard:
            await anyio.lowlevel.checkpoint()
            view = self._rbuf
            size = min(max_bytes, len(view))
            while True:
                self._check_open()
                if self._broken is None and self._queued():
                    try:
                        self._flush()  # output left by a cancelled send goes in meanwhile
                    except anyio.BrokenResourceError:
                        pass  # reported to the next send(); still read what is left
                try:
                    n = self._ep_read(view, size)
                except OSError as exc:
                    if exc.errno in _GONE:
                        raise anyio.EndOfStream from None
                    raise self._failure(exc) from None
                except ValueError:
                    raise anyio.ClosedResourceError from None
                if n:
                    return bytes(view[:n])
                await self._wait()

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Send all of ``item``; returns once it is in the vchan.

        The whole item is taken at once: if the call is cancelled, what it had not written
        yet stays queued and is written before later data (see the module's notes);
        ``send(b"")`` waits until such queued output is in the vchan.
        Raises :class:`anyio.BrokenResourceError` if the peer is gone.
        """
        view = memoryview(item)
        if view.itemsize != 1 or view.ndim != 1 or not view.c_contiguous:
            view = view.cast("B")
        with self._send_guard:
            self._check_open()
            if self._broken is not None:
                raise self._broken_error()
            if len(view):
                if self._queued():
                    self._queue += view  # behind what is already queued
                else:
                    self._item, self._ipos = view, 0  # written straight from the caller's
            waited = False
            try:
                while not self._flush():
                    waited = True
                    await self._wait()
                    self._check_open()
            finally:
                self._keep_item()  # cancelled (or failed) while the item was lent
            if not waited:
                await anyio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        """A vchan has no half-close: raises :class:`NotImplementedError` (use aclose())."""
        raise NotImplementedError("a vchan has no half-close: use aclose()")

    async def aclose(self) -> None:
        """Close the vchan (the peer reads what was sent, then the end of the stream).

        Output still queued by cancelled sends is written first, waiting for room as
        needed; cancelling ``aclose()`` (or a peer that is gone) drops it and closes at once.
        """
        if self._vc is None:
            return
        try:
            if self._queued() and self._broken is None:
                while not self._flush():
                    await self._wait()
                    if self._vc is None:
                        return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._close()
        await anyio.lowlevel.checkpoint()

    def _close(self) -> None:
        vc, self._vc = self._vc, None
        if vc is None:
            return
        self._drop_output()
        anyio.notify_closing(self._fd)  # wakes our tasks sleeping on the fd
        vc.close()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        def the_vchan() -> Vchan:
            if self._vc is None:
                raise anyio.ClosedResourceError
            return self._vc

        return {
            VchanAttribute.vchan: the_vchan,
            VchanAttribute.domain: lambda: self._domain,
            VchanAttribute.port: lambda: self._port,
        }

    def __repr__(self) -> str:
        state = "closed" if self._vc is None else "open"
        return f"<VchanStream fd={self._fd} {state} queued={self._queued()}>"


# ---------------------------------------------------------------------------- connecting


async def _connected_client(
    domain: int, port: int, allow_any_uid: bool | None, backend: str | None
) -> Vchan:
    await anyio.lowlevel.checkpoint()
    return await client_with(anyio.wait_readable, domain, port, allow_any_uid, backend)


async def _until_connected(vc: Vchan) -> None:
    """Sleep until the WAITING server ``vc`` (non-blocking) has its client."""
    fd = vc.fileno()
    while vc.state == State.WAITING:
        await anyio.wait_readable(fd)
        # Readable, so wait() does not block: it accepts (or finds a refused peer, and
        # clears that event so the loop sleeps again instead of spinning).
        vc.wait()


async def connect(
    domain: int,
    port: int,
    *,
    backend: str | None = None,
    allow_any_uid: bool | None = None,
) -> VchanStream:
    """Connect to the vchan server in ``domain`` on ``port``, waiting for it to appear.

    Bound the wait with ``anyio.fail_after()`` (or cancel): the attempt is abandoned.
    ``backend`` and ``allow_any_uid`` are as for :func:`vchan.client`.
    """
    vc = await _connected_client(domain, port, allow_any_uid, backend)
    return VchanStream(vc, domain, port)


async def serve(
    domain: int,
    port: int,
    read_min: int = 65536,
    write_min: int = 65536,
    *,
    backend: str | None = None,
    allow_any_uid: bool | None = None,
) -> VchanStream:
    """Serve the client in ``domain`` on ``port``; returns once it has connected.

    Listening starts at once (errors such as :class:`vchan.ServerExists` are raised before
    the first wait); cancelling stops listening and removes the socket file. The other
    arguments are as for :func:`vchan.server`.
    """
    await anyio.lowlevel.checkpoint()
    vc = _server(domain, port, read_min, write_min, allow_any_uid=allow_any_uid, backend=backend)
    try:
        vc.set_blocking(False)
        await _until_connected(vc)
    except BaseException:
        vc.close()
        raise
    return VchanStream(vc, domain, port)


class VchanListener(anyio.abc.Listener[VchanStream]):
    """Serves the clients of one domain on one port, one after another (an
    :class:`anyio.abc.Listener`; made by :func:`create_listener`).

    A vchan serves exactly one client: :meth:`accept` returns the stream of the client of
    the listening vchan, and the next :meth:`accept` listens again with a fresh one (a
    client that comes meanwhile waits for it, as vchan clients do).
    """

    def __init__(
        self,
        domain: int,
        port: int,
        read_min: int,
        write_min: int,
        backend: str | None,
        allow_any_uid: bool | None,
    ) -> None:
        self._args = (domain, port, read_min, write_min)
        self._backend = backend
        self._allow_any_uid = allow_any_uid
        self._listening: Vchan | None = None
        self._closed = False
        self._guard = anyio.ResourceGuard("accepting connections from")

    def _listen(self) -> Vchan:
        domain, port, read_min, write_min = self._args
        vc = _server(
            domain,
            port,
            read_min,
            write_min,
            allow_any_uid=self._allow_any_uid,
            backend=self._backend,
        )
        vc.set_blocking(False)
        return vc

    async def accept(self) -> VchanStream:
        """Wait for the next client; its stream."""
        with self._guard:
            await anyio.lowlevel.checkpoint()
            if self._closed:
                raise anyio.ClosedResourceError
            vc = self._listening
            if vc is None:
                vc = self._listening = self._listen()
            try:
                await _until_connected(vc)
            except anyio.ClosedResourceError:
                raise
            except OSError as exc:
                raise from_oserror(exc) from None
            self._listening = None
            domain, port = self._args[0], self._args[1]
            return VchanStream(vc, domain, port)

    async def serve(
        self,
        handler: Callable[[VchanStream], Any],
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        """Accept clients until cancelled, running ``await handler(stream)`` for each in a
        task of ``task_group`` (else a task group of this call); the stream is closed when
        the handler returns."""

        async def handle(stream: VchanStream) -> None:
            async with stream:
                await handler(stream)

        async with anyio.create_task_group() as own:
            group = own if task_group is None else task_group
            while True:
                group.start_soon(handle, await self.accept())

    async def aclose(self) -> None:
        """Stop listening (the socket file goes away); accepted streams are not affected."""
        self._closed = True
        vc, self._listening = self._listening, None
        if vc is not None:
            anyio.notify_closing(vc.fileno())
            vc.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            VchanAttribute.domain: lambda: self._args[0],
            VchanAttribute.port: lambda: self._args[1],
        }


async def create_listener(
    domain: int,
    port: int,
    read_min: int = 65536,
    write_min: int = 65536,
    *,
    backend: str | None = None,
    allow_any_uid: bool | None = None,
) -> VchanListener:
    """A :class:`VchanListener` for the clients of ``domain`` on ``port``, listening at
    once (errors such as :class:`vchan.ServerExists` are raised here)."""
    await anyio.lowlevel.checkpoint()
    listener = VchanListener(domain, port, read_min, write_min, backend, allow_any_uid)
    listener._listening = listener._listen()
    return listener
