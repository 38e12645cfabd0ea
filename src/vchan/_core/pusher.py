"""The pusher, like ``libvchan-socket/pusher.c``: the helper thread that delivers overflow
bytes with no call from the writer.

It exists only while the overflow holds bytes (or a WAITING server holds early writes), and
counts in ``_calls``, so after close() it keeps the connection open until the bytes are
delivered or the peer is gone.
"""

from __future__ import annotations

import select
import threading

from .internal import (
    DISCONNECTED,
    _Channel,
)


class Pusher(_Channel):
    """The pusher thread (pusher.c)."""

    def _start_pusher(self) -> None:
        if self._pusher is None:
            self._calls.append(None)
            self._pusher = threading.Thread(
                target=self._pusher_main, name="vchan-pusher", daemon=True
            )
            self._pusher.start()

    def _pusher_main(self) -> None:
        # Waiting for POLLOUT would spin: right after a bounded push the socket is writable
        # (U <= W) yet fit(W - U) is 0. A private edge-triggered epoll wakes only when the
        # peer really consumed something (or hung up).
        pep: select.epoll | None = None
        try:
            while True:
                with self._lock:
                    if (
                        not self._overflow
                        or self._state == DISCONNECTED
                        or (self._closed and not self._handoff)
                        or self._inherited
                    ):
                        return
                    # Both stay open while we are busy (see _stop_listening).
                    listener, sock = self._listener, self._sock
                if sock is None:
                    if listener is None:
                        return
                    self._plain_poll(listener.fileno(), select.POLLIN)
                    with self._lock:
                        if not self._closed:
                            self._try_accept()
                    continue
                if pep is None:
                    pep = select.epoll()
                    # Reports at once if writable now, else at the next consumption.
                    pep.register(sock.fileno(), select.EPOLLOUT | select.EPOLLET)
                events = pep.poll()
                revents = events[0][1] if events else 0
                with self._lock:
                    if revents & (select.EPOLLHUP | select.EPOLLERR):
                        self._gone()
                        return
                    try:
                        self._flush_overflow(bounded=True)
                    except OSError:
                        return
        finally:
            if pep is not None:
                pep.close()
            with self._lock:
                self._pusher = None
                self._calls.pop()
                self._idle_cleanup()
