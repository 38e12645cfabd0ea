"""The constants every layer shares: channel states and buffer types.

Importing this module has no side effects (no engine is loaded, no at-fork hook registered),
so the layers above the engines (:mod:`vchan.channel`, :mod:`vchan._backend`,
:mod:`vchan.asyncio`, :mod:`vchan.libvchan`) and a C backend use it without loading the
pure-Python engine :mod:`vchan._core`, which re-exports these names.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CONNECTED", "DISCONNECTED", "WAITING", "InBuf", "OutBuf"]

#: The states of libvchan_is_open(), the values of the C constants ``VCHAN_*``.
DISCONNECTED: Final = 0
CONNECTED: Final = 1
WAITING: Final = 2

#: What the data calls take: any contiguous byte buffer (bytes pass through uncopied).
InBuf = bytes | bytearray | memoryview
#: What the reads fill.
OutBuf = bytearray | memoryview
