"""Linux system interfaces the standard library lacks on Python 3.11 (inotify, timerfd)."""

from __future__ import annotations

import array
import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import select
import socket
import struct
import time
from collections.abc import Iterator

SIOCOUTQ = 0x5411  # TIOCOUTQ: bytes of send-buffer memory in use (skb truesize)
FIONREAD = 0x541B  # SIOCINQ: bytes queued for reading
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
IN_ATTRIB = 0x004
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
#: What a connecting client watches its socket directory for (internal.h's
#: VCHAN__INOTIFY_MASK, as are the two DIRLOCK_ values below: tests/test_mirror.py).
INOTIFY_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB

#: Server set-up's directory lock: LOCK_NB tried DIRLOCK_TRIES times, DIRLOCK_WAIT_MS apart.
DIRLOCK_TRIES = 100
DIRLOCK_WAIT_MS = 1

#: /proc/net/unix's flag of a listening socket.
_SO_ACCEPTCON = 0x10000

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc.timerfd_settime.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(_Itimerspec),
    ctypes.c_void_p,
]


def _check(result: int) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def inotify_watch_dir(path: str) -> tuple[int, int]:
    """A non-blocking, close-on-exec inotify fd watching ``path`` for entries coming and going.

    Returns ``(fd, watch descriptor)``.
    """
    fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    try:
        wd = _check(_libc.inotify_add_watch(fd, os.fsencode(path), INOTIFY_MASK))
    except OSError:
        os.close(fd)
        raise
    return fd, wd


def inotify_unwatch(fd: int, wd: int) -> None:
    """Drop the watch but keep the fd: closing an inotify fd waits for an SRCU grace period
    (~15 ms on Linux 6.x) while a removed watch is reaped; once the channel closes, that
    has long happened and the close is instant."""
    _libc.inotify_rm_watch(fd, wd)


def timerfd_create() -> int:
    return _check(_libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC))


def timerfd_arm(fd: int, seconds: float) -> None:
    """One-shot timer; 0 disarms it."""
    spec = _Itimerspec()
    ns = max(0, int(seconds * 1e9))
    if seconds > 0 and ns == 0:
        ns = 1
    spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(ns, 1_000_000_000)
    _check(_libc.timerfd_settime(fd, 0, ctypes.byref(spec), None))


#: An int out-parameter for ioctl, copied per call and filled in place (half the cost of an
#: immutable buffer and an unpack; a copy per call, so threads never share one).
_INT0 = array.array("i", [0])


def ioctl_int(sock: socket.socket, request: int) -> int:
    buf = _INT0.__copy__()
    fcntl.ioctl(sock.fileno(), request, buf, True)
    return buf[0]


def peer_uid(sock: socket.socket) -> int:
    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", cred)[1])


def listening_at(path: str, or_binding: bool = False) -> bool:
    """Whether a listening Unix socket is bound at ``path`` (from /proc/net/unix).

    Used to tell a live server's socket file from a stale one without connecting to it:
    a probe connection would take the live server's only client slot. ``or_binding`` also
    counts a socket bound there and not connected (a server between bind() and listen()).
    """
    try:
        with open("/proc/net/unix", "rb") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return False
    target = os.fsencode(path)
    for line in lines:
        fields = line.split(None, 7)
        # Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = __SO_ACCEPTCON
        if (
            len(fields) == 8
            and fields[7] == target
            and (int(fields[3], 16) & _SO_ACCEPTCON or (or_binding and fields[5] == b"01"))
        ):
            return True
    return False


@contextlib.contextmanager
def directory_lock(directory: str) -> Iterator[None]:
    """Serialise server set-up (check, unlink, bind, listen) in one socket directory.

    An exclusive flock() on the directory, shared with the C library, so no two servers
    take the same path. A child forked meanwhile may hold the lock until it execs or exits,
    so wait at most 100 ms and then go on without it.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield  # bind() reports a missing directory precisely
        return
    try:
        for _ in range(DIRLOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(DIRLOCK_WAIT_MS / 1000)
            except OSError:
                break
        yield
    finally:
        os.close(fd)
