"""The libvchan engine in pure Python: one :class:`Channel` per vchan end.

The package has the C library's shape: each module holds the steps of the same-named file of
``libvchan-socket/``, so a step is found in the same place in both (docs/DESIGN.md has the
table)::

    internal.py  internal.h  the constants, and _Channel: the fields and how they are guarded
    init.py      init.c      set-up: server, client, connect, accept, attach
    io.py        io.c        the data path: read, recv, write, send, data_ready, buffer_space
    notify.py    notify.c    lifetime, states, notification: wait, is_open, latch, arm, close
    pusher.py    pusher.c    the pusher thread
    util.py      util.c      tsz, fit and helpers

:class:`Channel` is composed of the modules' mixins (each a subclass of ``_Channel``).

Theory of operation (the long form is docs/DESIGN.md; the C library follows the same plan):

* A channel holds a non-blocking ``AF_UNIX`` stream socket and an epoll fd, the *select fd*.
  Only :meth:`Channel.wait` clears readiness. The socket is registered edge-triggered for
  ``EPOLLIN | EPOLLRDHUP``: after ``wait()`` nothing is reported until the kernel signals
  something new (no spinning), and the peer's reads (an ``EPOLLOUT``-keyed wake-up) never
  wake us unasked (SPEC §5: a select-driven message wakes its receiver once, its sender not).
* ``EPOLLOUT`` is added to the mask (``EPOLL_CTL_MOD``) only while a consumption request is
  *armed* or an event is *latched*. ``buffer_space()`` and a write that falls short call
  :meth:`Channel._arm` (Xen's ``VCHAN_NOTIFY_READ``, one-shot): the MOD queues the item at
  once (the socket is writable), ``epoll_wait(0)`` harvests that edge (latching if it also
  carried an event ``wait()`` has not seen), and only then does the caller measure or retry,
  so a consumption is either in what it returns or makes the fd readable. ``wait()`` ends the
  request when it harvests exactly ``EPOLLOUT``, and then takes ``EPOLLOUT`` out again.
* Latch: epoll drops a ready item whose events no longer hold, so a ``read()`` that drains
  the data which made the fd readable would make ``wait()`` block. ``consumed`` counts bytes
  taken from the kernel queue and ``wait()`` records ``seen = consumed + FIONREAD`` just
  before its harvest; a read that makes ``consumed > seen`` (and an accept or a refused
  untrusted peer outside ``wait()``) sets ``latched`` and MODs ``EPOLLOUT`` in, which keeps
  the item queued (the socket is writable: the *writable invariant* below) until ``wait()``,
  which does not block when latched. The common path: ``wait()`` is one ``FIONREAD`` and
  one ``epoll_wait(0)``; a read adds an integer add and compare; a write nothing.
* The kernel polls a Unix socket writable, and wakes us when the peer frees space, only while
  the send-buffer memory in use (``SIOCOUTQ``, U) is at most a quarter of ``SO_SNDBUF`` (W).
  Writes that need not wait therefore never push U above W (the writable invariant, which
  both a latched event and a requested consumption event rely on); a non-blocking
  ``write()`` takes at most the write ring; ``buffer_space()`` reports what
  fits below W (capped at the ring), and is a promise: bytes it promised that the kernel will
  not take right now go to a user-space *overflow* that a *pusher* thread delivers. The
  thread only exists while the overflow holds bytes (or a WAITING server holds early writes).
* Blocking calls wait with ``poll()`` on the socket itself, never on the select fd.
* A blocking ``recv(n)`` that has to wait drains the kernel queue into a *stash* (so poll
  sleeps rather than spins) and, should the peer go, leaves those bytes readable.
"""

from __future__ import annotations

from .init import Init
from .internal import CONNECTED, DISCONNECTED, WAITING, InBuf, OutBuf
from .io import IO
from .notify import Notify
from .pusher import Pusher
from .util import Util, fit, tsz

__all__ = [
    "CONNECTED", "DISCONNECTED", "WAITING", "Channel", "InBuf", "OutBuf", "fit", "tsz",
]


class Channel(Init, IO, Notify, Pusher, Util):
    """One end of a vchan. Methods raise :class:`OSError` (with an errno) on failure."""
