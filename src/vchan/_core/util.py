"""Small helpers, like ``libvchan-socket/util.c``: truesize bounds, errors, peer trust, poll.

The environment and path helpers of util.c (local domain, socket path, VCHAN_ALLOW_ANY_UID)
live in :mod:`vchan._config`, which the cffi back end shares; the Linux system-call
wrappers in :mod:`vchan._linux`.
"""

from __future__ import annotations

import errno
import os
import select
import socket

from .. import _linux
from .internal import _POLL_GONE, FIT_SHIFT, TSZ_BASE, TSZ_SHIFT, TSZ_STEP, _Channel


def tsz(n: int) -> int:
    """Upper bound of the send-buffer memory (skb truesize) one write of ``n`` bytes costs."""
    return n + TSZ_BASE + TSZ_STEP * (n >> TSZ_SHIFT)


def fit(room: int) -> int:
    """Largest payload ``n`` with ``tsz(n) <= room``."""
    room -= TSZ_BASE
    return max(0, room - (room >> FIT_SHIFT))


def _oserror(code: int, message: str | None = None) -> OSError:
    return OSError(code, message or os.strerror(code))


class Util(_Channel):
    """The helpers that need the channel (util.c: peer_trusted, poll1, poll_now)."""

    def _trusted(self, sock: socket.socket) -> bool:
        if self._allow_any:
            return True
        uid = _linux.peer_uid(sock)
        return uid == 0 or uid == os.geteuid()

    def _poll(self, fd: int, events: int, timeout: float | None = None) -> int:
        """Wait on one fd outside the lock; EBADF if the channel was closed meanwhile."""
        p = select.poll()
        p.register(fd, events)
        ready = p.poll(None if timeout is None else timeout * 1000)
        if self._closed:
            raise _oserror(errno.EBADF, "vchan closed while waiting")
        return ready[0][1] if ready else 0

    def _plain_poll(self, fd: int, events: int) -> int:
        p = select.poll()
        p.register(fd, events)
        ready = p.poll()
        return ready[0][1] if ready else 0

    def _peer_gone(self) -> bool:
        sock = self._sock
        if sock is None:
            return False
        p = select.poll()
        p.register(sock.fileno(), _POLL_GONE)
        return bool(p.poll(0))
