"""The libvchan C API, function for function, in Python.

For people porting C code, and the one surface the conformance suite tests (a C library
loaded with :mod:`vchan._cffi` exposes the same names). Handles are opaque objects; failures
return ``None`` or ``-1`` and leave the reason in :func:`last_errno`, like C's ``errno``.

Channels are made by the engine of this process, :data:`vchan.ENGINE` (the compiled
``"speedups"`` when it was built, else the pure-Python ``"python"``, see
:mod:`vchan._engine`); :func:`for_engine` gives the same API over a chosen engine.
"""

from __future__ import annotations

import errno
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import _engine
from ._constants import CONNECTED, DISCONNECTED, WAITING

if TYPE_CHECKING:
    from . import _core, _speedups
    from ._engine import EngineChannel as Channel

__all__ = [
    "VCHAN_CONNECTED",
    "VCHAN_DISCONNECTED",
    "VCHAN_WAITING",
    "API",
    "for_engine",
    "last_errno",
    "libvchan_buffer_space",
    "libvchan_client_init",
    "libvchan_client_init_async",
    "libvchan_client_init_async_finish",
    "libvchan_close",
    "libvchan_data_ready",
    "libvchan_fd_for_select",
    "libvchan_is_open",
    "libvchan_read",
    "libvchan_recv",
    "libvchan_send",
    "libvchan_server_init",
    "libvchan_set_blocking",
    "libvchan_wait",
    "libvchan_write",
]

#: :func:`libvchan_is_open`: the peer closed or died (final).
VCHAN_DISCONNECTED = DISCONNECTED
#: :func:`libvchan_is_open`: both ends are there.
VCHAN_CONNECTED = CONNECTED
#: :func:`libvchan_is_open`: a server without its client yet, or a client still connecting.
VCHAN_WAITING = WAITING

_tls = threading.local()
T = TypeVar("T")


def last_errno() -> int:
    """The errno of this thread's last failed call (0 if none failed yet)."""
    return int(getattr(_tls, "errno", 0))


def _fail(code: int, result: T) -> T:
    _tls.errno = code
    return result


def _guard(failure: T, call: Callable[[], T]) -> T:
    try:
        return call()
    except OSError as exc:
        return _fail(exc.errno or errno.EIO, failure)
    except (TypeError, ValueError):
        return _fail(errno.EINVAL, failure)


def _handle(h: object) -> Channel:
    if not _engine.is_channel(h):
        raise OSError(errno.EINVAL, "not a libvchan handle")
    return h


def _size(size: object) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise OSError(errno.EINVAL, "size must be a non-negative int")
    return size


def _out_buffer(buf: Any, size: int) -> memoryview:
    view = memoryview(buf).cast("B")
    if view.readonly:
        raise OSError(errno.EINVAL, "read buffer is read-only")
    if size > len(view):
        raise OSError(errno.EINVAL, "size exceeds the buffer")
    return view


def _in_buffer(data: Any, size: int) -> memoryview:
    view = memoryview(data).cast("B")
    if size > len(view):
        raise OSError(errno.EINVAL, "size exceeds the data")
    return view


def libvchan_server_init(domain: int, port: int, read_min: int, write_min: int) -> Channel | None:
    """Listen for the client in ``domain`` on ``port``; returns at once, state
    ``VCHAN_WAITING``. Rings per Xen's rules from ``read_min``/``write_min``. ``None`` on
    failure (EINVAL, ENAMETOOLONG, ENOENT, EEXIST, EADDRINUSE, ...)."""
    return _server_init(_engine.channel_class(_engine.ENGINE), domain, port, read_min, write_min)


def libvchan_client_init(domain: int, port: int) -> Channel | None:
    """Connect to the server of ``domain`` on ``port``, waiting for it to appear
    (rings 65536/65536). ``None`` on failure (EINVAL, ENAMETOOLONG, ENOENT, EACCES, ...)."""
    return _client_init(_engine.channel_class(_engine.ENGINE), domain, port)


def libvchan_client_init_async(domain: int, port: int) -> tuple[Channel, int] | None:
    """Start connecting without blocking: ``(handle, watch_fd)``, or
    ``None``. Poll ``watch_fd`` for readability, then call
    :func:`libvchan_client_init_async_finish` (C returns the fd through a pointer)."""
    return _client_init_async(_engine.channel_class(_engine.ENGINE), domain, port)


_Class = type["_core.Channel"] | type["_speedups.Channel"]  # vchan._engine.channel_class


def _server_init(
    cls: _Class, domain: int, port: int, read_min: int, write_min: int
) -> Channel | None:
    return _guard(None, lambda: cls.server(domain, port, read_min, write_min))


def _client_init(cls: _Class, domain: int, port: int) -> Channel | None:
    return _guard(None, lambda: cls.client(domain, port))


def _client_init_async(cls: _Class, domain: int, port: int) -> tuple[Channel, int] | None:
    def start() -> tuple[Channel, int]:
        ch = cls.client_start(domain, port)
        return ch, ch.fileno()

    return _guard(None, start)


