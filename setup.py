"""Build of the optional compiled engine, ``vchan._speedups`` (the metadata, version
included, is in pyproject.toml).

The extension is ``speedups/_speedups.c`` plus the C library's own sources
(``libvchan-socket/*.c``), compiled with hidden visibility: it exports only its init
function. Where it cannot be built (no C compiler, no Python headers) the build warns
and goes on without it, and a wheel built so is pure Python (``py3-none-any``); vchan
then runs on its pure-Python engine. ``VCHAN_NO_SPEEDUPS=1`` skips it on purpose.
"""

from __future__ import annotations

import os
import re
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1 (pyproject.toml asks for more; setup.py run directly)
    bdist_wheel = None

HERE = os.path.dirname(os.path.abspath(__file__))


def _lib_sources() -> list[str]:
    """The C library's sources: its Makefile's SRCS, the one list of them."""
    with open(os.path.join(HERE, "libvchan-socket", "Makefile")) as f:
        found = re.search(r"^SRCS\s*:?=\s*(.+)$", f.read(), re.M)
    if found is None:
        raise RuntimeError("libvchan-socket/Makefile has no SRCS line")
    return found.group(1).split()


LIB_SOURCES = _lib_sources()

speedups = Extension(
    "vchan._speedups",
    sources=["speedups/_speedups.c", *(f"libvchan-socket/{s}" for s in LIB_SOURCES)],
    depends=["libvchan-socket/internal.h", "libvchan-socket/libvchan.h"],
    include_dirs=["libvchan-socket"],
    # VCHAN_API empty: the library's API functions are not exported from the extension.
    define_macros=[("_GNU_SOURCE", None), ("VCHAN_API", "")],
    extra_compile_args=["-std=gnu11", "-pthread", "-fvisibility=hidden", "-Wall", "-Wextra"],
    extra_link_args=[
        "-pthread",
        f"-Wl,--version-script={os.path.join(HERE, 'speedups', 'exports.map')}",
    ],
)


def _built(dist: object) -> bool:
    return bool(getattr(dist, "vchan_speedups_built", False))


class optional_build_ext(build_ext):
    """build_ext that warns and goes on (pure Python) when the extension cannot be built."""

    def run(self) -> None:
        self.distribution.vchan_speedups_built = False  # type: ignore[attr-defined]
        if os.environ.get("VCHAN_NO_SPEEDUPS", "") not in ("", "0"):
            self._skip("VCHAN_NO_SPEEDUPS is set")
            return
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure to build means "go without"
            self._skip(f"{type(exc).__name__}: {exc}")
            return
        self.distribution.vchan_speedups_built = True  # type: ignore[attr-defined]

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception:
            # Nothing half-built may be left where an import would find it.
            for path in (self.get_ext_fullpath(ext.name),):
                if os.path.exists(path):
                    os.unlink(path)
            raise

    def _skip(self, why: str) -> None:
        self.extensions = []
        print(
            f"WARNING: vchan._speedups (the compiled engine) not built ({why}); "
            "vchan will use its pure-Python engine",
            file=sys.stderr,
        )


cmdclass: dict[str, type] = {"build_ext": optional_build_ext}

if bdist_wheel is not None:

    class wheel_pure_without_speedups(bdist_wheel):
        """A wheel whose extension could not be built is a pure one (py3-none-any)."""

        def run(self) -> None:
            if not self.skip_build:
                self.run_command("build")
                if not _built(self.distribution):
                    self.root_is_pure = True
            super().run()

    cmdclass["bdist_wheel"] = wheel_pure_without_speedups

setup(ext_modules=[speedups], cmdclass=cmdclass)
