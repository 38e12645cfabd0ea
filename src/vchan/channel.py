"""The Pythonic API: :class:`Vchan`, returned by :func:`server` and :func:`client`."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from types import TracebackType

from . import _backend
from ._backend import Endpoint
from ._constants import CONNECTED, DISCONNECTED, WAITING
from .exceptions import from_oserror

__all__ = ["Endpoint", "State", "Vchan", "client", "server"]


class State(enum.IntEnum):
    """Channel state; the values equal the C constants ``VCHAN_*``."""

    DISCONNECTED = DISCONNECTED
    CONNECTED = CONNECTED
    WAITING = WAITING


_STATES = {int(s): s for s in State}  # a dict lookup: State(value) costs an enum call


class Vchan:
    """One end of a vchan: a byte stream with libvchan's flow control and notification.

    Blocking by default. Reads return ``b""`` at the end of the stream (the peer is gone and
    everything it sent has been read); writes to a gone peer raise :class:`Disconnected`.
    In non-blocking mode a call that cannot make progress raises :class:`BlockingIOError`.
    """

    def __init__(
        self, endpoint: Endpoint, *, read_ring: int | None = None, write_ring: int | None = None
    ) -> None:
        self._ep: Endpoint | None = endpoint
        self._blocking = True
        #: Size of the read ring, when the backend knows it (the engines do, a C library
        #: does not).
        self.read_ring = endpoint.read_ring if read_ring is None else read_ring
        #: Size of the write ring, when the backend knows it.
        self.write_ring = endpoint.write_ring if write_ring is None else write_ring
        if type(self) is Vchan and hasattr(endpoint, "api_recv"):
            # The compiled engine implements the hot methods of this class itself (same
            # results and exceptions): bound here, they shadow the methods below and save
            # the Python frame a plain socket does not pay. A subclass keeps its own.
            vars(self).update({name: getattr(endpoint, "api_" + name) for name in _HOT})

    def _endpoint(self) -> Endpoint:
        ep = self._ep
        if ep is None:
            raise _closed()
        return ep

    # -- data ----------------------------------------------------------------------------
    # The hot paths read self._ep inline and pass bytes/bytearray through as they are (both
    # backends take any contiguous byte buffer): every attribute load and call here is a
    # cost a plain socket does not pay.

    def readinto(self, buf: memoryview | bytearray) -> int:
        """Read up to ``len(buf)`` bytes into ``buf``; 0 at the end of the stream."""
        view: memoryview | bytearray = buf
        if type(buf) is not bytearray:  # a bytearray passes through (no view to make)
            view = memoryview(buf)
            if view.format != "B" or view.ndim != 1 or not view.c_contiguous:
                view = view.cast("B")
        size = len(view)
        if not size:
            return 0
        ep = self._ep
        if ep is None:
            raise _closed()
        try:
            n = ep.read(view, size)
        except OSError as exc:
            err = from_oserror(exc)
            if isinstance(err, ConnectionError):
                return 0
            raise err from None
        if n == 0:
            raise BlockingIOError("no data ready on the vchan")
        return n

    def read(self, size: int = 65536) -> bytes:
        """Up to ``size`` bytes (at most the read ring); ``b""`` at the end of the stream."""
        if size < 0:
            raise ValueError("read size must not be negative")
        buf = bytearray(size)
        n = self.readinto(buf)
        del buf[n:]
        return bytes(buf)

    def recv(self, size: int) -> bytes:
        """Exactly ``size`` bytes. Raises Disconnected if the peer left fewer than that."""
        if size < 0:
            raise ValueError("recv size must not be negative")
        buf = bytearray(size)
        if size:
            ep = self._ep
            if ep is None:
                raise _closed()
            try:
                n = ep.recv(buf, size)
            except OSError as exc:
                raise from_oserror(exc) from None
            if n == 0:
                raise BlockingIOError(f"fewer than {size} bytes ready on the vchan")
        return bytes(buf)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write what fits (non-blocking) or everything (blocking); returns the count."""
        view: bytes | bytearray | memoryview = data
        if type(data) is not bytes and type(data) is not bytearray:  # these pass through
            view = memoryview(data)
            if view.format != "B" or view.ndim != 1 or not view.c_contiguous:
                view = view.cast("B")
        size = len(view)
        if not size:
            return 0
        ep = self._ep
        if ep is None:
            raise _closed()
        try:
            n = ep.write(view, size)
        except OSError as exc:
            raise from_oserror(exc) from None
        if n == 0:
            raise BlockingIOError("no buffer space on the vchan")
        return n

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at once or nothing (at most the write ring)."""
        view: bytes | bytearray | memoryview = data
        if type(data) is not bytes and type(data) is not bytearray:  # these pass through
            view = memoryview(data)
            if view.format != "B" or view.ndim != 1 or not view.c_contiguous:
                view = view.cast("B")
        size = len(view)
        if not size:
            return
        ep = self._ep
        if ep is None:
            raise _closed()
        try:
            n = ep.send(view, size)
        except OSError as exc:
            raise from_oserror(exc) from None
        if n == 0:
            raise BlockingIOError("not enough buffer space on the vchan")

    def _call(self, op: object) -> int:
        endpoint = self._endpoint()
        try:
            return op(endpoint)  # type: ignore[operator,no-any-return]
        except OSError as exc:
            raise from_oserror(exc) from None

    # -- state and notification ----------------------------------------------------------

    def wait(self) -> None:
        """Block until :meth:`fileno` is readable, and clear that readiness."""
        ep = self._ep
        if ep is None:
            raise _closed()
        try:
            ep.wait()
        except OSError as exc:
            raise from_oserror(exc) from None

    def fileno(self) -> int:
        """The select fd: readable when something happened since the last :meth:`wait`."""
        return self._call(lambda ep: ep.fileno())

    @property
    def state(self) -> State:
        """:attr:`State.WAITING` (a server without its client yet), ``CONNECTED`` or
        ``DISCONNECTED`` (final; unread data stays readable)."""
        ep = self._ep
        if ep is None:
            raise _closed()
        try:
            value = ep.is_open()
        except OSError as exc:
            raise from_oserror(exc) from None
        state = _STATES.get(value)
        return State(value) if state is None else state  # ValueError: not a state

    def is_open(self) -> bool:
        """Whether the channel is not DISCONNECTED (WAITING counts as open)."""
        return self.state != State.DISCONNECTED

    def data_ready(self) -> int:
        """Bytes readable now without blocking (at most the read ring)."""
        ep = self._ep
        if ep is None:
            raise _closed()
        try:
            return ep.data_ready()
        except OSError as exc:
            raise from_oserror(exc) from None

    def buffer_space(self) -> int:
        """Bytes writable now without blocking (at most the write ring): a write or send
        of that many right after completes at once. It also asks the peer for its next
        consumption event (the select fd becomes readable when the peer reads)."""
        ep = self._ep
        if ep is None:
            raise _closed()
        try:
            return ep.buffer_space()
        except OSError as exc:
            raise from_oserror(exc) from None

    def set_blocking(self, flag: bool) -> None:
        """Blocking (the default) or non-blocking mode for read, recv, write and send."""
        self._call(lambda ep: ep.set_blocking(bool(flag)) or 0)
        self._blocking = bool(flag)

    @property
    def blocking(self) -> bool:
        """Whether the channel is in blocking mode."""
        return self._blocking

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._ep is None

    def close(self) -> None:
        """Close the channel. Bytes already written still reach a peer that keeps reading."""
        endpoint, self._ep = self._ep, None
        if endpoint is not None:
            endpoint.close()

    def __enter__(self) -> Vchan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._ep is None:
            return "<Vchan closed>"
        try:
            state = self.state.name
        except (OSError, ValueError):
            state = "?"
        return f"<Vchan fd={self.fileno()} {state}>"


#: The methods the compiled engine provides as ``api_<name>``.
_HOT = ("readinto", "recv", "write", "send", "wait", "data_ready")


def _closed() -> ValueError:
    return ValueError("I/O operation on closed vchan")


def server(
    domain: int,
    port: int,
    read_min: int = 65536,
    write_min: int = 65536,
    *,
    allow_any_uid: bool | None = None,
    backend: str | None = None,
) -> Vchan:
    """Listen for the client in ``domain`` on ``port``; returns at once, in WAITING state.

    ``backend``: an engine, ``"speedups"`` (compiled) or ``"python"`` (pure Python), or a
    libvchan shared library (path, library name, or ``NAME`` for ``libvchan-NAME.so``);
    ``None`` means ``$VCHAN_BACKEND``, else :data:`vchan.ENGINE`.
    """
    try:
        endpoint = _backend.start_server(
            domain, port, read_min, write_min, allow_any_uid=allow_any_uid, backend=backend
        )
    except OSError as exc:
        raise from_oserror(exc) from None
    return Vchan(endpoint)


def client(
    domain: int,
    port: int,
    timeout: float | None = None,
    *,
    allow_any_uid: bool | None = None,
    backend: str | None = None,
) -> Vchan:
    """Connect to the server in ``domain`` on ``port``, waiting for it to appear.

    ``timeout`` (seconds) bounds the wait: :class:`ConnectTimeout` (a TimeoutError).
    ``backend`` as for :func:`server`.
    """
    try:
        pending = _backend.start_client(domain, port, allow_any_uid=allow_any_uid, backend=backend)
        endpoint = _backend.wait_client(pending, timeout)
    except OSError as exc:
        raise from_oserror(exc) from None
    return Vchan(endpoint)


async def client_with(
    readable: Callable[[int], Awaitable[object]],
    domain: int,
    port: int,
    allow_any_uid: bool | None,
    backend: str | None,
) -> Vchan:
    """:func:`client` for an event loop: ``await readable(fd)`` sleeps until ``fd`` is
    readable (asyncio's reader callback, anyio's ``wait_readable``). Cancelled, it abandons
    the attempt. For :mod:`vchan.asyncio` and :mod:`vchan.anyio`; not a public name."""
    try:
        pending = _backend.start_client(domain, port, allow_any_uid=allow_any_uid, backend=backend)
    except OSError as exc:
        raise from_oserror(exc) from None
    try:
        while pending.finish(False) != 0:
            await readable(pending.fileno())
    except OSError as exc:
        pending.close()
        raise from_oserror(exc) from None
    except BaseException:
        pending.close()  # cancelled (or timed out): abandon the attempt
        raise
    return Vchan(pending.endpoint())


def endpoint_of(vc: Vchan) -> Endpoint:
    """The endpoint under ``vc`` (``ValueError`` once closed): for the layers built on a
    :class:`Vchan` (:mod:`vchan.asyncio`, :mod:`vchan.anyio`), whose hot paths call it
    directly. Not a public name."""
    return vc._endpoint()
