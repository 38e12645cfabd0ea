"""The ``vchan`` command's argument parser (``make docs`` renders the man page from it).

The values are checked where the library checks them (:mod:`vchan._config`); the parser only
turns a refusal into argparse's usage error (exit status 2) that names the accepted range.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from .. import _config

PROG = "vchan"

EOF_HELP = """\
end of input (a vchan has no half-close, so the peer cannot be told "no more input" and
still send): with --on-eof=auto (the default), when standard input ends after carrying data,
the rest of it is delivered and the channel is closed: the peer reads everything, then the
end of the stream (so `tar c . | vchan connect 0 7` ends the peer's `vchan listen 1 7 | tar x`).
An empty standard input (</dev/null) is taken as "this side only receives": the command
keeps copying the vchan to standard output until the peer closes. --on-eof=close closes
even after an empty input; --on-eof=wait never closes because of the end of input (use it
to send a request and read the whole reply).

exit status: 0 at a clean end of stream (the peer closed and everything received was
written out, or our input ended and was delivered); 1 with a one-line message on error
(including a peer that left before taking input we had read, and a closed standard output);
2 for usage errors; 130 on interrupt (SIGINT), 143 on SIGTERM."""


def _number(kind: str, check: Callable[[int], Any], limits: str, base: int = 10) -> Any:
    """An argparse type: an integer (in ``base``) that ``check`` (from :mod:`vchan._config`)
    accepts; a refusal is ``invalid KIND 'TEXT': must be LIMITS``."""

    def parse(text: str) -> int:
        try:
            value = int(text, base)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind} {text!r}: not a number") from None
        try:
            check(value)
        except OSError:
            raise argparse.ArgumentTypeError(f"invalid {kind} {text!r}: must be {limits}") from None
        return value

    parse.__name__ = kind
    return parse


_domain = _number("domain", _config.check_domain, f"0..{_config.DOMAIN_LIMIT - 1}")
_port = _number("port", _config.check_port, f"0..{_config.PORT_MAX}")
# A ring minimum as server_init takes it (a base prefix such as 0x is allowed).
_size = _number(
    "size", lambda n: _config.server_rings(n, 0), f"0..{_config.RING_MIN_LIMIT}", base=0
)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: must be >= 0")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must be >= 1")
    return value


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        metavar="NAME",
        help="an engine ('speedups', 'python') or a libvchan shared library: a path, a "
        "library name, or NAME for libvchan-NAME.so (default: $VCHAN_BACKEND, else the engine "
        "of vchan --version)",
    )


def _add_copy_options(p: argparse.ArgumentParser) -> None:
    way = p.add_mutually_exclusive_group()
    way.add_argument(
        "-s",
        "--send-only",
        action="store_true",
        help="only copy standard input to the vchan; close at the end of input",
    )
    way.add_argument(
        "-r",
        "--receive-only",
        action="store_true",
        help="only copy the vchan to standard output (standard input is not read)",
    )
    p.add_argument(
        "--on-eof",
        choices=("auto", "close", "wait"),
        default="auto",
        help="what the end of standard input does in two-way mode (see below)",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="report listening and connection on stderr"
    )
    _add_backend(p)


class _VersionAction(argparse.Action):
    """``--version``: like argparse's own, but the version is looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="show the version and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from .._engine import ENGINE
        from .._version import version

        print(f"{PROG} {version()} ({ENGINE} engine)")
        parser.exit()


def _add_copy_command(
    sub: Any, name: str, *, help: str, description: str, peer: str, timeout_help: str
) -> argparse.ArgumentParser:
    """``listen`` or ``connect``: the peer's DOMAIN, PORT and --timeout (the caller adds its
    own options, then the copy options)."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=textwrap.fill(description, 88),
        epilog=EOF_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("domain", metavar="DOMAIN", type=_domain, help=f"the {peer}'s domain")
    p.add_argument("port", metavar="PORT", type=_port, help="the port")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help=timeout_help)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Qubes' libvchan over Unix sockets: pipe data through a vchan, list "
        "channels, run the demo.",
        epilog="environment: VCHAN_SOCKET_DIR (socket directory, default /var/run/vchan), "
        "VCHAN_DOMAIN (this side's domain, default 0), VCHAN_BACKEND, "
        "VCHAN_PURE_PYTHON=1 (the pure-Python engine), "
        "VCHAN_ALLOW_ANY_UID=1 (accept peers of any uid).",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listen = _add_copy_command(
        sub,
        "listen",
        help="serve the client of DOMAIN on PORT and copy data both ways",
        description="Listen for the client in domain DOMAIN on PORT (this side is domain "
        "$VCHAN_DOMAIN), wait for it, then copy standard input to the vchan "
        "and the vchan to standard output at the same time.",
        peer="client",
        timeout_help="give up if no client connects in time (default: wait forever)",
    )
    for ring, what in (("read", "receive"), ("write", "send")):
        listen.add_argument(
            f"--{ring}-min",
            type=_size,
            default=65536,
            metavar="BYTES",
            help=f"minimum {what} ring size (default 65536)",
        )
    _add_copy_options(listen)

    connect = _add_copy_command(
        sub,
        "connect",
        help="connect to the server of DOMAIN on PORT and copy data both ways",
        description="Connect to the server in domain DOMAIN on PORT (this side is domain "
        "$VCHAN_DOMAIN), waiting for it to appear, then copy standard input "
        "to the vchan and the vchan to standard output at the same time.",
        peer="server",
        timeout_help="give up if no server appears in time (default: wait forever)",
    )
    _add_copy_options(connect)

    ls = sub.add_parser(
        "ls",
        help="list the channels in the socket directory",
        description="List the vchan socket files (vchan.SERVER.CLIENT.PORT.sock) in the "
        "socket directory: server domain, client domain, port, owner, and whether "
        "a server is listening or the file is stale (its server is gone).",
    )
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.add_argument(
        "--dir",
        metavar="DIR",
        help="the socket directory (default: $VCHAN_SOCKET_DIR or /var/run/vchan)",
    )

    demo = sub.add_parser(
        "demo",
        help="a server and a client in two processes exchange verified data",
        description="Start a server (this process) and a client (a child process, as domain "
        "1) in a private socket directory; stream verified data both ways with a "
        "progress bar, run a ping-pong, and print throughput and latency.",
    )
    demo.add_argument(
        "--mib", type=_positive, default=128, help="stream size in MiB, each way (default 128)"
    )
    demo.add_argument(
        "--pings", type=_positive, default=2000, help="ping-pong round trips (default 2000)"
    )
    _add_backend(demo)

    bench = sub.add_parser(
        "bench",
        help="run the benchmarks (needs a source checkout)",
        description="Run bench/ from the source checkout this package was installed from: "
        "raw socket vs the C library vs pure Python, with ratios. Arguments after "
        "'bench' go to it (try 'vchan bench -- --help'). An installed package has no "
        "bench/: then it says so and exits 1.",
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench")
    return parser
