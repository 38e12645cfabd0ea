"""Which build of the compiled engine ``vchan._speedups`` the tests use.

* ``VCHAN_TEST_SPEEDUPS=/path/_speedups.so``: that file is loaded as ``vchan._speedups``
  (speedups/run-sanitized-tests.sh points it at the ASan+UBSan build), here and in the
  reliability suite's peer processes;
* otherwise the in-place build of src/vchan (what ``pip install -e .`` leaves) is rebuilt
  with ``setup.py build_ext --inplace`` when one of its sources is newer, so a change to the
  C library or the extension is always what the suite runs. A failing build fails.

Either must happen before anything imports ``vchan`` (tests/conftest.py's pytest_configure).
No pytest here: peer processes import this module.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The compiled engine as `pip install -e .` (and build()) leave it, in place.
SO = REPO / "src" / "vchan" / f"_speedups{sysconfig.get_config_var('EXT_SUFFIX')}"
SOURCES = [
    REPO / "speedups" / "_speedups.c",
    REPO / "speedups" / "exports.map",
    REPO / "setup.py",
    REPO / "libvchan-socket" / "Makefile",  # its SRCS is what setup.py compiles
    *sorted((REPO / "libvchan-socket").glob("*.[ch]")),
]
ENV = "VCHAN_TEST_SPEEDUPS"


def preload() -> bool:
    """Load ``$VCHAN_TEST_SPEEDUPS`` as ``vchan._speedups`` if it is set; whether it is."""
    forced = os.environ.get(ENV)
    if not forced:
        return False
    if "vchan._speedups" not in sys.modules:
        loader = importlib.machinery.ExtensionFileLoader("vchan._speedups", forced)
        spec = importlib.util.spec_from_file_location("vchan._speedups", forced, loader=loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        sys.modules["vchan._speedups"] = module
    return True


def stale() -> bool:
    if not SO.exists():
        return True
    built = SO.stat().st_mtime
    return any(p.stat().st_mtime > built for p in SOURCES if p.exists())


def build() -> None:
    """Rebuild the in-place extension if it is missing or stale (RuntimeError if that fails)."""
    if not stale():
        return
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not SO.exists() or stale():
        raise RuntimeError(
            f"building vchan._speedups failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )


def prepare() -> None:
    """The test session's: the forced build, else an up-to-date in-place one."""
    if "vchan._speedups" in sys.modules:
        return
    if not preload():
        build()
