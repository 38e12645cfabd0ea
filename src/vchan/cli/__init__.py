"""The ``vchan`` command (also ``python -m vchan``): listen, connect, ls, bench, demo.

``listen``/``connect`` copy standard input to the vchan and the vchan to standard output at
the same time, driven by ``poll()`` on the three descriptors (never blocking on one while
another could make progress). Errors are one line on stderr and exit status 1; usage errors
exit 2 (argparse); an interrupt exits 130.

The modules: ``parser`` (:func:`build_parser`, from which ``make docs`` renders the man
page), ``pump`` (``listen``/``connect`` and the copy), ``ls``, ``tools`` (``bench``,
``demo``), ``errors``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from ..exceptions import VchanError
from .errors import CliError, describe
from .ls import Entry, cmd_ls, list_channels
from .parser import PROG, build_parser
from .pump import Pump, cmd_copy
from .tools import cmd_bench, cmd_demo

__all__ = ["PROG", "CliError", "Entry", "Pump", "build_parser", "list_channels", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("listen", "connect"):
        # Leave like Ctrl-C on SIGTERM, so a listening server removes its socket file.
        signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command in ("listen", "connect"):
            return cmd_copy(args)
        if args.command == "ls":
            return cmd_ls(args)
        if args.command == "bench":
            return cmd_bench(args)
        return cmd_demo(args)
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
        _error(describe(exc))
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
