"""The one exception hierarchy of the Pythonic API.

Every error the library raises on its own account is a :class:`VchanError`, and also an
instance of the standard exception a Python programmer would catch for it::

    VchanError
    ├── InvalidArgument (ValueError)          bad domain, port, VCHAN_DOMAIN, ring size,
    │   └── MessageTooLong                    recv()/send() larger than the ring
    ├── SocketPathTooLong (ValueError)        the socket path does not fit in sun_path
    ├── SocketDirMissing (FileNotFoundError)  $VCHAN_SOCKET_DIR does not exist
    ├── PathInUse (FileExistsError)           a symlink or non-socket file holds the path
    ├── ServerExists (OSError, EADDRINUSE)    a live server already listens on the path
    ├── UntrustedPeer (PermissionError)       the server runs as another (non-root) uid
    ├── Disconnected (ConnectionError)        the peer closed or died
    └── ConnectTimeout (TimeoutError)         client(timeout=...) ran out

Two standard exceptions are used as they are, like the file and socket objects do:
:class:`ValueError` for any use of a closed channel, and :class:`BlockingIOError` when a
non-blocking call cannot do its work now.
"""

from __future__ import annotations

import errno
import os


class VchanError(Exception):
    """Base class of every exception the library raises on its own account."""


class InvalidArgument(VchanError, ValueError):
    """An argument or setting is out of range or of the wrong type (EINVAL)."""


class MessageTooLong(InvalidArgument):
    """A blocking recv()/send() asked for more than the ring can ever hold (EMSGSIZE)."""


class SocketPathTooLong(VchanError, ValueError):
    """The socket path would not fit in ``sun_path`` (ENAMETOOLONG)."""


class SocketDirMissing(VchanError, FileNotFoundError):
    """``$VCHAN_SOCKET_DIR`` (or a component of it) does not exist (ENOENT)."""


class PathInUse(VchanError, FileExistsError):
    """A symlink or a file that is not a socket sits at the socket path (EEXIST)."""


class ServerExists(VchanError, OSError):
    """A live server already listens on this domain and port (EADDRINUSE)."""


class UntrustedPeer(VchanError, PermissionError):
    """The peer runs as a uid that is neither ours nor root (EACCES)."""


class Disconnected(VchanError, ConnectionError):
    """The peer closed the channel or died (EPIPE)."""


class ConnectTimeout(VchanError, TimeoutError):
    """No server appeared within the client's timeout (ETIMEDOUT)."""


_BY_ERRNO: dict[int, type[OSError] | type[VchanError]] = {
    errno.EINVAL: InvalidArgument,
    errno.EMSGSIZE: MessageTooLong,
    errno.ENAMETOOLONG: SocketPathTooLong,
    errno.ENOENT: SocketDirMissing,
    errno.ENOTDIR: SocketDirMissing,
    errno.EEXIST: PathInUse,
    errno.EADDRINUSE: ServerExists,
    errno.EACCES: UntrustedPeer,
    errno.EPIPE: Disconnected,
    errno.ECONNRESET: Disconnected,
    errno.ETIMEDOUT: ConnectTimeout,
}


def translate(code: int, message: str | None = None) -> Exception:
    """The Pythonic exception for a failure reported as an errno value."""
    text = message or os.strerror(code)
    if code == errno.EBADF:
        return ValueError("I/O operation on closed vchan")
    cls = _BY_ERRNO.get(code)
    if cls is None:
        return OSError(code, text)
    if issubclass(cls, OSError):
        return cls(code, text)
    return cls(text)


def from_oserror(exc: OSError) -> Exception:
    if isinstance(exc, VchanError):
        return exc
    if exc.errno is None:
        return exc
    return translate(exc.errno, exc.strerror)
