"""Private declarations of the engine, like ``libvchan-socket/internal.h``: the constants the
modules share and :class:`_Channel`, the state of one vchan end, with every field and how it
is guarded. The methods live in the mixins of the sibling modules.

See docs/DESIGN.md for the theory of operation; the comments here name its terms.

Locking. One ``threading.Lock``, ``_lock``, where the C library has four mutexes: it guards the
set-up state (listener, inotify fd, timerfd, accept and connect), the write side (overflow,
``_u_est``, ``_promised``, the pusher), the epoll mask and the ``EPOLL_CTL_MOD`` calls that
change it, and the lifetime counters. It is never held while waiting for the peer (poll,
``epoll_wait`` with a timeout, a blocking ``recv``). Fields marked *GIL* are also read (some
written) without it: one attribute load or store is atomic under the GIL, as the C library's
atomics are.

Lifetime (handle.py). ``_calls`` holds one entry per call in progress and for the pusher
thread (the C library's ``refs`` without the owner's reference, for which ``_closed``
stands): whoever empties it once the channel is closed closes the descriptors, so a close()
from another thread never closes a descriptor a call may still use and no descriptor number
is reused meanwhile. It is a list because ``append`` and ``pop`` are atomic under the GIL:
the hot paths enter without taking ``_lock`` (append, *then* check ``_closed``; close() sets
``_closed``, *then* checks ``_calls``: one of the two always sees the other).
"""

from __future__ import annotations

import fcntl
import select
import socket
import threading
import weakref
from typing import TYPE_CHECKING, Final

from .. import _config, _linux

# Re-exported: the engine's modules take them from here, like internal.h's.
from .._constants import CONNECTED as CONNECTED
from .._constants import DISCONNECTED as DISCONNECTED
from .._constants import WAITING as WAITING
from .._constants import InBuf as InBuf
from .._constants import OutBuf as OutBuf

# ---- constants. internal.h has each as VCHAN__<NAME>; tests/test_mirror.py checks that the
# two agree (the addressing ones are in vchan._config, the system ones in vchan._linux).
#: Upper bound of the truesize of one write of n bytes (DESIGN.md "tsz"):
#: ``n + TSZ_BASE + TSZ_STEP * (n >> TSZ_SHIFT)``; fit() inverts it (``>> FIT_SHIFT``).
TSZ_BASE: Final = 2560
TSZ_STEP: Final = 1024
TSZ_SHIFT: Final = 15
FIT_SHIFT: Final = 5
#: SO_SNDBUF is raised so that ``W = S/4 >= W_RINGS * write_ring + W_EXTRA`` (DESIGN.md).
W_RINGS: Final = 4
W_EXTRA: Final = 65536
#: Client retry back-off for a refused connect (ms); without inotify, at most NOINOTIFY.
BACKOFF_FIRST_MS: Final = 1
BACKOFF_MAX_MS: Final = 100
BACKOFF_NOINOTIFY_MS: Final = 10

_EPOLL_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_EPOLL_INOUT = _EPOLL_IN | select.EPOLLOUT
_POLL_GONE = _linux.POLLRDHUP | select.POLLHUP | select.POLLERR
_FIONREAD = _linux.FIONREAD
_ioctl = fcntl.ioctl
#: FIONREAD's out-parameter: ``_INT0.__copy__()`` filled in place by ioctl (see _linux).
_INT0 = _linux._INT0


def _queued(fd: int) -> int:
    """FIONREAD: the bytes queued for reading on ``fd`` (OSError if it is gone)."""
    buf = _INT0.__copy__()
    _ioctl(fd, _FIONREAD, buf, True)
    return buf[0]


# Every channel of this process, for the fork handler (handle.py).
_live: weakref.WeakSet[_Channel] = weakref.WeakSet()


