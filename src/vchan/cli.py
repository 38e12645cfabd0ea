"""The ``vchan`` command."""

from __future__ import annotations

import argparse

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vchan", description="vchan over Unix sockets")
    parser.add_argument("--version", action="version", version=f"vchan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a server and a client exchanging verified data")
    demo.add_argument("--mib", type=int, default=64, help="stream size in MiB (default 64)")
    demo.add_argument("--pings", type=int, default=2000, help="ping-pong round trips")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        return run(args.mib, args.pings)
    return 2
