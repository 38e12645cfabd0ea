"""Drive any libvchan shared library through cffi in ABI mode.

``load(path)`` returns a :class:`CLibvchan` whose methods have the same names and
Python-level shapes as the functions of :mod:`vchan.libvchan`, so code (and the
conformance suite) can run unchanged against the pure-Python implementation, our C
``libvchan-socket`` or any other library exporting Qubes' ``libvchan.h`` API.

Its calls, and those of the Pythonic backend's :class:`vchan._backend.CEndpoint`, go
through one :class:`Binding` of the library's functions. :data:`CDEF` retypes
``libvchan.h``; tests/test_cdef.py keeps the two in agreement.

cffi is an optional dependency (``pip install vchan[cffi]``); it is imported on first use.
"""

from __future__ import annotations

import errno as _errno
import importlib
import os as _os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CDEF", "Binding", "CLibvchan", "load"]

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


def _error(get_errno: Callable[[], int]) -> OSError:
    """The OSError of the C call that just failed in this thread (errno 0 reads as EIO)."""
    code = get_errno() or _errno.EIO
    return OSError(code, _os.strerror(code))


def _bad_size(size: int, length: int) -> OSError:
    """A size C must not be given: it would reach outside the buffer."""
    return OSError(_errno.EINVAL, f"size {size} is not within the buffer's {length} bytes")


def _missing(path: str, name: str) -> Callable[..., Any]:
    def call(*_args: Any) -> Any:
        raise AttributeError(f"{path} has no {name}")

    return call


class Binding:
    """The one binding of a library's C functions: each resolved once and wrapped once.

    Both APIs over a C library are built on it: the C-shaped :class:`CLibvchan` (-1 and a
    per-thread errno) and the Pythonic backend's :class:`vchan._backend.CEndpoint`. A call
    takes a live non-NULL ``libvchan_t *`` (the callers check that, each its own way) and,
    for the data calls, any buffer with ``size`` an int; the buffer is converted once
    (cffi's ``from_buffer``) and ``size`` bounded by it, so C never reaches outside it
    (``OSError(EINVAL)`` otherwise; a buffer of the wrong kind raises cffi's TypeError or
    BufferError). -1 (or NULL) from C raises ``OSError`` with the call's errno, read only
    when a call fails (cffi saves errno per thread when the call returns). cffi releases
    the GIL around every call. A function the library does not export raises
    AttributeError when called (``set_blocking``: NotImplementedError).
    """

    def __init__(self, ffi: Any, lib: Any, path: str) -> None:
        self.path = path
        self._ffi = ffi
        self._lib = lib
        backend = ffi._backend
        # The backend's own functions, not the ffi.* Python wrappers (and their re-typing).
        from_buffer: Callable[[Any, Any, bool], Any] = backend.from_buffer
        char_array: Any = ffi.typeof("char[]")
        get_errno: Callable[[], int] = backend.get_errno
        self.get_errno = get_errno

        def data_call(name: str, writable: bool) -> Callable[[Any, Any, int], int]:
            func = self._resolve(name)

            def call(handle: Any, buf: Any, size: int) -> int:
                cbuf = from_buffer(char_array, buf, writable)
                if not 0 <= size <= len(cbuf):
                    length = len(cbuf)
                    del cbuf
                    raise _bad_size(size, length)
                ret: int = func(handle, cbuf, size)
                del cbuf  # no traceback may keep the export alive (a cycle the GC breaks badly)
                if ret < 0:
                    raise _error(get_errno)
                return ret

            return call

        def handle_call(name: str) -> Callable[[Any], int]:
            func = self._resolve(name)

            def call(handle: Any) -> int:
                ret: int = func(handle)
                if ret < 0:
                    raise _error(get_errno)
                return ret

            return call

        #: ``read(handle, buf, size)`` and the other data calls: the count (0: nothing now).
        self.read = data_call("libvchan_read", True)
        self.recv = data_call("libvchan_recv", True)
        self.write = data_call("libvchan_write", False)
        self.send = data_call("libvchan_send", False)
        #: ``wait(handle)`` and the other calls of one handle.
        self.wait = handle_call("libvchan_wait")
        self.is_open = handle_call("libvchan_is_open")
        self.data_ready = handle_call("libvchan_data_ready")
        self.buffer_space = handle_call("libvchan_buffer_space")
        self.fd_for_select = handle_call("libvchan_fd_for_select")
        #: ``close(handle)``: frees the handle.
        self.close: Callable[[Any], None] = self._resolve("libvchan_close")

    def _resolve(self, name: str) -> Any:
        try:
            return getattr(self._lib, name)
        except AttributeError:
            return _missing(self.path, name)

    def _new(self, ptr: Any) -> Any:
        if ptr == self._ffi.NULL:
            raise _error(self.get_errno)
        return ptr

    def server_init(self, domain: int, port: int, read_min: int, write_min: int) -> Any:
        """A server's handle (state WAITING)."""
        return self._new(self._lib.libvchan_server_init(domain, port, read_min, write_min))

    def client_init(self, domain: int, port: int) -> Any:
        """A connected client's handle (waits for the server)."""
        return self._new(self._lib.libvchan_client_init(domain, port))

    def client_init_async(self, domain: int, port: int) -> tuple[Any, int]:
        """``(handle, watch_fd)`` of a connection in progress."""
        watch_fd = self._ffi.new("EVTCHN *", -1)
        handle = self._new(self._lib.libvchan_client_init_async(domain, port, watch_fd))
        return handle, int(watch_fd[0])

    def finish(self, handle: Any, blocking: bool) -> int:
        """0 connected, 1 not yet."""
        ret: int = self._lib.libvchan_client_init_async_finish(handle, bool(blocking))
        if ret < 0:
            raise _error(self.get_errno)
        return ret

    def set_blocking(self, handle: Any, blocking: bool) -> None:
        try:
            func = self._lib.libvchan_set_blocking
        except AttributeError as exc:
            raise NotImplementedError(f"{self.path} has no libvchan_set_blocking") from exc
        func(handle, bool(blocking))


