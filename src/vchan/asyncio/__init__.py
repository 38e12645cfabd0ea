"""asyncio streams over vchans: ``reader, writer = await vchan.asyncio.open_client(0, 111)``.

Everything is driven by the vchan's select fd on the event loop (``loop.add_reader``): no
thread per channel, no polling loop. The fd is edge-like (only ``wait()`` clears it, and it
does not stay readable while unread data waits), so each wake-up calls ``wait()`` and then
reads until nothing is left and writes until a write falls short; any later event (data
arrived, the peer left, or the peer consumed data after a write fell short, which is what
asks for that event) makes the fd readable again.

* :func:`open_client` connects with the asynchronous client init, so it honours
  cancellation, ``asyncio.timeout()`` and ``asyncio.wait_for()``.
* :func:`open_server` listens, and returns once a client has connected (cancel it to stop
  listening: the socket file is removed).
* :func:`start_server` is the callback form, like :func:`asyncio.start_unix_server`: each
  client gets its own ``(reader, writer)``; a fresh vchan server listens again as soon as one
  is taken, since a vchan serves exactly one client.
* :func:`connect` and :func:`listen` are the protocol/transport forms.

The reader is an :class:`asyncio.StreamReader`; the writer (:class:`VchanWriter`) has the
:class:`asyncio.StreamWriter` interface. ``write()`` puts into the vchan what fits at once
and queues the rest; ``drain()`` waits while more than the high-water mark (64 KiB by
default) is queued, the queue being moved into the vchan as far as it fits whenever the
vchan has room; it raises :class:`vchan.Disconnected` if the peer
left before taking queued bytes. The end of the stream (``read()`` returning ``b""``) comes
after every byte the peer wrote before it closed. A vchan has no half-close, so
``can_write_eof()`` is False.

The package's modules: ``transport`` (:class:`VchanTransport`, :func:`connect`,
:func:`listen`), ``streams`` (:class:`VchanWriter`, :func:`open_client`, :func:`open_server`),
``server`` (:class:`VchanServer`, :func:`start_server`); the names are imported from here.
"""

from __future__ import annotations

from vchan.asyncio.server import VchanServer, start_server
from vchan.asyncio.streams import VchanWriter, open_client, open_server
from vchan.asyncio.transport import DEFAULT_LIMIT as DEFAULT_LIMIT  # streams' default
from vchan.asyncio.transport import VchanTransport, connect, listen

__all__ = [
    "VchanServer",
    "VchanTransport",
    "VchanWriter",
    "connect",
    "listen",
    "open_client",
    "open_server",
    "start_server",
]
