"""Shared fixtures and helpers for the vchan test-suites.

Implementations under test are chosen with ``VCHAN_TEST_IMPLS`` (comma list, default
``python,speedups,c``): ``python`` is :mod:`vchan.libvchan` over the pure-Python engine,
``speedups`` the same API over the compiled engine ``vchan._speedups`` (rebuilt in place when
its sources changed, see tests/_speedups.py), ``c`` our ``libvchan-socket`` loaded with
cffi, and ``lib`` (added automatically when ``VCHAN_TEST_LIB=/path/lib.so`` is set) any other
libvchan shared library. ``VCHAN_TEST_SPEEDUPS=/path/_speedups.so`` makes ``vchan._speedups``
that file (the sanitizer build: speedups/run-sanitized-tests.sh). Every deadline is a
multiple of ``TIMEOUT`` (env ``VCHAN_TEST_TIMEOUT``, seconds, default 10) so slow machines
can scale them.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import _speedups

REPO = Path(__file__).resolve().parent.parent
CLIB_DIR = REPO / "libvchan-socket"
CLIB = CLIB_DIR / "build" / "libvchan-socket.so"

#: Generous deadline for things that must happen (seconds); scale with VCHAN_TEST_TIMEOUT.
TIMEOUT = float(os.environ.get("VCHAN_TEST_TIMEOUT", "10"))
#: How long a negative check ("this call is still blocked", "the fd stays unreadable") waits.
SETTLE = float(os.environ.get("VCHAN_TEST_SETTLE", "0.2"))

#: The packaging tests (tests/packaging) build, install and remove system packages: only
#: ``make test-packages``, which sets VCHAN_TEST_PACKAGES=1, collects them.
PACKAGING = os.environ.get("VCHAN_TEST_PACKAGES") == "1"
collect_ignore = [] if PACKAGING else ["packaging"]

VCHAN_DISCONNECTED = 0
VCHAN_CONNECTED = 1
VCHAN_WAITING = 2


def scaled(seconds: float) -> float:
    """A tolerance of ``seconds`` on a normal machine, scaled like ``TIMEOUT`` (default 10)."""
    return seconds * TIMEOUT / 10


def deadline(seconds: float = TIMEOUT) -> float:
    """A ``time.monotonic()`` deadline ``seconds`` from now."""
    return time.monotonic() + seconds


# ---------------------------------------------------------------------------------------
# implementations


def _impl_names() -> list[str]:
    names = [n.strip() for n in os.environ.get("VCHAN_TEST_IMPLS", "python,speedups,c").split(",")]
    names = [n for n in names if n]
    if os.environ.get("VCHAN_TEST_LIB") and "lib" not in names:
        names.append("lib")
    return names


_c_build: dict[str, str | None] = {}


def _clib_stale() -> bool:
    """Whether the built library is missing or older than a source file of it."""
    if not CLIB.exists():
        return True
    built = CLIB.stat().st_mtime
    sources = [*CLIB_DIR.glob("*.[ch]"), *CLIB_DIR.glob("*.map"), CLIB_DIR / "Makefile"]
    return any(p.stat().st_mtime > built for p in sources if p.exists())


def _build_clib() -> str | None:
    """Build libvchan-socket once per session if missing or stale; return a skip reason."""
    if "done" in _c_build:
        return _c_build["done"]
    reason: str | None = None
    if not (CLIB_DIR / "Makefile").exists():
        reason = f"{CLIB_DIR} has no Makefile yet (C library not written yet)"
    elif _clib_stale():
        proc = subprocess.run(
            ["make", "-C", str(CLIB_DIR)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0 or not CLIB.exists():
            raise RuntimeError(
                f"make -C {CLIB_DIR} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
    _c_build["done"] = reason
    return reason


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module imports vchan (and so vchan._speedups).
    _speedups.prepare()


def _load_impl(name: str) -> Any:
    if name in ("python", "speedups"):
        import vchan.libvchan as mod

        return mod.for_engine(name)  # OSError if the engine is not available
    from vchan import _cffi

    if name == "c":
        reason = _build_clib()
        if reason is not None:
            pytest.skip(reason)
        return _cffi.load(str(CLIB))
    if name == "lib":
        path = os.environ.get("VCHAN_TEST_LIB", "")
        if not path:
            pytest.skip("VCHAN_TEST_LIB is not set")
        # The same loader as the Pythonic API's backend= (paths, names, "xen", ...).
        from vchan._backend import load_library

        return load_library(path)
    raise pytest.UsageError(f"unknown implementation {name!r} in VCHAN_TEST_IMPLS")


_impl_cache: dict[str, Any] = {}


class Api:
    """An implementation of the libvchan API that remembers its open handles.

    Attribute access falls through to the implementation; the init functions record the
    handles they return and ``libvchan_close`` forgets them, so the fixture can close
    whatever a test left open.
    """

    def __init__(self, impl: Any, name: str) -> None:
        self.impl = impl
        self.name = name
        self._lock = threading.Lock()
        self._open: list[Any] = []

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.impl, attr)

    def __repr__(self) -> str:
        return f"Api({self.name})"

    def _track(self, handle: Any) -> Any:
        if handle is not None:
            with self._lock:
                self._open.append(handle)
        return handle

    def libvchan_server_init(self, domain: int, port: int, read_min: int, write_min: int) -> Any:
        return self._track(self.impl.libvchan_server_init(domain, port, read_min, write_min))

    def libvchan_client_init(self, domain: int, port: int) -> Any:
        return self._track(self.impl.libvchan_client_init(domain, port))

    def libvchan_client_init_async(self, domain: int, port: int) -> Any:
        ret = self.impl.libvchan_client_init_async(domain, port)
        if ret is not None:
            self._track(ret[0])
        return ret

    def forget(self, handle: Any) -> None:
        """Stop tracking ``handle`` (closed elsewhere, e.g. in a forked child)."""
        with self._lock:
            for i, h in enumerate(self._open):
                if h is handle:
                    del self._open[i]
                    return

    def libvchan_close(self, handle: Any) -> None:
        self.forget(handle)
        self.impl.libvchan_close(handle)

    def close_all(self) -> None:
        with self._lock:
            handles, self._open = self._open, []
        errors: list[BaseException] = []
        for h in reversed(handles):
            try:
                self.impl.libvchan_close(h)
            except BaseException as exc:  # noqa: BLE001 - close the others first
                errors.append(exc)
        if errors:
            raise errors[0]


# ---------------------------------------------------------------------------------------
# threads


class Bg:
    """A function running in a daemon thread; ``result()`` joins with a deadline."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.value: Any = None
        self.exc: BaseException | None = None
        self.t_end: float | None = None
        self._fn = fn
        self._args = args
        self.thread = threading.Thread(target=self._run, daemon=True)
        _threads.append(self)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.value = self._fn(*self._args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in result()
            self.exc = exc
        finally:
            self.t_end = time.monotonic()

    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self, timeout: float = TIMEOUT) -> Any:
        """Join; fail the test if the thread has not ended within ``timeout``."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self._fn!r} still running after {timeout} s"
        if self.exc is not None:
            raise self.exc
        return self.value

    def assert_blocked(self, settle: float = SETTLE) -> None:
        """Assert that the call is still running after ``settle`` seconds."""
        self.thread.join(settle)
        assert self.thread.is_alive(), f"{self._fn!r} returned {self.value!r} instead of waiting"


_threads: list[Bg] = []


def run_bg(fn: Callable[..., Any], *args: Any) -> Bg:
    """Start ``fn(*args)`` in a daemon thread."""
    return Bg(fn, *args)


def bounded(fn: Callable[..., Any], *args: Any, timeout: float = TIMEOUT) -> Any:
    """Call ``fn(*args)`` in a thread and fail if it does not return within ``timeout``."""
    return run_bg(fn, *args).result(timeout)


def bounded_err(api: Any, fn: Callable[..., Any], *args: Any, timeout: float = TIMEOUT) -> Any:
    """Like :func:`bounded`, returning ``(result, api.last_errno())`` read in that thread."""

    def call() -> tuple[Any, int]:
        ret = fn(*args)
        return ret, api.last_errno()

    return bounded(call, timeout=timeout)


# ---------------------------------------------------------------------------------------
# polling helpers


def wait_until(
    predicate: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.001
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout``."""
    end = deadline(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition {predicate!r} not met within {timeout} s")
        time.sleep(interval)


def fd_readable(fd: int, timeout: float = 0) -> bool:
    """Whether ``fd`` polls readable within ``timeout`` seconds."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(int(timeout * 1000)))


# ---------------------------------------------------------------------------------------
# channels


def sock_path(sockdir: str | Path, server_dom: int, client_dom: int, port: int) -> Path:
    """The socket path of a channel (SPEC §1)."""
    return Path(sockdir) / f"vchan.{server_dom}.{client_dom}.{port}.sock"


def connected_pair(
    api: Any, domain: int = 0, port: int = 1, read_min: int = 0, write_min: int = 0
) -> tuple[Any, Any]:
    """Server and client handles connected to each other in this process.

    ``domain`` must be the local domain (``VCHAN_DOMAIN``, 0 by default) for both ends to
    meet. The server's ``client connected`` event is left pending on its select fd.
    """
    srv = api.libvchan_server_init(domain, port, read_min, write_min)
    assert srv is not None, f"server_init failed, errno {api.last_errno()}"
    cli = bounded(api.libvchan_client_init, domain, port)
    assert cli is not None, f"client_init failed, errno {api.last_errno()}"
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
    return srv, cli


def settle(api: Any, handle: Any) -> None:
    """Consume pending events: ``wait()`` while the select fd is readable."""
    fd = api.libvchan_fd_for_select(handle)
    for _ in range(100):
        if not fd_readable(fd):
            return
        assert bounded(api.libvchan_wait, handle) == 0
    raise AssertionError("select fd stays readable after 100 wait() calls")


def read_exact(api: Any, handle: Any, n: int, timeout: float = TIMEOUT) -> bytes:
    """Read ``n`` bytes with non-blocking reads, polling the data with a deadline."""
    out = bytearray()
    buf = bytearray(65536)
    end = deadline(timeout)
    while len(out) < n:
        want = min(len(buf), n - len(out))
        got = api.libvchan_read(handle, buf, want)
        if got < 0:
            raise AssertionError(f"read returned -1 after {len(out)}/{n} bytes")
        if got:
            out += buf[:got]
            continue
        if time.monotonic() > end:
            raise AssertionError(f"only {len(out)}/{n} bytes within {timeout} s")
        time.sleep(0.0005)
    return bytes(out)


def read_all_until_eof(api: Any, handle: Any, timeout: float = TIMEOUT) -> bytes:
    """Non-blocking reads until read() returns -1 (peer gone and nothing left)."""
    out = bytearray()
    buf = bytearray(65536)
    end = deadline(timeout)
    while True:
        got = api.libvchan_read(handle, buf, len(buf))
        if got < 0:
            return bytes(out)
        if got:
            out += buf[:got]
            continue
        if time.monotonic() > end:
            raise AssertionError(f"no EOF within {timeout} s after {len(out)} bytes")
        time.sleep(0.0005)


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` deterministic pseudo-random bytes (so reordering or loss shows)."""
    import random

    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def sockdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short private socket directory in VCHAN_SOCKET_DIR; VCHAN_DOMAIN unset."""
    path = tempfile.mkdtemp(prefix="vc", dir="/tmp")
    monkeypatch.setenv("VCHAN_SOCKET_DIR", path)
    monkeypatch.delenv("VCHAN_DOMAIN", raising=False)
    monkeypatch.delenv("VCHAN_ALLOW_ANY_UID", raising=False)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def get_impl(name: str) -> Any:
    """The implementation called ``name`` (loaded once; skips if unavailable)."""
    if name not in _impl_cache:
        _impl_cache[name] = _load_impl(name)
    return _impl_cache[name]


def _teardown(apis: list[Api], start: int) -> None:
    try:
        for a in apis:
            a.close_all()
    finally:
        for bg in _threads[start:]:
            bg.thread.join(TIMEOUT)
        del _threads[start:]


@pytest.fixture(params=_impl_names())
def api(request: pytest.FixtureRequest, sockdir: str) -> Iterator[Api]:
    """One libvchan implementation (see module doc); open handles are closed afterwards."""
    name: str = request.param
    wrapped = Api(get_impl(name), name)
    start = len(_threads)
    try:
        yield wrapped
    finally:
        _teardown([wrapped], start)


def _impl_pairs() -> list[tuple[str, str]]:
    names = _impl_names()
    return [(a, b) for a in names for b in names if a != b]


@pytest.fixture(params=_impl_pairs(), ids=lambda p: f"{p[0]}-server-{p[1]}-client")
def api_pair(request: pytest.FixtureRequest, sockdir: str) -> Iterator[tuple[Api, Api]]:
    """Two different implementations (server side, client side), for cross interop."""
    a, b = request.param
    pair = (Api(get_impl(a), a), Api(get_impl(b), b))
    start = len(_threads)
    try:
        yield pair
    finally:
        _teardown(list(pair), start)
