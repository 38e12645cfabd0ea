"""``vchan bench`` and ``vchan demo``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .errors import CliError


def _checkout() -> Path | None:
    """The source checkout this package runs from (an editable install, or ``src/`` on
    the path), or None for an installed package, which has no bench/."""
    root = Path(__file__).resolve().parents[3]
    if (root / "bench" / "__main__.py").is_file() and (root / "src" / "vchan").is_dir():
        return root
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    root = _checkout()
    if root is None:
        raise CliError(
            "vchan bench needs the source tree: the benchmarks (bench/) are not installed "
            "with the package; run it from a checkout (make bench, or vchan bench from an "
            "editable install)"
        )
    extra = [a for a in args.bench_args if a != "--"]
    return subprocess.call([sys.executable, "-m", "bench", *extra], cwd=root)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run

    return run(args.mib, args.pings, backend=args.backend)
