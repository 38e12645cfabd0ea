"""Addressing and sizing rules shared by every part of the package (SPEC §1, §6)."""

from __future__ import annotations

import errno
import os

# The constants the C library has as VCHAN__<NAME> in libvchan-socket/internal.h are
# written there and here under the same name; tests/test_mirror.py checks they agree.

#: Xen's DOMID_FIRST_RESERVED: valid domains are 0 <= domain < DOMAIN_LIMIT.
DOMAIN_LIMIT = 32752
#: Largest port a C ``int`` can hold.
PORT_MAX = 2**31 - 1
#: Where the sockets are when ``$VCHAN_SOCKET_DIR`` is unset or empty.
SOCKET_DIR = "/var/run/vchan"
#: ``sizeof(sun_path)`` is 108; one byte is the terminating NUL.
PATH_MAX = 107
#: Ring minimums above this make server init fail, as on Xen.
RING_MIN_LIMIT = 1 << 20
#: The client cannot learn the server's sizes (no handshake on the wire): qrexec's size.
CLIENT_RING = 65536
#: Environment variable that lets peers of any uid in (SPEC §7).
ALLOW_ANY_UID_ENV = "VCHAN_ALLOW_ANY_UID"


def _err(code: int, message: str) -> OSError:
    return OSError(code, message)


def check_domain(domain: object, what: str = "domain") -> int:
    if not isinstance(domain, int) or isinstance(domain, bool):
        raise _err(errno.EINVAL, f"{what} must be an int, not {type(domain).__name__}")
    if not 0 <= domain < DOMAIN_LIMIT:
        raise _err(errno.EINVAL, f"{what} {domain} out of range 0..{DOMAIN_LIMIT - 1}")
    return domain


def check_port(port: object) -> int:
    if not isinstance(port, int) or isinstance(port, bool):
        raise _err(errno.EINVAL, f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= PORT_MAX:
        raise _err(errno.EINVAL, f"port {port} out of range 0..{PORT_MAX}")
    return port


def local_domain() -> int:
    """The domain number of this process: ``$VCHAN_DOMAIN``, strictly parsed, default 0."""
    raw = os.environ.get("VCHAN_DOMAIN")
    if raw is None:
        return 0
    if not raw or not raw.isascii() or not raw.isdigit():
        raise _err(errno.EINVAL, f"VCHAN_DOMAIN={raw!r} is not a decimal domain number")
    return check_domain(int(raw), "VCHAN_DOMAIN")


def socket_dir() -> str:
    return os.environ.get("VCHAN_SOCKET_DIR") or SOCKET_DIR


def socket_path(server_domain: int, client_domain: int, port: int) -> str:
    path = os.path.join(socket_dir(), f"vchan.{server_domain}.{client_domain}.{port}.sock")
    if len(os.fsencode(path)) > PATH_MAX:
        raise _err(errno.ENAMETOOLONG, f"socket path too long for sun_path: {path}")
    return path


def allow_any_uid() -> bool:
    return os.environ.get(ALLOW_ANY_UID_ENV, "") not in ("", "0")


def _pow2_at_least(n: int) -> int:
    size = 4096
    while size < n:
        size <<= 1
    return size


def server_rings(read_min: object, write_min: object) -> tuple[int, int]:
    """Xen's ring sizing (SPEC §6): returns (read_ring, write_ring) of the server."""
    for name, value in (("read_min", read_min), ("write_min", write_min)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _err(errno.EINVAL, f"{name} must be an int, not {type(value).__name__}")
        if value < 0:
            raise _err(errno.EINVAL, f"{name} must not be negative")
        if value > RING_MIN_LIMIT:
            raise _err(errno.EINVAL, f"{name} {value} exceeds the limit of {RING_MIN_LIMIT}")
    assert isinstance(read_min, int) and isinstance(write_min, int)
    if read_min <= 1024 and write_min <= 2048:
        return 1024, 2048
    if read_min <= 2048 and write_min <= 1024:
        return 2048, 1024
    read_ring = _pow2_at_least(read_min)
    write_ring = _pow2_at_least(write_min)
    if read_min <= 2048:
        read_ring = 2048
    elif write_min <= 2048:
        write_ring = 2048
    return read_ring, write_ring


def server_path(domain: object, port: object, read_min: object, write_min: object) -> str:
    """Check a server's arguments as every engine does (OSError EINVAL or ENAMETOOLONG
    naming the problem) and return its socket path (the compiled engine's pre-flight)."""
    check_domain(domain)
    check_port(port)
    server_rings(read_min, write_min)
    assert isinstance(domain, int) and isinstance(port, int)
    return socket_path(local_domain(), domain, port)


def client_path(domain: object, port: object) -> str:
    """Check a client's arguments and return the path of the server's socket."""
    check_domain(domain)
    check_port(port)
    assert isinstance(domain, int) and isinstance(port, int)
    return socket_path(domain, local_domain(), port)
