"""Backends of the Pythonic API: an engine of this package, or any libvchan shared library.

Like pyzmq's ``zmq.backend``, the Pythonic layer (:mod:`vchan.channel`, :mod:`vchan.asyncio`)
talks to an *endpoint* with libvchan's semantics, whatever implements it:

* an engine (:mod:`vchan._engine`): ``"speedups"``, :class:`vchan._speedups.Channel`, the
  compiled extension built from the C library's sources, or ``"python"``,
  :class:`vchan._core.Channel`, the pure-Python engine;
* anything else names a libvchan shared library, loaded with cffi in ABI mode through
  :func:`vchan._cffi.load`: a path (``./libvchan-socket/build/libvchan-socket.so``), a
  library name the dynamic linker finds (``libvchan-xen.so``), or a short name ``NAME``
  standing for ``libvchan-NAME.so`` (``xen``, ``socket``).

The choice is the ``backend=`` argument, else ``$VCHAN_BACKEND``, else the engine of this
process, :data:`vchan.ENGINE` (``"speedups"`` if the extension was built, else ``"python"``).

Connecting is the same for every backend: start an asynchronous client
(``libvchan_client_init_async``), poll its watch fd, and call
``libvchan_client_init_async_finish(handle, false)`` when it is readable. That gives
``client(timeout=...)`` to C libraries, which have no timeout of their own, and gives
:mod:`vchan.asyncio` a connection it can wait for on the event loop and cancel.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from . import _config, _engine
from ._constants import DISCONNECTED, InBuf, OutBuf

if TYPE_CHECKING:
    from ._cffi import Binding
    from ._engine import EngineChannel

__all__ = [
    "BACKEND_ENV",
    "CEndpoint",
    "PendingClient",
    "check",
    "load_library",
    "resolve",
    "start_client",
    "start_server",
    "wait_client",
]

#: Environment variable naming the default backend.
BACKEND_ENV = "VCHAN_BACKEND"
PYTHON = _engine.PYTHON
SPEEDUPS = _engine.SPEEDUPS


class Endpoint(Protocol):
    """libvchan semantics; failures raise OSError with an errno (as vchan.channel's).

    ``read_ring`` and ``write_ring`` are the ring sizes, ``None`` where the backend cannot
    tell (a C library's API does not say).
    """

    @property
    def read_ring(self) -> int | None: ...
    @property
    def write_ring(self) -> int | None: ...

    def read(self, buf: OutBuf, size: int) -> int: ...
    def recv(self, buf: OutBuf, size: int) -> int: ...
    def write(self, data: InBuf, size: int) -> int: ...
    def send(self, data: InBuf, size: int) -> int: ...
    def wait(self) -> int: ...
    def is_open(self) -> int: ...
    def data_ready(self) -> int: ...
    def buffer_space(self) -> int: ...
    def set_blocking(self, blocking: bool) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class PendingClient(Protocol):
    """A client connection in progress (asynchronous init)."""

    def fileno(self) -> int:
        """The watch fd: poll it for readability, then call :meth:`finish`."""
        ...

    def finish(self, blocking: bool) -> int:
        """0 once connected, 1 not yet; raises OSError on failure."""
        ...

    def endpoint(self) -> Endpoint:
        """The connected endpoint (after :meth:`finish` returned 0)."""
        ...

    def close(self) -> None:
        """Abandon the connection attempt (or close the connected endpoint)."""
        ...


# ------------------------------------------------------------------------------- selection

_libs: dict[str, Any] = {}
_libs_lock = threading.Lock()


def resolve(backend: str | None) -> str:
    """The backend name in effect: ``backend``, else ``$VCHAN_BACKEND``, else the engine of
    this process (:data:`vchan._engine.ENGINE`)."""
    if backend is None:
        backend = os.environ.get(BACKEND_ENV) or _engine.ENGINE
    if not isinstance(backend, str):
        raise OSError(errno.EINVAL, f"backend must be a str, not {type(backend).__name__}")
    backend = backend.strip()
    if not backend:
        raise OSError(errno.EINVAL, "empty backend name")
    return backend


def check(name: str) -> None:
    """Make sure the backend ``name`` (as :func:`resolve` returns it) can be used: an
    engine that is available, or a library that loads; OSError(EINVAL) otherwise."""
    if name in _engine.NAMES:
        _engine.channel_class(name)
    else:
        load_library(name)


def _library_spec(name: str) -> str:
    if "/" in name or ".so" in name:
        return name
    return f"libvchan-{name}.so"


def load_library(name: str) -> Any:
    """Load (once per process) the libvchan shared library ``name`` names.

    ``name`` is a path, a library name for the dynamic linker, or ``NAME`` for
    ``libvchan-NAME.so``. Returns a :class:`vchan._cffi.CLibvchan`. Raises OSError
    (EINVAL) with a one-line message if it cannot be loaded.
    """
    spec = _library_spec(name)
    key = os.path.abspath(spec) if "/" in spec else spec
    with _libs_lock:
        lib = _libs.get(key)
        if lib is not None:
            return lib
        from . import _cffi

        try:
            lib = _cffi.load(key)
        except ImportError as exc:
            raise OSError(errno.EINVAL, f"backend {name!r}: {exc}") from None
        except OSError as exc:
            reason = str(exc).split("  Additionally")[0].rstrip(". ")
            raise OSError(
                errno.EINVAL, f"cannot load libvchan backend {name!r}: {reason}"
            ) from None
        _libs[key] = lib
        return lib


# --------------------------------------------------------------------------- C libraries


class CEndpoint:
    """An :class:`Endpoint` over a handle of a libvchan shared library.

    The calls go through the library's :class:`vchan._cffi.Binding` (``lib.binding``), the
    same wrappers the C-shaped :class:`vchan._cffi.CLibvchan` uses: -1 (or NULL) from the
    library becomes ``OSError(errno)``, and a size is bounded by its buffer (C never reads
    or writes outside it). Use after :meth:`close` raises ``OSError(EBADF)`` instead of
    handing a freed handle to the library. The library keeps a handle's memory alive while
    a call on it is in progress, so a :meth:`close` from another thread makes blocked calls
    fail with EBADF (as its ``libvchan.h`` promises) rather than free memory in use.

    Libraries without ``libvchan_set_blocking`` (the reference libvchan-socket has none)
    get non-blocking mode emulated the way qrexec works: read and write only what
    ``data_ready()`` and ``buffer_space()`` report, so the library's blocking calls never
    wait; "nothing now" is 0 and a gone peer is EPIPE, as with a real non-blocking mode.
    """

    #: libvchan.h has no call that tells the ring sizes.
    read_ring: int | None = None
    write_ring: int | None = None

    def __init__(self, lib: Any, handle: Any) -> None:
        self._lib = lib
        self._h: Any = handle
        self._emulated = False  # non-blocking mode emulated over a blocking-only library
        b: Binding = lib.binding
        self._c_read = b.read
        self._c_recv = b.recv
        self._c_write = b.write
        self._c_send = b.send
        self._c_wait = b.wait
        self._c_is_open = b.is_open
        self._c_data_ready = b.data_ready
        self._c_buffer_space = b.buffer_space
        self._c_fd_for_select = b.fd_for_select
        self._c_close = b.close
        self._c_finish = b.finish

    def _handle(self) -> Any:
        h = self._h
        if h is None:
            raise _closed()
        return h

    def _gone(self) -> bool:
        return self.is_open() == DISCONNECTED

    def read(self, buf: OutBuf, size: int) -> int:
        if self._emulated and size:
            ready = self.data_ready()
            if not ready:
                # Peer-gone check first, then a final look for data (none may be lost).
                gone = self._gone()
                ready = self.data_ready()
                if not ready:
                    if gone:
                        raise OSError(errno.EPIPE, "vchan peer disconnected")
                    return 0
            size = min(size, ready)
        return self._c_read(self._handle(), buf, size)

    def recv(self, buf: OutBuf, size: int) -> int:
        if self._emulated and size and self.data_ready() < size:
            gone = self._gone()
            if self.data_ready() < size:
                if gone:
                    raise OSError(errno.EPIPE, "vchan peer disconnected")
                return 0
        return self._c_recv(self._handle(), buf, size)

    def write(self, data: InBuf, size: int) -> int:
        if self._emulated and size:
            if self._gone():
                raise OSError(errno.EPIPE, "vchan peer disconnected")
            size = min(size, self.buffer_space())
            if not size:
                return 0
        return self._c_write(self._handle(), data, size)

    def send(self, data: InBuf, size: int) -> int:
        if self._emulated and size:
            if self._gone():
                raise OSError(errno.EPIPE, "vchan peer disconnected")
            if self.buffer_space() < size:
                return 0
        return self._c_send(self._handle(), data, size)

    def wait(self) -> int:
        return self._c_wait(self._handle())

    def is_open(self) -> int:
        return self._c_is_open(self._handle())

    def data_ready(self) -> int:
        return self._c_data_ready(self._handle())

    def buffer_space(self) -> int:
        return self._c_buffer_space(self._handle())

    def finish(self, blocking: bool) -> int:
        """An async client's ``libvchan_client_init_async_finish``: 0 connected, 1 not yet."""
        return self._c_finish(self._handle(), blocking)

    def set_blocking(self, blocking: bool) -> None:
        handle = self._handle()
        if not self._emulated:
            try:
                self._lib.libvchan_set_blocking(handle, bool(blocking))
                return
            except NotImplementedError:
                if blocking:
                    return  # blocking is the library's only (and default) mode
        self._emulated = not blocking

    def fileno(self) -> int:
        return self._c_fd_for_select(self._handle())

    def close(self) -> None:
        h, self._h = self._h, None
        if h is not None:
            self._c_close(h)


def _closed() -> OSError:
    return OSError(errno.EBADF, "vchan is closed")


class _CPending:
    def __init__(self, lib: Any, handle: Any, watch_fd: int) -> None:
        self._ep = CEndpoint(lib, handle)
        self._watch_fd = watch_fd

    def fileno(self) -> int:
        self._ep._handle()
        return self._watch_fd

    def finish(self, blocking: bool) -> int:
        return self._ep.finish(blocking)

    def endpoint(self) -> Endpoint:
        return self._ep

    def close(self) -> None:
        self._ep.close()


class _EnginePending:
    def __init__(self, channel: EngineChannel) -> None:
        self._ch = channel

    def fileno(self) -> int:
        return self._ch.fileno()

    def finish(self, blocking: bool) -> int:
        return self._ch.finish(blocking)

    def endpoint(self) -> Endpoint:
        return self._ch

    def close(self) -> None:
        self._ch.close()


def _no_uid_override(name: str, allow_any_uid: bool | None) -> None:
    if allow_any_uid is not None:
        raise OSError(
            errno.EINVAL,
            f"allow_any_uid= is only supported by the engines (speedups, python); with "
            f"{name!r} set {_config.ALLOW_ANY_UID_ENV}=1 in the environment",
        )


# ------------------------------------------------------------------------------ operations


def start_server(
    domain: int,
    port: int,
    read_min: int,
    write_min: int,
    *,
    allow_any_uid: bool | None = None,
    backend: str | None = None,
) -> Endpoint:
    """Listen (returns at once, WAITING); the endpoint tells its ring sizes."""
    name = resolve(backend)
    if name in _engine.NAMES:
        cls = _engine.channel_class(name)
        return cls.server(domain, port, read_min, write_min, allow_any_uid)
    _no_uid_override(name, allow_any_uid)
    lib = load_library(name)
    h = lib.libvchan_server_init(domain, port, read_min, write_min)
    if h is None:
        code = lib.last_errno() or errno.EIO
        raise OSError(code, os.strerror(code))
    return CEndpoint(lib, h)


def start_client(
    domain: int, port: int, *, allow_any_uid: bool | None = None, backend: str | None = None
) -> PendingClient:
    """Begin connecting to the server in ``domain`` on ``port`` without blocking."""
    name = resolve(backend)
    if name in _engine.NAMES:
        cls = _engine.channel_class(name)
        return _EnginePending(cls.client_start(domain, port, allow_any_uid))
    _no_uid_override(name, allow_any_uid)
    lib = load_library(name)
    ret = lib.libvchan_client_init_async(domain, port)
    if ret is None:
        code = lib.last_errno() or errno.EIO
        raise OSError(code, os.strerror(code))
    handle, watch_fd = ret
    return _CPending(lib, handle, watch_fd)


def wait_client(pending: PendingClient, timeout: float | None) -> Endpoint:
    """Complete ``pending`` by polling its watch fd; ETIMEDOUT after ``timeout`` seconds.

    On any failure (timeout included) the attempt is closed.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while pending.finish(False) != 0:
            poller = select.poll()
            poller.register(pending.fileno(), select.POLLIN)
            if deadline is None:
                poller.poll()
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000 + 0.999))):
                if time.monotonic() >= deadline:
                    raise OSError(errno.ETIMEDOUT, "timed out waiting for the vchan server")
        return pending.endpoint()
    except BaseException:
        pending.close()
        raise
