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

__all__ = ["CDEF", "CLibvchan", "RawCalls", "load"]

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

    The methods are thin: each C function is resolved once, at load time (a function the
    library does not export raises ``AttributeError`` when called), and the per-call
    checks are inlined; errno is fetched only when a call fails. cffi releases the GIL
    around every call. :attr:`raw` gives the unchecked C functions to callers that
    validate arguments themselves (:class:`vchan._backend.CEndpoint`).
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
        self._tls = threading.local()
        self._t_handle: Any = ffi.typeof("libvchan_t *")
        self._size_max = 2 ** (8 * ffi.sizeof("size_t")) - 1
        self.raw = RawCalls(self)
        raw = self.raw
        # Bound once: the cffi backend's own functions, not the ffi.* Python wrappers.
        self._typeof: Callable[[Any], Any] = ffi._backend.typeof
        self._from_buffer: Callable[[Any, Any, bool], Any] = raw.from_buffer
        self._char_array: Any = raw.char_array
        self._c_read = raw.read
        self._c_recv = raw.recv
        self._c_write = raw.write
        self._c_send = raw.send
        self._c_wait = raw.wait
        self._c_is_open = raw.is_open
        self._c_data_ready = raw.data_ready
        self._c_buffer_space = raw.buffer_space
        self._c_fd_for_select = raw.fd_for_select

    def __repr__(self) -> str:
        return f"CLibvchan({self.path!r})"

    # -- errno -------------------------------------------------------------------------

    def _fail(self, err: int | None = None) -> None:
        """Record the errno of the call that just failed in this thread."""
        self._tls.errno = self.raw.get_errno() if err is None else err

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

    def _einval(self, failure: Any) -> Any:
        """Fail the call with EINVAL (a bad Python-level argument), like vchan.libvchan."""
        self._tls.errno = _errno.EINVAL
        return failure

    def _guard(self, failure: Any, call: Callable[[], Any]) -> Any:
        """Run ``call``; a bad Python-level argument fails with EINVAL (set-up calls only)."""
        try:
            return call()
        except _BAD_ARGUMENT:
            return self._einval(failure)

    def _ptr(self, handle: Any) -> Any:
        """``handle`` if it is a non-NULL ``libvchan_t *``, else TypeError (ValueError)."""
        if self._typeof(handle) is not self._t_handle:  # TypeError if not a cdata at all
            raise TypeError("not a libvchan handle")
        if not handle:
            raise ValueError("NULL libvchan handle")
        return handle

    @staticmethod
    def _int(value: Any, lo: int, hi: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"{value!r} is not an integer in [{lo}, {hi}]")
        return value

    def _size(self, size: Any) -> int:
        return self._int(size, 0, self._size_max)

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
    #
    # Hot path: the four I/O calls check inline (one try block, no closures), in the
    # order handle, buffer, size; the C call itself is outside the try.

    def libvchan_read(self, handle: Any, buf: Any, size: int) -> int:
        """Read up to ``size`` bytes into the writable buffer ``buf``."""
        try:
            if self._typeof(handle) is not self._t_handle or not handle:
                return int(self._einval(-1))
            cbuf = self._from_buffer(self._char_array, buf, True)
            if size.__class__ is not int:
                size = self._size(size)
            if not 0 <= size <= len(cbuf):
                return int(self._einval(-1))
        except _BAD_ARGUMENT:
            return int(self._einval(-1))
        ret: int = self._c_read(handle, cbuf, size)
        del cbuf  # no traceback may keep the export alive (a cycle the GC breaks badly)
        if ret < 0:
            self._tls.errno = self.raw.get_errno()
        return ret

    def libvchan_recv(self, handle: Any, buf: Any, size: int) -> int:
        """Read exactly ``size`` bytes into the writable buffer ``buf``."""
        try:
            if self._typeof(handle) is not self._t_handle or not handle:
                return int(self._einval(-1))
            cbuf = self._from_buffer(self._char_array, buf, True)
            if size.__class__ is not int:
                size = self._size(size)
            if not 0 <= size <= len(cbuf):
                return int(self._einval(-1))
        except _BAD_ARGUMENT:
            return int(self._einval(-1))
        ret: int = self._c_recv(handle, cbuf, size)
        del cbuf  # no traceback may keep the export alive (a cycle the GC breaks badly)
        if ret < 0:
            self._tls.errno = self.raw.get_errno()
        return ret

    def libvchan_write(self, handle: Any, data: Any, size: int) -> int:
        """Write up to ``size`` bytes of the bytes-like ``data``."""
        try:
            if self._typeof(handle) is not self._t_handle or not handle:
                return int(self._einval(-1))
            cbuf = self._from_buffer(self._char_array, data, False)
            if size.__class__ is not int:
                size = self._size(size)
            if not 0 <= size <= len(cbuf):
                return int(self._einval(-1))
        except _BAD_ARGUMENT:
            return int(self._einval(-1))
        ret: int = self._c_write(handle, cbuf, size)
        del cbuf  # no traceback may keep the export alive (a cycle the GC breaks badly)
        if ret < 0:
            self._tls.errno = self.raw.get_errno()
        return ret

    def libvchan_send(self, handle: Any, data: Any, size: int) -> int:
        """Write exactly ``size`` bytes of the bytes-like ``data``, or nothing."""
        try:
            if self._typeof(handle) is not self._t_handle or not handle:
                return int(self._einval(-1))
            cbuf = self._from_buffer(self._char_array, data, False)
            if size.__class__ is not int:
                size = self._size(size)
            if not 0 <= size <= len(cbuf):
                return int(self._einval(-1))
        except _BAD_ARGUMENT:
            return int(self._einval(-1))
        ret: int = self._c_send(handle, cbuf, size)
        del cbuf  # no traceback may keep the export alive (a cycle the GC breaks badly)
        if ret < 0:
            self._tls.errno = self.raw.get_errno()
        return ret

    # -- notification and state ----------------------------------------------------------

    def _query(self, func: Any, handle: Any, failure: int) -> int:
        """``func(handle)``, or ``failure`` with EINVAL if ``handle`` is not a handle."""
        try:
            if self._typeof(handle) is not self._t_handle or not handle:
                return int(self._einval(failure))
        except TypeError:  # not a cdata at all
            return int(self._einval(failure))
        ret: int = func(handle)
        if ret < 0:
            self._tls.errno = self.raw.get_errno()
        return ret

    def libvchan_wait(self, handle: Any) -> int:
        """Block until the select fd is readable and clear it; 0 or -1."""
        return self._query(self._c_wait, handle, -1)

    def libvchan_close(self, handle: Any) -> None:
        """Close the channel and free the handle (anything else is ignored)."""
        try:
            h = self._ptr(handle)
        except (TypeError, ValueError):
            return
        self.raw.close(h)

    def libvchan_fd_for_select(self, handle: Any) -> int:
        """The fd that reads as ready when :meth:`libvchan_wait` will not block."""
        return self._query(self._c_fd_for_select, handle, -1)

    def libvchan_is_open(self, handle: Any) -> int:
        """VCHAN_WAITING, VCHAN_CONNECTED or VCHAN_DISCONNECTED."""
        return self._query(self._c_is_open, handle, VCHAN_DISCONNECTED)

    def libvchan_data_ready(self, handle: Any) -> int:
        """Bytes that can be read now without blocking."""
        return self._query(self._c_data_ready, handle, 0)

    def libvchan_buffer_space(self, handle: Any) -> int:
        """Bytes that can be written now without blocking."""
        return self._query(self._c_buffer_space, handle, 0)

    def libvchan_set_blocking(self, handle: Any, blocking: bool) -> None:
        """Switch the channel between blocking (default) and non-blocking mode."""
        try:
            func = self.lib.libvchan_set_blocking
        except AttributeError as exc:
            raise NotImplementedError(f"{self.path} has no libvchan_set_blocking") from exc
        self._guard(None, lambda: func(self._ptr(handle), bool(blocking)))