class _Channel:
    """The state of one vchan end (internal.h's ``struct libvchan``)."""

    # ---- immutable after __init__ ----
    is_server: bool
    read_ring: int
    write_ring: int
    path: str  # the socket's path (the server binds it, the client connects)
    _allow_any: bool  # trust a peer of any uid (else root or our euid only)
    _ep: select.epoll  # the select fd; closed by _release_fds

    # ---- GIL ----
    _state: int  # WAITING, CONNECTED, DISCONNECTED (final); leaves WAITING
    # under _lock
    _closed: bool  # close() was called (set under _lock)
    _inherited: bool  # this process is a fork() child: the parent owns the channel
    _blocking: bool  # set_blocking()

    # ---- written once (under _lock) before _state leaves WAITING ----
    _sock: socket.socket | None  # the connection (blocking at the socket level, see io.py);
    # None again after _release_fds
    _w: int  # W = SO_SNDBUF // 4

    # ---- _lock: set-up ----
    _lock: threading.Lock  # the lock (a fresh one in a fork() child, see _forked)
    _listener: socket.socket | None  # server: the listener while WAITING
    _bound: tuple[int, int] | None  # server: (dev, ino) of the socket we bound at path
    _inotify: int  # client that had to wait: inotify fd on the directory, or -1
    # (also -1 when inotify is unavailable: the timer alone)
    _watch: int  # its watch descriptor
    _timer: int  # client while connecting: back-off timerfd, or -1
    _backoff_ms: int  # the next back-off

    # ---- _lock: write side ----
    _u_est: int  # upper bound of the bytes (truesize) in flight, U
    _promised: int  # credit left from the last buffer_space()
    _overflow: bytearray  # bytes accepted beyond what the kernel took, for the pusher;
    # replaced, never resized, when dropped (views may be alive)
    _pusher: threading.Thread | None  # the pusher thread while it runs
    _handoff: bool  # close() left the overflow to the pusher to deliver

    # ---- _lock: lifetime ----
    _calls: list[None]  # GIL: one entry per call in progress, and for the pusher
    _retired: list[socket.socket]  # listeners to close once _calls is empty

    # ---- read side (read(), recv(), data_ready(); not under _lock) ----
    _stash: bytearray  # recv()'s bytes taken from the kernel but not yet delivered

    # ---- notification (notify.py; DESIGN.md "Notification") ----
    _consumed: int  # GIL: bytes taken out of sock's kernel queue
    _seen: int  # GIL: consumed + FIONREAD just before wait()'s last harvest
    _armed: bool  # _lock: a consumption request is outstanding
    _rearm: bool  # _lock: a request made while armed (it may have fired)
    _latched: bool  # _lock (read under the GIL): a call other than wait()
    # consumed an event wait() has not seen
    _mask_out: bool  # _lock: EPOLLOUT is in sock's registration
    _conn_event: bool  # _lock: the connection is an event no wait() reported yet

    def __init__(
        self,
        *,
        is_server: bool,
        read_ring: int,
        write_ring: int,
        path: str,
        allow_any_uid: bool | None,
    ) -> None:
        self.is_server = is_server
        self.read_ring = read_ring
        self.write_ring = write_ring
        self.path = path
        self._allow_any = _config.allow_any_uid() if allow_any_uid is None else allow_any_uid
        self._state: int = WAITING
        self._closed = False
        self._inherited = False
        self._blocking = True
        self._lock = threading.Lock()
        self._ep = select.epoll()
        self._sock: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] | None = None
        self._inotify = -1
        self._watch = -1
        self._timer = -1
        self._backoff_ms = BACKOFF_FIRST_MS
        self._w = 0
        self._u_est = 0
        self._promised = 0
        self._overflow = bytearray()
        self._stash = bytearray()
        self._pusher: threading.Thread | None = None
        self._handoff = False
        self._calls: list[None] = []
        self._ep_poller: select.poll | None = None  # _lock: polls the select fd itself
        self._retired: list[socket.socket] = []
        # Notification (SPEC §5, docs/DESIGN.md "Notification"): bytes taken from the kernel
        # queue; consumed + FIONREAD measured before wait()'s last harvest; a consumption
        # request is outstanding; a call other than wait() took an event wait() has not
        # seen; EPOLLOUT is in sock's epoll mask.
        self._consumed = 0
        self._seen = 0
        self._armed = False
        self._rearm = False
        self._latched = False
        self._mask_out = False
        self._conn_event = False
        _live.add(self)

    if TYPE_CHECKING:
        # The methods one mixin calls on another, like internal.h's prototypes: only for
        # the type checker (at run time the composed Channel finds them in the mixins).

        # ---- util.py ----
        def _trusted(self, sock: socket.socket) -> bool: ...
        def _poll(self, fd: int, events: int, timeout: float | None = None) -> int: ...
        def _plain_poll(self, fd: int, events: int) -> int: ...
        def _peer_gone(self) -> bool: ...

        # ---- init.py ----
        def finish(self, blocking: bool, timeout: float | None = None) -> int: ...
        def _try_accept(self, in_wait: bool = False) -> bool: ...
        def _unlink_if_ours(self) -> None: ...
        def _await_client(self) -> None: ...

        # ---- handle.py ----
        def _check_open(self) -> None: ...
        def _enter(self) -> None: ...
        def _leave(self) -> None: ...
        def _idle_cleanup(self) -> None: ...
        def _leave_cleanup(self) -> None: ...
        def _forked(self) -> None: ...
        def close(self) -> None: ...

        # ---- notify.py ----
        def _gone(self) -> OSError: ...
        def _pending(self) -> bool: ...
        def _settle(self) -> int: ...
        def _wait_connected(self) -> None: ...
        def _latch(self) -> None: ...
        def _latch_locked(self) -> None: ...
        def _arm(self) -> None: ...
        def _harvest(self, fd: int) -> None: ...
        def _count(self, n: int) -> None: ...

        # ---- io.py ----
        def _flush_overflow(self, bounded: bool) -> None: ...

        # ---- pusher.py ----
        def _start_pusher(self) -> None: ...
