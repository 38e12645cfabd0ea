"""vchan for Python: Qubes' libvchan API over Unix sockets.

Pythonic API: :func:`server`, :func:`client` and :class:`Vchan`; the C-shaped API is in
:mod:`vchan.libvchan`. See README.md for a tour.

:data:`ENGINE` names the engine of this process: ``"speedups"`` (the compiled extension,
built from the C library's sources) or ``"python"`` (pure Python: no compiler was available,
or ``VCHAN_PURE_PYTHON=1`` asked for it).
"""

from ._engine import ENGINE
from .channel import State, Vchan, client, server
from .exceptions import (
    ConnectTimeout,
    Disconnected,
    InvalidArgument,
    MessageTooLong,
    PathInUse,
    ServerExists,
    SocketDirMissing,
    SocketPathTooLong,
    UntrustedPeer,
    VchanError,
)

#: The release version (see :mod:`vchan._version`), computed on first use.
__version__: str


def __getattr__(name: str) -> object:
    """``vchan.asyncio`` and ``vchan.anyio`` are imported on first use (``import
    vchan.asyncio`` also works; ``vchan.anyio`` needs the ``anyio`` extra), and
    ``__version__`` is read on first use."""
    if name == "__version__":
        from ._version import version

        return version()
    if name in ("asyncio", "anyio"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ENGINE",
    "ConnectTimeout",
    "Disconnected",
    "InvalidArgument",
    "MessageTooLong",
    "PathInUse",
    "ServerExists",
    "SocketDirMissing",
    "SocketPathTooLong",
    "State",
    "UntrustedPeer",
    "Vchan",
    "VchanError",
    "__version__",
    "client",
    "server",
]