def libvchan_client_init_async_finish(handle: Channel, blocking: bool) -> int:
    """Advance an asynchronous connection: 0 connected, 1 not yet
    (non-blocking only: poll the watch fd again), -1 on failure (EACCES, EBADF, ...)."""
    return _guard(-1, lambda: _handle(handle).finish(bool(blocking)))


def libvchan_read(handle: Channel, buf: Any, size: int) -> int:
    """Read up to ``size`` bytes (at most the read ring) into ``buf``: the count; 0 if
    nothing is there and the channel is non-blocking; -1 (EPIPE) once the peer is gone and
    everything it sent has been read."""
    return _guard(-1, lambda: _handle(handle).read(_out_buffer(buf, _size(size)), size))


def libvchan_recv(handle: Channel, buf: Any, size: int) -> int:
    """Read exactly ``size`` bytes into ``buf``: ``size``; 0 if fewer are there and the
    channel is non-blocking; -1 (EPIPE: the peer left fewer, which stay readable; EMSGSIZE:
    blocking and larger than the read ring)."""
    return _guard(-1, lambda: _handle(handle).recv(_out_buffer(buf, _size(size)), size))


def libvchan_write(handle: Channel, data: Any, size: int) -> int:
    """Write up to ``size`` bytes of ``data``: all of them in blocking mode (waiting as
    needed), what fits (at most the write ring) in non-blocking mode; -1 (EPIPE) if the peer
    is gone."""
    return _guard(-1, lambda: _handle(handle).write(_in_buffer(data, _size(size)), size))


def libvchan_send(handle: Channel, data: Any, size: int) -> int:
    """Write exactly ``size`` bytes of ``data`` or nothing: ``size``; 0 if they do not
    fit now and the channel is non-blocking; -1 (EPIPE: the peer is gone; EMSGSIZE: blocking
    and larger than the write ring)."""
    return _guard(-1, lambda: _handle(handle).send(_in_buffer(data, _size(size)), size))


def libvchan_wait(handle: Channel) -> int:
    """Block until the select fd is readable (data, a connection, the peer left, a
    requested consumption), clear that, return 0; -1 on failure (EBADF: closed meanwhile)."""
    return _guard(-1, lambda: _handle(handle).wait())


def libvchan_close(handle: Channel) -> None:
    """Close the channel; bytes already accepted still reach a peer that keeps
    reading. Never blocks for long."""
    if _engine.is_channel(handle):
        handle.close()


def libvchan_fd_for_select(handle: Channel) -> int:
    """The fd to poll for readability (readable when :func:`libvchan_wait`
    will not block); the same number from init to close."""
    return _guard(-1, lambda: _handle(handle).fileno())


def libvchan_is_open(handle: Channel) -> int:
    """``VCHAN_WAITING``, ``VCHAN_CONNECTED`` or ``VCHAN_DISCONNECTED`` (final;
    unread data stays readable). A waiting server takes a pending client here."""
    return _guard(VCHAN_DISCONNECTED, lambda: _handle(handle).is_open())


def libvchan_data_ready(handle: Channel) -> int:
    """Bytes readable now without blocking (at most the read ring)."""
    return _guard(0, lambda: _handle(handle).data_ready())


def libvchan_buffer_space(handle: Channel) -> int:
    """Bytes writable now without blocking (at most the write ring): a
    write or send of that many right after completes at once. Asks for the peer's next
    consumption event."""
    return _guard(0, lambda: _handle(handle).buffer_space())


def libvchan_set_blocking(handle: Channel, blocking: bool) -> None:
    """Blocking (``True``, the default) or non-blocking mode for read, recv,
    write and send."""
    _guard(None, lambda: _handle(handle).set_blocking(bool(blocking)))


class API:
    """This module's API with channels made by one engine (see :func:`for_engine`).

    The init functions use the engine; every other name is this module's (the functions
    that take a handle work with a channel of any engine).
    """

    def __init__(self, engine: str) -> None:
        #: The engine's name: "speedups" or "python".
        self.engine = engine
        self._cls = _engine.channel_class(engine)

    def __getattr__(self, name: str) -> Any:
        return getattr(sys.modules[__name__], name)

    def __repr__(self) -> str:
        return f"<vchan.libvchan API over the {self.engine} engine>"

    def libvchan_server_init(
        self, domain: int, port: int, read_min: int, write_min: int
    ) -> Channel | None:
        return _server_init(self._cls, domain, port, read_min, write_min)

    def libvchan_client_init(self, domain: int, port: int) -> Channel | None:
        return _client_init(self._cls, domain, port)

    def libvchan_client_init_async(self, domain: int, port: int) -> tuple[Channel, int] | None:
        return _client_init_async(self._cls, domain, port)


def for_engine(engine: str) -> API:
    """This API over the engine ``engine`` ("speedups" or "python"), whatever
    :data:`vchan.ENGINE` is; OSError(EINVAL) if that engine is not available."""
    return API(engine)
