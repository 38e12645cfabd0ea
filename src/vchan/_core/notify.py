"""States and notification, like ``libvchan-socket/notify.c``: the state prologue, the latch
and the consumption request (arm), wait(), is_open(), set_blocking(), fileno().

The handle's lifetime (calls in progress, close, release, fork) is in handle.py.
"""

from __future__ import annotations

import errno
import select

from .internal import (
    _EPOLL_IN,
    _EPOLL_INOUT,
    _FIONREAD,
    _INT0,
    CONNECTED,
    DISCONNECTED,
    WAITING,
    _Channel,
    _ioctl,
    _queued,
)
from .util import _oserror

_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_EP_GONE = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class Notify(_Channel):
    """States, notification (notify.c)."""

    # ------------------------------------------------------------------------------- states

    def _gone(self) -> OSError:
        self._state = DISCONNECTED
        self._overflow = bytearray()  # never resize: views may be alive
        return _oserror(errno.EPIPE, "vchan peer disconnected")

    def _pending(self) -> bool:
        """Whether a client-side connection is still being made (async init)."""
        return self._sock is None and not self.is_server

    def _settle(self) -> int:
        """Common prologue: the state after taking a waiting client if there is one."""
        if self._state == WAITING and self.is_server:
            with self._lock:
                self._check_open()
                self._try_accept()
        return self._state

    def _wait_connected(self) -> None:
        """Blocking data calls on a channel that is not connected yet wait until it is."""
        if self._pending():
            self.finish(True)
            return
        self._enter()
        try:
            while self._state == WAITING:
                self._await_client()
        finally:
            self._leave()

    # ------------------------------------------------------------------------- notification

    def _latch(self) -> None:
        """A read consumed bytes wait() has not seen (consumed > seen): keep the event."""
        with self._lock:
            if not self._latched and not self._closed:
                self._latch_locked()

    def _latch_locked(self) -> None:
        """Lock held: keep the fd readable until wait(). EPOLL_CTL_MOD re-polls the item and,
        EPOLLOUT holding (the writable invariant), queues it; re-done even if EPOLLOUT is
        already in the mask, since the item may just have been harvested."""
        self._latched = True
        sock = self._sock
        if sock is None:
            return  # a refused peer on a WAITING server: wait() just does not block
        try:
            self._ep.modify(sock.fileno(), _EPOLL_INOUT)
        except (OSError, ValueError):
            return
        self._mask_out = True

    def _arm(self) -> None:
        """Lock held: request one consumption event (Xen's VCHAN_NOTIFY_READ). The caller
        measures (or retries its push) after this, so a consumption between the MOD and the
        harvest shows in what it returns."""
        if self._armed:
            # The request may have fired (fd readable, no wait() yet): this newer one must
            # survive the wait() that clears the older. Not readable: one consumption
            # answers both.
            if self._ep_readable():
                self._rearm = True
            return
        self._armed = True
        sock = self._sock
        if sock is None or self._mask_out:
            return  # not connected yet (_attach applies it), or EPOLLOUT already in the mask
        fd = sock.fileno()
        try:
            self._ep.modify(fd, _EPOLL_INOUT)
        except (OSError, ValueError):
            return
        self._mask_out = True
        self._harvest(fd)

    def _ep_readable(self) -> bool:
        """Lock held (so the cached poll object is never polled twice at once)."""
        p = self._ep_poller
        if p is None:
            p = self._ep_poller = select.poll()
            p.register(self._ep.fileno(), select.POLLIN)
        return bool(p.poll(0))

    def _harvest(self, fd: int) -> None:
        """Lock held: take the immediate edge of a registration that just added EPOLLOUT;
        latch if it carried an event wait() has not seen (hang-up, or unseen data)."""
        for rfd, ev in self._ep.poll(0):
            if rfd != fd:
                continue
            if ev & _EP_GONE:
                self._latch_locked()
            elif ev & _EPOLLIN:
                try:
                    queued = _queued(fd)
                except OSError:
                    queued = 1 << 62
                if self._consumed + queued > self._seen:
                    self._latch_locked()

    def _count(self, n: int) -> None:
        """``n`` bytes were taken from the kernel queue: C's ``vchan__consumed()``. If some
        arrived after wait()'s last harvest, their edge may be on epoll's ready list and
        this read may drop it, so latch (DESIGN.md). read() and recv() inline these lines
        (io.py's docstring says why)."""
        c = self._consumed + n
        self._consumed = c
        if c > self._seen and not self._latched:
            self._latch()

    def fileno(self) -> int:
        self._check_open()
        return self._ep.fileno()

    def wait(self) -> int:
        # _enter() and _leave() inlined, and no lock on the common path: this is every event
        # loop's path. Step 1: a latched event never blocks.
        calls = self._calls
        calls.append(None)
        fd = -1
        events: list[tuple[int, int]] = []
        try:
            if self._closed:
                raise _oserror(errno.EBADF, "vchan is closed")
            armed = self._armed  # only a request made before the harvest can end in it
            tail = self._latched
            sock = self._sock
            if tail:
                self._latched = False
            elif sock is not None:
                # Step 2. Load consumed before the ioctl: a concurrent read can only make
                # seen smaller (a spurious event later), never larger (a missed one).
                fd = sock.fileno()
                consumed = self._consumed
                buf = _INT0.__copy__()
                try:
                    _ioctl(fd, _FIONREAD, buf, True)
                    self._seen = consumed + buf[0]
                    events = self._ep.poll(0)
                    if not events:
                        events = self._ep.poll(-1)
                        tail = True
                except (OSError, ValueError):
                    pass  # closed under us: reported below
            else:
                tail = self._wait_unconnected()
            if armed and events:
                with self._lock:
                    rearm, self._rearm = self._rearm, False
                    if self._armed and not rearm:
                        for rfd, ev in events:
                            # Exactly EPOLLOUT: the requested consumption. With EPOLLIN too
                            # it cannot tell: stay armed (at worst one spurious event later).
                            if rfd == fd and ev == _EPOLLOUT:
                                self._armed = False
            if self._mask_out and not self._armed:
                tail = True
        finally:
            calls.pop()
            if self._closed or self._retired:
                self._leave_cleanup()
        if self._closed:
            raise _oserror(errno.EBADF, "vchan is closed")
        if tail:
            self._wait_tail()  # step 3 (it re-checks closed under the lock)
        return 0

    def _wait_unconnected(self) -> bool:
        """wait() on a WAITING server or a connecting client; True if step 3 must run."""
        lock = self._lock
        blocked = False
        while True:
            try:
                if not self._ep.poll(0):
                    blocked = True
                    self._ep.poll(-1)
            except ValueError:
                pass  # the epoll object was closed under us
            with lock:
                if self._closed:
                    raise _oserror(errno.EBADF, "vchan is closed")
                if self._pending():
                    return False
                if self._state != WAITING:
                    # Another call took the client meanwhile (and latched it): that is the
                    # event this wait() reports, so it clears it.
                    self._latched = False
                    return True
                self._latched = False
                if self._try_accept(in_wait=True):
                    return True  # the fresh registration is drained by step 3
                if self._state != WAITING:
                    return False  # the path was lost: DISCONNECTED
                if self._latched:
                    # A refused peer. The fd was readable when wait() was called: the
                    # caller saw that event, return (SPEC §5). If wait() slept, sleep on:
                    # qrexec takes a return for "connected".
                    self._latched = False
                    if not blocked:
                        return False

    def _wait_tail(self) -> None:
        """Step 3 of wait(): drop EPOLLOUT unless a request or a latch needs it, re-measure
        seen and harvest what is queued, so the fd is not left readable by our own doing."""
        with self._lock:
            sock = self._sock
            if sock is None or self._closed:
                return
            fd = sock.fileno()
            ep = self._ep
            try:
                if self._mask_out and not self._armed and not self._latched:
                    ep.modify(fd, _EPOLL_IN)
                    self._mask_out = False
                self._seen = self._consumed + _queued(fd)
                if not self._latched:  # a concurrent latch keeps its readiness
                    ep.poll(0)
                # This wait() reports the connection. Bytes that came with it are a separate
                # event (on Xen the peer's init and its first write each notify): keep them
                # readable for the next wait(). Checked after the harvest, so bytes arriving
                # later have an edge of their own.
                if self._conn_event:
                    self._conn_event = False
                    if _queued(fd) > 0:
                        self._latch_locked()
            except (OSError, ValueError):
                pass

    def is_open(self) -> int:
        self._check_open()
        state = self._settle()
        if state == CONNECTED and self._peer_gone():
            self._state = DISCONNECTED
            with self._lock:
                self._overflow = bytearray()  # never resize: views may be alive
        return self._state

    def set_blocking(self, blocking: bool) -> None:
        self._check_open()
        self._blocking = bool(blocking)

    @property
    def blocking(self) -> bool:
        return self._blocking

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def state(self) -> int:
        return self._state
