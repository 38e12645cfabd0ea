"""The libvchan engine in pure Python: one :class:`Channel` per vchan end.

The package has the C library's shape: each module holds the steps of the same-named file of
``libvchan-socket/``, so a step is found in the same place in both::

    internal.py  internal.h  the shared constants, and _Channel: the fields and their guards
    handle.py    handle.c    the handle's lifetime: calls in progress, close, release, fork
    init.py      init.c      set-up: server, client, connect, accept, attach
    io.py        io.c        the data path: read, recv, write, send, data_ready, buffer_space
    notify.py    notify.c    states, notification: wait, is_open, latch, arm
    pusher.py    pusher.c    the pusher thread
    util.py      util.c      tsz, fit and helpers

:class:`Channel` is composed of the modules' mixins (each a subclass of ``_Channel``).

How it works, for both engines, is docs/DESIGN.md ("Theory of operation"): one connected
``AF_UNIX`` stream socket and an epoll fd (the select fd) per channel, notification by an
edge-triggered registration with a latch and a consumption request, and the writable
invariant that makes ``buffer_space()`` a promise. The comments name its terms.
"""

from __future__ import annotations

from .handle import Handle
from .init import Init
from .internal import CONNECTED, DISCONNECTED, WAITING, InBuf, OutBuf
from .io import IO
from .notify import Notify
from .pusher import Pusher
from .util import Util, fit, tsz

__all__ = [
    "CONNECTED",
    "DISCONNECTED",
    "WAITING",
    "Channel",
    "InBuf",
    "OutBuf",
    "fit",
    "tsz",
]


class Channel(Handle, Init, IO, Notify, Pusher, Util):
    """One end of a vchan. Methods raise :class:`OSError` (with an errno) on failure."""
