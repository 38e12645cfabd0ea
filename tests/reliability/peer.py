"""A vchan peer in its own process, driven by the reliability tests.

    python -m tests.reliability.peer IMPL ROLE ACTION [key=value ...]

IMPL is ``python`` or ``speedups`` (vchan.libvchan over that engine), ``plain`` (a bare
AF_UNIX socket, no library) or the path of a libvchan shared library (loaded with
vchan._cffi). ROLE is ``server`` or
``client``. ACTION:

* ``send``: write stream ``seed`` (see _stream.py) in chunks of 1..``chunk`` bytes, up to
  ``total`` bytes (0: forever); after each write prints ``ACK <bytes accepted so far>``.
  ``style=blocking`` (default) uses blocking writes; ``style=qrexec`` gates non-blocking
  writes on buffer_space() like qrexec. At the end prints ``DONE`` and holds.
* ``recv``: read and verify stream ``seed``; prints ``GOT <count>`` after each read,
  ``EOF <count>`` at the end of the stream, ``BAD <offset>`` (exit 3) on a wrong byte.
* ``hold``: just keep the channel open; with ``greet=TEXT`` a server first sends TEXT.

Every peer prints ``START`` when it is about to set up its end (everything loaded), ``READY``
once its server listens or its client is connected, holds the channel until its standard
input closes, then closes it and exits 0. Errors print ``ERR <errno> <what>`` and exit 2.

``VCHAN_TEST_INOTIFY_FAIL=init|watch`` in the environment makes inotify unavailable to the
Python engine as the LD_PRELOAD shim ``no_inotify.c`` makes it to a C library (ctypes, which
the Python engine calls libc through, does not see that shim).
"""

from __future__ import annotations

import errno
import os
import random
import socket
import sys
import time
from typing import Any

from tests.reliability import _stream


def out(line: str) -> None:
    os.write(1, (line + "\n").encode())


def fail(what: str, code: int) -> None:
    out(f"ERR {code} {what}")
    os._exit(2)


def hold() -> None:
    """Block until the parent closes our stdin."""
    while os.read(0, 4096):
        pass


def sock_path(role: str, port: int) -> str:
    d = os.environ.get("VCHAN_SOCKET_DIR", "/var/run/vchan")
    me = int(os.environ.get("VCHAN_DOMAIN", "0"))
    return f"{d}/vchan.{me}.{me}.{port}.sock"


class Plain:
    """The bits of the libvchan API the actions need, over a bare socket."""

    def __init__(self) -> None:
        self.s: socket.socket | None = None
        self.listener: socket.socket | None = None

    def server(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)

    def client(self, path: str) -> None:
        end = time.monotonic() + 30
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                self.s = s
                return
            except OSError:
                s.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.001)

    def sock(self) -> socket.socket:
        if self.s is None:
            assert self.listener is not None
            self.s, _ = self.listener.accept()
        return self.s

    def write(self, data: bytes) -> int:
        self.sock().sendall(data, socket.MSG_NOSIGNAL)
        return len(data)

    def read(self, buf: bytearray) -> int:
        n = self.sock().recv_into(buf)
        return n if n > 0 else -1


class Lib:
    def __init__(self, api: Any) -> None:
        self.api = api
        self.h: Any = None

    def server(self, port: int, rmin: int, wmin: int) -> None:
        self.h = self.api.libvchan_server_init(0, port, rmin, wmin)
        if self.h is None:
            fail("server_init", self.api.last_errno())

    def client(self, port: int) -> None:
        self.h = self.api.libvchan_client_init(0, port)
        if self.h is None:
            fail("client_init", self.api.last_errno())

    def write(self, data: bytes) -> int:
        n = self.api.libvchan_write(self.h, data, len(data))
        if n < 0:
            fail("write", self.api.last_errno())
        return int(n)

    def read(self, buf: bytearray) -> int:
        return int(self.api.libvchan_read(self.h, buf, len(buf)))


def no_inotify_in_python() -> None:
    """What no_inotify.c does, for the Python engine: inotify_init1() fails with EMFILE
    (``init``) or inotify_add_watch() with ENOSPC (``watch``), noted in the log file."""
    import ctypes

    from vchan import _linux

    which = os.environ.get("VCHAN_TEST_INOTIFY_FAIL")
    if which not in ("init", "watch"):
        return
    code = errno.EMFILE if which == "init" else errno.ENOSPC

    def fail_call(*args: Any) -> int:
        log = os.environ.get("VCHAN_TEST_INOTIFY_LOG")
        if log:
            with open(log, "a") as f:
                f.write(which + "\n")
        ctypes.set_errno(code)
        return -1

    setattr(_linux._libc, "inotify_init1" if which == "init" else "inotify_add_watch", fail_call)


def main(argv: list[str]) -> None:
    impl, role, action = argv[:3]
    opts = dict(a.split("=", 1) for a in argv[3:])
    port = int(opts.get("port", "1"))
    seed = int(opts.get("seed", "0"))
    rng = random.Random(seed + 1)
    if impl == "plain":
        end: Any = Plain()
        path = sock_path(role, port)
        out("START")
        try:
            end.server(path) if role == "server" else end.client(path)
        except OSError as exc:
            fail(f"{role} {path}", exc.errno or 0)
    else:
        if impl in ("python", "speedups"):
            from tests import _speedups

            _speedups.preload()  # VCHAN_TEST_SPEEDUPS: the same build as the test's
            from vchan import libvchan

            api = libvchan.for_engine(impl)
        else:
            from vchan import _cffi

            api = _cffi.load(impl)
        if impl == "python":
            no_inotify_in_python()
        end = Lib(api)
        out("START")
        if role == "server":
            end.server(port, int(opts.get("read_min", "0")), int(opts.get("write_min", "0")))
        else:
            end.client(port)
    out("READY")

    if action == "send":
        total = int(opts.get("total", "0"))
        maxchunk = int(opts.get("chunk", "65536"))
        style = opts.get("style", "blocking")
        sent = 0
        if style == "qrexec" and isinstance(end, Lib):
            end.api.libvchan_set_blocking(end.h, False)
        while total == 0 or sent < total:
            n = rng.randint(1, maxchunk)
            if total:
                n = min(n, total - sent)
            if style == "qrexec" and isinstance(end, Lib):
                space = end.api.libvchan_buffer_space(end.h)
                if space <= 0:
                    if end.api.libvchan_is_open(end.h) == 0:
                        fail("peer gone", errno.EPIPE)
                    end.api.libvchan_wait(end.h)
                    continue
                n = min(n, space)
            k = end.write(_stream.chunk(seed, sent, n))
            sent += k
            out(f"ACK {sent}")
        out("DONE")
    elif action == "recv":
        check = _stream.Checker(seed)
        buf = bytearray(int(opts.get("chunk", "65536")))
        while True:
            n = end.read(buf)
            if n < 0:
                out(f"EOF {check.count}")
                break
            if not check.feed(memoryview(buf)[:n]):
                out(f"BAD {check.bad}")
                os._exit(3)
            out(f"GOT {check.count}")
    elif action == "hold":
        greet = opts.get("greet")
        if greet:
            end.write(greet.encode())
    else:
        fail(f"unknown action {action}", errno.EINVAL)
    hold()
    if isinstance(end, Lib):
        end.api.libvchan_close(end.h)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
