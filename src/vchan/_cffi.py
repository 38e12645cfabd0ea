"""Drive any libvchan shared library through cffi in ABI mode.

``load(path)`` returns a :class:`CLibvchan` whose methods have the same names and
Python-level shapes as the functions of :mod:`vchan.libvchan`, so code (and the
conformance suite) can run unchanged against the pure-Python implementation, our C
``libvchan-socket`` or any other library exporting Qubes' ``libvchan.h`` API.

cffi is an optional dependency (``pip install vchan[cffi]``); it is imported on first use.
"""

from __future__ import annotations

import errno as _errno
import importlib
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CDEF", "CLibvchan", "load"]

VCHAN_DISCONNECTED = 0
VCHAN_CONNECTED = 1
VCHAN_WAITING = 2

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1

#: The Qubes libvchan API (``vchan/libvchan.h``), as cffi declarations.
CDEF = """
typedef int EVTCHN;
typedef struct libvchan libvchan_t;
libvchan_t *libvchan_server_init(int domain, int port, size_t read_min, size_t write_min);
libvchan_t *libvchan_client_init(int domain, int port);
libvchan_t *libvchan_client_init_async(int domain, int port, EVTCHN *watch_fd);
int libvchan_client_init_async_finish(libvchan_t *ctrl, bool blocking);
int libvchan_write(libvchan_t *ctrl, const void *data, size_t size);
int libvchan_send(libvchan_t *ctrl, const void *data, size_t size);
int libvchan_read(libvchan_t *ctrl, void *data, size_t size);
int libvchan_recv(libvchan_t *ctrl, void *data, size_t size);
int libvchan_wait(libvchan_t *ctrl);
void libvchan_close(libvchan_t *ctrl);
EVTCHN libvchan_fd_for_select(libvchan_t *ctrl);
int libvchan_is_open(libvchan_t *ctrl);
int libvchan_data_ready(libvchan_t *ctrl);
int libvchan_buffer_space(libvchan_t *ctrl);
void libvchan_set_blocking(libvchan_t *ctrl, bool blocking);
"""

_ffi: Any = None
_ffi_lock = threading.Lock()


def _get_ffi() -> Any:
    """Return the shared ``cffi.FFI`` instance, importing cffi on first use."""
    global _ffi
    with _ffi_lock:
        if _ffi is None:
            try:
                cffi: Any = importlib.import_module("cffi")
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "vchan._cffi needs the optional 'cffi' package: pip install 'vchan[cffi]'"
                ) from exc
            ffi = cffi.FFI()
            ffi.cdef(CDEF)
            _ffi = ffi
        return _ffi