#: What a bad Python-level argument raises inside cffi or the checks (-> EINVAL).
_BAD_ARGUMENT = (TypeError, ValueError, OverflowError, BufferError)


def _missing(path: str, name: str) -> Callable[..., Any]:
    def call(*_args: Any) -> Any:
        raise AttributeError(f"{path} has no {name}")

    return call


class RawCalls:
    """The library's C functions, resolved once, with no argument checks at all.

    For callers that guarantee valid arguments themselves: ``handle`` a live non-NULL
    ``libvchan_t *``; buffers as ``from_buffer(char_array, obj, writable)`` with ``size``
    an int in ``[0, len(buffer)]``. A failed call returns -1 (a NULL handle never reaches
    here); its errno is ``get_errno()``, read in the same thread right after the call
    (cffi saves errno per thread when the call returns). The GIL is released during
    every call. A function the library does not export raises AttributeError when called.
    """

    __slots__ = (
        "buffer_space",
        "char_array",
        "close",
        "data_ready",
        "fd_for_select",
        "from_buffer",
        "get_errno",
        "is_open",
        "read",
        "recv",
        "send",
        "wait",
        "write",
    )

    def __init__(self, clib: CLibvchan) -> None:
        ffi, lib = clib.ffi, clib.lib
        backend = ffi._backend

        def resolve(name: str) -> Any:
            try:
                return getattr(lib, name)
            except AttributeError:
                return _missing(clib.path, name)

        #: ``from_buffer(char_array, obj, require_writable)``: the backend call behind
        #: ``ffi.from_buffer(obj)``, without its Python wrapper (and re-typing).
        self.from_buffer: Callable[[Any, Any, bool], Any] = backend.from_buffer
        self.char_array: Any = ffi.typeof("char[]")
        self.get_errno: Callable[[], int] = backend.get_errno
        self.read: Callable[[Any, Any, int], int] = resolve("libvchan_read")
        self.recv: Callable[[Any, Any, int], int] = resolve("libvchan_recv")
        self.write: Callable[[Any, Any, int], int] = resolve("libvchan_write")
        self.send: Callable[[Any, Any, int], int] = resolve("libvchan_send")
        self.wait: Callable[[Any], int] = resolve("libvchan_wait")
        self.is_open: Callable[[Any], int] = resolve("libvchan_is_open")
        self.data_ready: Callable[[Any], int] = resolve("libvchan_data_ready")
        self.buffer_space: Callable[[Any], int] = resolve("libvchan_buffer_space")
        self.fd_for_select: Callable[[Any], int] = resolve("libvchan_fd_for_select")
        self.close: Callable[[Any], None] = resolve("libvchan_close")


def load(path: str) -> CLibvchan:
    """Load the libvchan shared library at ``path``."""
    return CLibvchan(path)