class CLibvchan:
    """A loaded libvchan shared library with the surface of :mod:`vchan.libvchan`.

    Handles are cdata ``libvchan_t *`` pointers (``None`` for NULL). A handle must not be
    used after ``libvchan_close``: the C library has freed it. As in :mod:`vchan.libvchan`,
    a bad Python-level argument (not a handle, a size that is negative or larger than the
    buffer, a read-only buffer to read into, an integer out of C range) fails the call with
    ``EINVAL`` instead of raising.

    The calls are made through :attr:`binding` (a :class:`Binding`, shared with
    :class:`vchan._backend.CEndpoint`); this class adds the C shape: the handle and integer
    checks, and the OSError of a failed call turned into ``-1`` (``None``) and the calling
    thread's :meth:`last_errno`.
    """

    VCHAN_DISCONNECTED = VCHAN_DISCONNECTED
    VCHAN_CONNECTED = VCHAN_CONNECTED
    VCHAN_WAITING = VCHAN_WAITING

    def __init__(self, path: str) -> None:
        """Open the shared library at ``path`` (``OSError`` if it cannot be loaded)."""
        ffi = _get_ffi()
        self.ffi: Any = ffi
        self.path = path
        self.lib: Any = ffi.dlopen(path)
        self.binding = Binding(ffi, self.lib, path)
        self._tls = threading.local()
        self._t_handle: Any = ffi.typeof("libvchan_t *")
        self._size_max = 2 ** (8 * ffi.sizeof("size_t")) - 1
        self._typeof: Callable[[Any], Any] = ffi._backend.typeof

    def __repr__(self) -> str:
        return f"CLibvchan({self.path!r})"

    # -- errno -------------------------------------------------------------------------

    def last_errno(self) -> int:
        """The errno of the calling thread's last failed call (0 if none failed yet)."""
        value: int = getattr(self._tls, "errno", 0)
        return value

    def _call(self, failure: Any, call: Callable[[], Any]) -> Any:
        """``call()``; a failed C call (OSError) or a bad Python-level argument (EINVAL)
        returns ``failure`` with the errno recorded for :meth:`last_errno`."""
        try:
            return call()
        except OSError as exc:
            self._tls.errno = exc.errno
        except _BAD_ARGUMENT:
            self._tls.errno = _errno.EINVAL
        return failure

    def _ptr(self, handle: Any) -> Any:
        """``handle`` if it is a non-NULL ``libvchan_t *``, else TypeError (ValueError)."""
        if self._typeof(handle) is not self._t_handle:  # TypeError if not a cdata at all
            raise TypeError("not a libvchan handle")
        if not handle:
            raise ValueError("NULL libvchan handle")
        return handle

    @staticmethod
    def _int(value: Any, lo: int = _INT_MIN, hi: int = _INT_MAX) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"{value!r} is not an integer in [{lo}, {hi}]")
        return value

    def _size(self, size: Any) -> int:
        return self._int(size, 0, self._size_max)

    # -- connection set-up ---------------------------------------------------------------

    def libvchan_server_init(self, domain: int, port: int, read_min: int, write_min: int) -> Any:
        """Start a server; return its handle (state WAITING) or ``None``."""
        b = self.binding
        return self._call(
            None,
            lambda: b.server_init(
                self._int(domain), self._int(port), self._size(read_min), self._size(write_min)
            ),
        )

    def libvchan_client_init(self, domain: int, port: int) -> Any:
        """Connect to a server, waiting for it to appear; return a handle or ``None``."""
        b = self.binding
        return self._call(None, lambda: b.client_init(self._int(domain), self._int(port)))

    def libvchan_client_init_async(self, domain: int, port: int) -> tuple[Any, int] | None:
        """Start connecting without blocking; return ``(handle, watch_fd)`` or ``None``."""
        b = self.binding
        result: tuple[Any, int] | None = self._call(
            None, lambda: b.client_init_async(self._int(domain), self._int(port))
        )
        return result

    def libvchan_client_init_async_finish(self, handle: Any, blocking: bool) -> int:
        """Advance an async connection: 0 connected, 1 not yet, -1 error."""
        b = self.binding
        return int(self._call(-1, lambda: b.finish(self._ptr(handle), blocking)))

    # -- data ----------------------------------------------------------------------------

    def _data(self, call: Callable[[Any, Any, int], int], handle: Any, buf: Any, size: Any) -> int:
        """A data call: the handle and the size checked here, the buffer by the binding."""
        try:
            if self._typeof(handle) is not self._t_handle or not handle:
                self._tls.errno = _errno.EINVAL
                return -1
            if size.__class__ is not int:
                size = self._size(size)
            return call(handle, buf, size)
        except OSError as exc:
            self._tls.errno = exc.errno
        except _BAD_ARGUMENT:
            self._tls.errno = _errno.EINVAL
        return -1

    def libvchan_read(self, handle: Any, buf: Any, size: int) -> int:
        """Read up to ``size`` bytes into the writable buffer ``buf``."""
        return self._data(self.binding.read, handle, buf, size)

    def libvchan_recv(self, handle: Any, buf: Any, size: int) -> int:
        """Read exactly ``size`` bytes into the writable buffer ``buf``."""
        return self._data(self.binding.recv, handle, buf, size)

    def libvchan_write(self, handle: Any, data: Any, size: int) -> int:
        """Write up to ``size`` bytes of the bytes-like ``data``."""
        return self._data(self.binding.write, handle, data, size)

    def libvchan_send(self, handle: Any, data: Any, size: int) -> int:
        """Write exactly ``size`` bytes of the bytes-like ``data``, or nothing."""
        return self._data(self.binding.send, handle, data, size)

    # -- notification and state ----------------------------------------------------------

    def _query(self, func: Callable[[Any], int], handle: Any, failure: int) -> int:
        """``func(handle)``, or ``failure`` with EINVAL if ``handle`` is not a handle."""
        try:
            if self._typeof(handle) is not self._t_handle or not handle:
                self._tls.errno = _errno.EINVAL
                return failure
            return func(handle)
        except OSError as exc:
            self._tls.errno = exc.errno
            return -1
        except TypeError:  # not a cdata at all
            self._tls.errno = _errno.EINVAL
            return failure

    def libvchan_wait(self, handle: Any) -> int:
        """Block until the select fd is readable and clear it; 0 or -1."""
        return self._query(self.binding.wait, handle, -1)

    def libvchan_close(self, handle: Any) -> None:
        """Close the channel and free the handle (anything else is ignored)."""
        try:
            h = self._ptr(handle)
        except (TypeError, ValueError):
            return
        self.binding.close(h)

    def libvchan_fd_for_select(self, handle: Any) -> int:
        """The fd that reads as ready when :meth:`libvchan_wait` will not block."""
        return self._query(self.binding.fd_for_select, handle, -1)

    def libvchan_is_open(self, handle: Any) -> int:
        """VCHAN_WAITING, VCHAN_CONNECTED or VCHAN_DISCONNECTED."""
        return self._query(self.binding.is_open, handle, VCHAN_DISCONNECTED)

    def libvchan_data_ready(self, handle: Any) -> int:
        """Bytes that can be read now without blocking."""
        return self._query(self.binding.data_ready, handle, 0)

    def libvchan_buffer_space(self, handle: Any) -> int:
        """Bytes that can be written now without blocking."""
        return self._query(self.binding.buffer_space, handle, 0)

    def libvchan_set_blocking(self, handle: Any, blocking: bool) -> None:
        """Switch the channel between blocking (default) and non-blocking mode."""
        b = self.binding  # NotImplementedError if the library has no such function
        self._call(None, lambda: b.set_blocking(self._ptr(handle), blocking))


#: What a bad Python-level argument raises inside cffi or the checks (-> EINVAL).
_BAD_ARGUMENT = (TypeError, ValueError, OverflowError, BufferError)


def load(path: str) -> CLibvchan:
    """Load the libvchan shared library at ``path``."""
    return CLibvchan(path)
