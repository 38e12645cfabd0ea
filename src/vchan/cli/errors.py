"""The command's failures: :class:`CliError` and one line for an exception of the library."""

from __future__ import annotations

from typing import NoReturn

from .. import _config
from ..exceptions import (
    PathInUse,
    ServerExists,
    SocketDirMissing,
    SocketPathTooLong,
    UntrustedPeer,
)


class CliError(Exception):
    """A user-facing failure: printed as ``vchan: <message>``, exit status 1."""


def describe(exc: BaseException, what: str = "") -> str:
    """One line for an exception the library raised."""
    where = f" ({what})" if what else ""
    if isinstance(exc, SocketDirMissing):
        return f"socket directory {_config.socket_dir()} does not exist (set VCHAN_SOCKET_DIR)"
    if isinstance(exc, ServerExists):
        return f"a server is already listening{where}"
    if isinstance(exc, PathInUse):
        return f"something that is not a vchan socket is in the way{where}: {_text(exc)}"
    if isinstance(exc, SocketPathTooLong):
        return f"socket path too long{where}: shorten VCHAN_SOCKET_DIR"
    if isinstance(exc, UntrustedPeer):
        return f"the peer runs as another user{where} (set VCHAN_ALLOW_ANY_UID=1 to allow it)"
    return _text(exc)


def _text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename:
            text += f": {exc.filename}"
        return text
    return str(exc) or type(exc).__name__


def die(message: str) -> NoReturn:
    raise CliError(message)
