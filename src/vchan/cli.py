"""The ``vchan`` command (also ``python -m vchan``): listen, connect, ls, demo.

``listen``/``connect`` copy standard input to the vchan and the vchan to standard output at
the same time, driven by ``poll()`` on the three descriptors (never blocking on one while
another could make progress). Errors are one line on stderr and exit status 1; usage errors
exit 2 (argparse); an interrupt exits 130.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import select
import signal
import stat
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

from . import _config, _linux
from .channel import State, Vchan, client, server
from .exceptions import (
    ConnectTimeout,
    Disconnected,
    PathInUse,
    ServerExists,
    SocketDirMissing,
    SocketPathTooLong,
    UntrustedPeer,
    VchanError,
)

PROG = "vchan"
#: Largest chunk moved per system call.
CHUNK = 65536
#: At most this much received data waits for standard output before we stop reading.
OUT_MAX = 4 * CHUNK
#: A write of at most PIPE_BUF bytes to a pipe that polls writable does not block.
PIPE_BUF = select.PIPE_BUF

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


class CliError(Exception):
    """A user-facing failure: printed as ``vchan: <message>``, exit status 1."""


# ---------------------------------------------------------------------------- arguments


def _domain(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid domain {text!r}: not a number") from None
    if not 0 <= value < _config.DOMAIN_LIMIT:
        raise argparse.ArgumentTypeError(
            f"invalid domain {text!r}: must be 0..{_config.DOMAIN_LIMIT - 1}"
        )
    return value


def _port(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: not a number") from None
    if not 0 <= value <= _config.PORT_MAX:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be 0..{_config.PORT_MAX}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: must be >= 0")
    return value


def _size(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: not a number") from None
    if not 0 <= value <= _config.RING_MIN_LIMIT:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: must be 0..{_config.RING_MIN_LIMIT}"
        )
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
        from ._engine import ENGINE
        from ._version import version

        print(f"{PROG} {version()} ({ENGINE} engine)")
        parser.exit()


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
    fmt = argparse.RawDescriptionHelpFormatter

    def wrap(text: str) -> str:
        return textwrap.fill(text, 88)

    listen = sub.add_parser(
        "listen",
        help="serve the client of DOMAIN on PORT and copy data both ways",
        description=wrap(
            "Listen for the client in domain DOMAIN on PORT (this side is domain "
            "$VCHAN_DOMAIN), wait for it, then copy standard input to the vchan "
            "and the vchan to standard output at the same time."
        ),
        epilog=EOF_HELP,
        formatter_class=fmt,
    )
    listen.add_argument("domain", metavar="DOMAIN", type=_domain, help="the client's domain")
    listen.add_argument("port", metavar="PORT", type=_port, help="the port")
    listen.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="give up if no client connects in time (default: wait forever)",
    )
    listen.add_argument(
        "--read-min",
        type=_size,
        default=65536,
        metavar="BYTES",
        help="minimum receive ring size (default 65536)",
    )
    listen.add_argument(
        "--write-min",
        type=_size,
        default=65536,
        metavar="BYTES",
        help="minimum send ring size (default 65536)",
    )
    _add_copy_options(listen)

    connect = sub.add_parser(
        "connect",
        help="connect to the server of DOMAIN on PORT and copy data both ways",
        description=wrap(
            "Connect to the server in domain DOMAIN on PORT (this side is domain "
            "$VCHAN_DOMAIN), waiting for it to appear, then copy standard input "
            "to the vchan and the vchan to standard output at the same time."
        ),
        epilog=EOF_HELP,
        formatter_class=fmt,
    )
    connect.add_argument("domain", metavar="DOMAIN", type=_domain, help="the server's domain")
    connect.add_argument("port", metavar="PORT", type=_port, help="the port")
    connect.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="give up if no server appears in time (default: wait forever)",
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
        "'bench' go to it (try 'vchan bench -- --help').",
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench")
    return parser


# ------------------------------------------------------------------------------- errors


def _describe(exc: BaseException, what: str = "") -> str:
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


def _die(message: str) -> NoReturn:
    raise CliError(message)


# ------------------------------------------------------------------------------ copying


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


@dataclass
class Pump:
    """The select-driven copy between (stdin, stdout) and a connected vchan."""

    vc: Vchan
    send: bool
    receive: bool
    on_eof: str
    stdin: int = 0
    stdout: int = 1

    def run(self) -> int:
        vc = self.vc
        vc.set_blocking(False)
        vfd = vc.fileno()
        inbuf = bytearray()
        outbuf = bytearray()
        in_eof = not self.send
        took_input = False
        peer_gone = False
        # Never block on stdout while the vchan or stdin could make progress: regular files
        # never block; anything else gets at most PIPE_BUF bytes per POLLOUT.
        out_chunk = CHUNK if _is_regular(self.stdout) else PIPE_BUF
        poller = select.poll()
        while True:
            # stdin -> vchan, as far as buffer_space() allows
            if inbuf and not peer_gone:
                try:
                    space = vc.buffer_space()
                    if space:
                        del inbuf[: vc.write(inbuf[:space])]
                except BlockingIOError:
                    pass
                except Disconnected:
                    peer_gone = True
            # vchan -> outbuf, while there is room for it
            if self.receive:
                while len(outbuf) < OUT_MAX and not peer_gone:
                    try:
                        data = vc.read(CHUNK)
                    except BlockingIOError:
                        break
                    if not data:
                        peer_gone = True
                        break
                    outbuf += data
            elif not peer_gone and vc.state == State.DISCONNECTED:
                peer_gone = True

            if peer_gone:
                self._flush(outbuf)
                if inbuf:
                    _die(
                        f"the peer closed the channel; {len(inbuf)} bytes of input were "
                        f"not delivered"
                    )
                if self.send and not self.receive and not in_eof:
                    _die("the peer closed the channel before the end of input")
                return 0
            if in_eof and not inbuf and self.send:
                if (
                    self.on_eof == "close"
                    or not self.receive
                    or (self.on_eof == "auto" and took_input)
                ):
                    vc.close()  # accepted bytes still reach the peer: it sees end of stream
                    self._flush(outbuf)
                    return 0

            want_in = not in_eof and len(inbuf) < CHUNK
            for fd in (vfd, self.stdin, self.stdout):
                try:
                    poller.unregister(fd)
                except KeyError:
                    pass
            poller.register(vfd, select.POLLIN)
            if want_in:
                poller.register(self.stdin, select.POLLIN)
            if outbuf:
                poller.register(self.stdout, select.POLLOUT)
            for fd, _events in poller.poll():
                if fd == vfd:
                    vc.wait()
                elif fd == self.stdin and want_in:
                    data = os.read(self.stdin, CHUNK)
                    if data:
                        inbuf += data
                        took_input = True
                    else:
                        in_eof = True
                elif fd == self.stdout and outbuf:
                    del outbuf[: os.write(self.stdout, outbuf[:out_chunk])]

    def _flush(self, outbuf: bytearray) -> None:
        """Write the rest of the received data (blocking is fine: nothing else to do)."""
        view = memoryview(outbuf)
        try:
            while view:
                view = view[os.write(self.stdout, view) :]
        finally:
            view.release()
        outbuf.clear()


def _wait_for_client(vc: Vchan, timeout: float | None, what: str) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    poller = select.poll()
    poller.register(vc.fileno(), select.POLLIN)
    while vc.state == State.WAITING:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            _die(f"no client connected within {timeout:g} s ({what})")
        if poller.poll(None if left is None else max(1, int(left * 1000))):
            if vc.state != State.WAITING:
                vc.wait()  # the "client connected" event
                return


def _cmd_copy(args: argparse.Namespace) -> int:
    local = _config.local_domain()
    send = not args.receive_only
    receive = not args.send_only
    if args.command == "listen":
        what = f"server domain {local}, client domain {args.domain}, port {args.port}"
        try:
            vc = server(args.domain, args.port, args.read_min, args.write_min, backend=args.backend)
        except (VchanError, OSError) as exc:
            _die(f"cannot listen: {_describe(exc, what)}")
        with vc:
            if args.verbose:
                print(f"{PROG}: listening ({what})", file=sys.stderr, flush=True)
            _wait_for_client(vc, args.timeout, what)
            if args.verbose:
                print(f"{PROG}: connected", file=sys.stderr, flush=True)
            return Pump(vc, send, receive, args.on_eof).run()
    what = f"server domain {args.domain}, client domain {local}, port {args.port}"
    if args.verbose:
        print(f"{PROG}: connecting ({what})", file=sys.stderr, flush=True)
    try:
        vc = client(args.domain, args.port, timeout=args.timeout, backend=args.backend)
    except ConnectTimeout:
        _die(f"no server appeared within {args.timeout:g} s ({what})")
    except (VchanError, OSError) as exc:
        _die(f"cannot connect: {_describe(exc, what)}")
    with vc:
        if args.verbose:
            print(f"{PROG}: connected", file=sys.stderr, flush=True)
        return Pump(vc, send, receive, args.on_eof).run()


# ------------------------------------------------------------------------------------ ls

_NAME = re.compile(r"vchan\.(\d+)\.(\d+)\.(\d+)\.sock")


@dataclass
class Entry:
    server_domain: int
    client_domain: int
    port: int
    owner: str
    uid: int
    state: str  # "listening", "stale" or "not-a-socket"
    path: str


def list_channels(directory: str) -> list[Entry]:
    """The channel files in ``directory``, sorted by server, client and port."""
    entries = []
    for name in os.listdir(directory):
        m = _NAME.fullmatch(name)
        if m is None:
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # went away meanwhile
        if not stat.S_ISSOCK(st.st_mode):
            state = "not-a-socket"
        elif _linux.listening_at(path) or _linux.listening_at(os.path.realpath(path)):
            state = "listening"
        else:
            state = "stale"
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        entries.append(Entry(int(m[1]), int(m[2]), int(m[3]), owner, st.st_uid, state, path))
    entries.sort(key=lambda e: (e.server_domain, e.client_domain, e.port))
    return entries


def _cmd_ls(args: argparse.Namespace) -> int:
    directory = args.dir or _config.socket_dir()
    try:
        entries = list_channels(directory)
    except FileNotFoundError:
        _die(f"socket directory {directory} does not exist")
    except NotADirectoryError:
        _die(f"{directory} is not a directory")
    except PermissionError:
        _die(f"cannot read the socket directory {directory}: permission denied")
    if args.json:
        print(
            json.dumps(
                [dict(asdict(e), listening=e.state == "listening") for e in entries], indent=2
            )
        )
        return 0
    if not entries:
        print(f"no channels in {directory}")
        return 0
    rows = [("SERVER", "CLIENT", "PORT", "OWNER", "STATE", "PATH")]
    rows += [
        (str(e.server_domain), str(e.client_domain), str(e.port), e.owner, e.state, e.path)
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    return 0


# ---------------------------------------------------------------------------------- main


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "__main__.py").is_file():
        raise CliError("vchan bench runs from a source checkout (bench/ not found)")
    extra = [a for a in args.bench_args if a != "--"]
    return subprocess.call([sys.executable, "-m", "bench", *extra], cwd=root)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args.mib, args.pings, backend=args.backend)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("listen", "connect"):
        # Leave like Ctrl-C on SIGTERM, so a listening server removes its socket file.
        signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command in ("listen", "connect"):
            return _cmd_copy(args)
        if args.command == "ls":
            return _cmd_ls(args)
        if args.command == "bench":
            return _cmd_bench(args)
        return _cmd_demo(args)
    except CliError as exc:
        _error(str(exc))
    except KeyboardInterrupt:
        return 130
    except _Terminated:
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        # Nothing more can be written to stdout; keep the interpreter's final flush quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        if args.command in ("listen", "connect"):
            _error("standard output closed before all data was written (broken pipe)")
    except (VchanError, OSError, ValueError) as exc:
        _error(_describe(exc))
    return 1


class _Terminated(BaseException):
    """SIGTERM arrived: unwind (closing the channel), then exit 143."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _error(message: str) -> None:
    try:
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass
