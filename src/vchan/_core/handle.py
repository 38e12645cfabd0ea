"""The handle's lifetime, like ``libvchan-socket/handle.c``: the calls in progress, close(),
the release of the descriptors, and fork safety.

``_calls`` holds one entry per call in progress and one for the pusher thread (C's ``refs``
without the owner's reference, for which ``_closed`` stands); whoever empties it once the
channel is closed closes the descriptors (internal.py, "Lifetime"). The fields are set up by
``_Channel.__init__`` (internal.py), which is C's ``vchan__alloc()``. close() does C's
``vchan__close_wake()`` inline.
"""

from __future__ import annotations

import errno
import os
import socket
import threading

from .. import _linux
from .internal import CONNECTED, WAITING, _Channel, _live
from .util import _oserror


def _after_fork_in_child() -> None:
    for ch in list(_live):
        try:
            ch._forked()
        except Exception:  # noqa: BLE001 - every channel must still be marked inherited
            ch._inherited = True


os.register_at_fork(after_in_child=_after_fork_in_child)


class Handle(_Channel):
    """Lifetime: calls in progress, close, release, fork (handle.c)."""

    def _check_open(self) -> None:
        if self._closed:
            raise _oserror(errno.EBADF, "vchan is closed")

    def _enter(self) -> None:
        self._calls.append(None)
        if self._closed:
            self._leave()
            raise _oserror(errno.EBADF, "vchan is closed")

    def _leave(self) -> None:
        self._calls.pop()
        if self._closed or self._retired:
            self._leave_cleanup()

    def _leave_cleanup(self) -> None:
        """After a call left, closed or with listeners retired: clean up if it was the last."""
        with self._lock:
            self._idle_cleanup()

    def _idle_cleanup(self) -> None:
        """Lock held: once no call is in progress, close what was retired (or everything)."""
        if self._calls:
            return
        while self._retired:
            self._retired.pop().close()
        if self._closed:
            self._release_fds()

    def _release_fds(self) -> None:
        """Close every descriptor (lock held, nobody inside a call)."""
        for s in (self._sock, self._listener, *self._retired):
            if s is not None:
                s.close()
        self._sock = self._listener = None
        self._retired.clear()
        for fd in (self._inotify, self._timer):
            if fd >= 0:
                os.close(fd)
        self._inotify = self._timer = -1
        self._ep.close()
        self._overflow = bytearray()  # never resize: views may be alive
        self._stash = bytearray()

    def _forked(self) -> None:
        """In a child after fork(): the parent owns the channel; never disturb it."""
        self._inherited = True
        self._lock = threading.Lock()
        self._pusher = None
        self._calls = []
        self._overflow = bytearray()  # never resize: views may be alive

    # -------------------------------------------------------------------------------- close

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._inherited:
                self._overflow = bytearray()  # never resize: views may be alive
                self._calls.clear()
                self._release_fds()
                return
            if self._state == WAITING and self.is_server and self._overflow:
                # A client already in the backlog is connected as far as it knows: take it,
                # so the early bytes reach it (below) rather than vanish with the listener.
                self._try_accept()
            # Wake any thread blocked on our sockets; they see _closed and return EBADF.
            for s in (self._sock, self._listener):
                if s is not None:
                    try:
                        s.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass
            if self._timer >= 0:
                _linux.timerfd_arm(self._timer, 1e-9)
            if self.is_server:
                self._unlink_if_ours()
            if self._overflow and self._state == CONNECTED and self._sock is not None:
                # Notification no longer matters, so the kernel may take the rest beyond W
                # (it has room up to 4 W): usually no thread has to outlive close().
                try:
                    self._flush_overflow(bounded=False)
                except OSError:
                    self._overflow = bytearray()  # never resize: views may be alive
            if self._overflow and self._state == CONNECTED and self._sock is not None:
                self._handoff = True  # the pusher delivers the rest, then closes the socket
                self._start_pusher()
            if not self._calls:
                self._release_fds()
