"""Fixtures of the C library's own tests: the builds, and a compiler for test programs."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBDIR = REPO / "libvchan-socket"
BUILD = LIBDIR / "build"
ASAN_BUILD = LIBDIR / "build-asan"
HERE = Path(__file__).resolve().parent
CC = os.environ.get("CC", "gcc")
WARN = ["-Wall", "-Wextra", "-Werror"]
SAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]


def run(cmd: Sequence[str | os.PathLike[str]], timeout: float = 300, **kw) -> str:
    """Run a command; fail the test with its output if it fails. Returns stdout."""
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc.stdout


@pytest.fixture(scope="session")
def clib() -> Path:
    """``make -C libvchan-socket`` once per session; the build directory."""
    run(["make", "-C", LIBDIR])
    assert (BUILD / "libvchan-socket.so").exists()
    return BUILD


@pytest.fixture(scope="session")
def asan_clib() -> Path:
    """``make -C libvchan-socket sanitize`` once per session; the ASan build directory."""
    run(["make", "-C", LIBDIR, "sanitize"])
    assert (ASAN_BUILD / "libvchan-socket.so").exists()
    return ASAN_BUILD


@pytest.fixture(scope="session")
def bindir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the test programs are compiled."""
    return tmp_path_factory.mktemp("cbin")


def compile_c(src: Path, out: Path, libdir: Path, *extra: str, include: Path = LIBDIR) -> Path:
    """Compile a test program against the library in ``libdir`` (found there at run time)."""
    if shutil.which(CC) is None:
        pytest.skip(f"no C compiler ({CC})")
    run(
        [
            CC,
            *WARN,
            "-O1",
            "-g",
            "-pthread",
            *extra,
            f"-I{include}",
            "-o",
            out,
            src,
            f"-L{libdir}",
            "-lvchan-socket",
            f"-Wl,-rpath,{libdir}",
        ]
    )
    return out