class CLibvchan:
    """A loaded libvchan shared library with the surface of :mod:`vchan.libvchan`.

    Handles are cdata ``libvchan_t *`` pointers (``None`` for NULL). A handle must not be
    used after ``libvchan_close``: the C library has freed it. As in :mod:`vchan.libvchan`,
    a bad Python-level argument (not a handle, a size that is negative or larger than the
    buffer, a read-only buffer to read into, an integer out of C range) fails the call with
    ``EINVAL`` instead of raising.
    """

    VCHAN_DISCONNECTED = VCHAN_DISCONNECTED
    VCHAN_CONNECTED = VCHAN_CONNECTED
    VCHAN_WAITING = VCHAN_WAITING

    def __init__(self, path: str) -> None:
        """Open the shared library at ``path`` (``OSError`` if it cannot be loaded)."""
        self.ffi: Any = _get_ffi()
        self.path = path
        self.lib: Any = self.ffi.dlopen(path)
        self._tls = threading.local()
        self._t_handle: Any = self.ffi.typeof("libvchan_t *")
        self._size_max = 2 ** (8 * self.ffi.sizeof("size_t")) - 1

    def __repr__(self) -> str:
        return f"CLibvchan({self.path!r})"

    # -- errno -------------------------------------------------------------------------

    def _fail(self, err: int | None = None) -> None:
        """Record the errno of the call that just failed in this thread."""
        self._tls.errno = self.ffi.errno if err is None else err

    def last_errno(self) -> int:
        """The errno of the calling thread's last failed call (0 if none failed yet)."""
        value: int = getattr(self._tls, "errno", 0)
        return value

    def _check(self, ret: int) -> int:
        if ret < 0:
            self._fail()
        return int(ret)

    def _handle(self, ptr: Any) -> Any:
        if ptr == self.ffi.NULL:
            self._fail()
            return None
        return ptr

    def _guard(self, failure: Any, call: Callable[[], Any]) -> Any:
        """Run ``call``; a bad Python-level argument fails with EINVAL like vchan.libvchan."""
        try:
            return call()
        except (TypeError, ValueError, OverflowError, BufferError):
            self._fail(_errno.EINVAL)
            return failure

    def _ptr(self, handle: Any) -> Any:
        if not isinstance(handle, self.ffi.CData) or self.ffi.typeof(handle) is not self._t_handle:
            raise TypeError("not a libvchan handle")
        if handle == self.ffi.NULL:
            raise ValueError("NULL libvchan handle")
        return handle

    @staticmethod
    def _int(value: Any, lo: int, hi: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"{value!r} is not an integer in [{lo}, {hi}]")
        return value

    def _size(self, size: Any) -> int:
        return self._int(size, 0, self._size_max)

    def _rbuf(self, buf: Any, size: int) -> Any:
        cbuf = self.ffi.from_buffer(buf, require_writable=True)
        if size > len(cbuf):
            raise ValueError(f"size {size} exceeds the buffer's {len(cbuf)} bytes")
        return cbuf

    def _wbuf(self, data: Any, size: int) -> Any:
        cbuf = self.ffi.from_buffer(data)
        if size > len(cbuf):
            raise ValueError(f"size {size} exceeds the data's {len(cbuf)} bytes")
        return cbuf

    # -- connection set-up ---------------------------------------------------------------

    def libvchan_server_init(self, domain: int, port: int, read_min: int, write_min: int) -> Any:
        """Start a server; return its handle (state WAITING) or ``None``."""

        def call() -> Any:
            args = (
                self._int(domain, _INT_MIN, _INT_MAX),
                self._int(port, _INT_MIN, _INT_MAX),
                self._size(read_min),
                self._size(write_min),
            )
            return self._handle(self.lib.libvchan_server_init(*args))

        return self._guard(None, call)

    def libvchan_client_init(self, domain: int, port: int) -> Any:
        """Connect to a server, waiting for it to appear; return a handle or ``None``."""

        def call() -> Any:
            d, p = self._int(domain, _INT_MIN, _INT_MAX), self._int(port, _INT_MIN, _INT_MAX)
            return self._handle(self.lib.libvchan_client_init(d, p))

        return self._guard(None, call)

    def libvchan_client_init_async(self, domain: int, port: int) -> tuple[Any, int] | None:
        """Start connecting without blocking; return ``(handle, watch_fd)`` or ``None``."""

        def call() -> tuple[Any, int] | None:
            d, p = self._int(domain, _INT_MIN, _INT_MAX), self._int(port, _INT_MIN, _INT_MAX)
            watch_fd = self.ffi.new("EVTCHN *", -1)
            ptr = self._handle(self.lib.libvchan_client_init_async(d, p, watch_fd))
            if ptr is None:
                return None
            return ptr, int(watch_fd[0])

        result: tuple[Any, int] | None = self._guard(None, call)
        return result

    def libvchan_client_init_async_finish(self, handle: Any, blocking: bool) -> int:
        """Advance an async connection: 0 connected, 1 not yet, -1 error."""
        return int(
            self._guard(
                -1,
                lambda: self._check(
                    self.lib.libvchan_client_init_async_finish(self._ptr(handle), bool(blocking))
                ),
            )
        )

    # -- data ----------------------------------------------------------------------------

    def _io(self, func: Any, handle: Any, buf: Any, size: int, writable: bool) -> int:
        def call() -> int:
            h = self._ptr(handle)
            n = self._size(size)
            cbuf = self._rbuf(buf, n) if writable else self._wbuf(buf, n)
            return self._check(func(h, cbuf, n))

        return int(self._guard(-1, call))

    def libvchan_read(self, handle: Any, buf: Any, size: int) -> int:
        """Read up to ``size`` bytes into the writable buffer ``buf``."""
        return self._io(self.lib.libvchan_read, handle, buf, size, True)

    def libvchan_recv(self, handle: Any, buf: Any, size: int) -> int:
        """Read exactly ``size`` bytes into the writable buffer ``buf``."""
        return self._io(self.lib.libvchan_recv, handle, buf, size, True)

    def libvchan_write(self, handle: Any, data: Any, size: int) -> int:
        """Write up to ``size`` bytes of the bytes-like ``data``."""
        return self._io(self.lib.libvchan_write, handle, data, size, False)

    def libvchan_send(self, handle: Any, data: Any, size: int) -> int:
        """Write exactly ``size`` bytes of the bytes-like ``data``, or nothing."""
        return self._io(self.lib.libvchan_send, handle, data, size, False)

    # -- notification and state ----------------------------------------------------------

    def _query(self, func: Any, handle: Any, failure: int) -> int:
        return int(self._guard(failure, lambda: self._check(func(self._ptr(handle)))))

    def libvchan_wait(self, handle: Any) -> int:
        """Block until the select fd is readable and clear it; 0 or -1."""
        return self._query(self.lib.libvchan_wait, handle, -1)

    def libvchan_close(self, handle: Any) -> None:
        """Close the channel and free the handle (anything else is ignored)."""
        try:
            h = self._ptr(handle)
        except (TypeError, ValueError):
            return
        self.lib.libvchan_close(h)

    def libvchan_fd_for_select(self, handle: Any) -> int:
        """The fd that reads as ready when :meth:`libvchan_wait` will not block."""
        return self._query(self.lib.libvchan_fd_for_select, handle, -1)

    def libvchan_is_open(self, handle: Any) -> int:
        """VCHAN_WAITING, VCHAN_CONNECTED or VCHAN_DISCONNECTED."""
        return self._query(self.lib.libvchan_is_open, handle, VCHAN_DISCONNECTED)

    def libvchan_data_ready(self, handle: Any) -> int:
        """Bytes that can be read now without blocking."""
        return self._query(self.lib.libvchan_data_ready, handle, 0)

    def libvchan_buffer_space(self, handle: Any) -> int:
        """Bytes that can be written now without blocking."""
        return self._query(self.lib.libvchan_buffer_space, handle, 0)

    def libvchan_set_blocking(self, handle: Any, blocking: bool) -> None:
        """Switch the channel between blocking (default) and non-blocking mode."""
        try:
            func = self.lib.libvchan_set_blocking
        except AttributeError as exc:
            raise NotImplementedError(f"{self.path} has no libvchan_set_blocking") from exc
        self._guard(None, lambda: func(self._ptr(handle), bool(blocking)))


def load(path: str) -> CLibvchan:
    """Load the libvchan shared library at ``path``."""
    return CLibvchan(path)
