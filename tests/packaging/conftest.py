"""Fixtures of the packaging tests (issue 11): `make test-packages` runs them, `make test`
does not collect them (tests/conftest.py), and run by path without VCHAN_TEST_PACKAGES=1
they are skipped.

Each builder is a session fixture that runs the Makefile target a user would (`make dist`,
`make deb`, `make rpm`) with its outputs in a temporary directory, so the working tree gets
no build products beyond git-ignored ones.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.c.conftest import CC, WARN, run
from tests.conftest import PACKAGING, REPO

#: Deadline of one packaging test, its fixtures' builds included (seconds).
PACKAGING_TIMEOUT = 300

RELEASE = (REPO / "version").read_text(encoding="utf-8").strip()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here not in Path(str(item.path)).parents:
            continue
        item.add_marker(pytest.mark.timeout(PACKAGING_TIMEOUT))
        if not PACKAGING:
            item.add_marker(
                pytest.mark.skip(reason="packaging tests: run them with `make test-packages`")
            )


def need(*tools: str) -> None:
    """Fail (not skip: `make test-packages` installs them) if a tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: `make test-packages` installs them")


def make(target: str, *args: str, timeout: float = PACKAGING_TIMEOUT) -> str:
    return run(["make", "-C", REPO, target, *args], timeout=timeout)


def env_without(*names: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


def listing(paths: Sequence[str]) -> str:
    return "\n".join(sorted(paths))


#: A program as a Qubes component writes it: ``#include <libvchan.h>``, compiled with
#: ``$(pkg-config --cflags --libs vchan)``. It opens a server (state VCHAN_WAITING until a
#: client comes), closes it, and prints "waiting".
VCHAN_PC_PROBE = r"""
#include <stdio.h>
#include <libvchan.h>

int main(void) {
    libvchan_t *srv = libvchan_server_init(0, 9, 0, 0);
    if (srv == NULL) {
        perror("libvchan_server_init");
        return 1;
    }
    int state = libvchan_is_open(srv);
    libvchan_close(srv);
    if (state != VCHAN_WAITING) {
        fprintf(stderr, "state %d after libvchan_server_init\n", state);
        return 1;
    }
    puts("waiting");
    return 0;
}
"""


def build_with_vchan_pc(outdir: Path, env: dict[str, str]) -> tuple[list[str], Path]:
    """`pkg-config --cflags --libs vchan`, and VCHAN_PC_PROBE built with them."""
    need("pkg-config", CC)
    flags = run(["pkg-config", "--cflags", "--libs", "vchan"], env=env).split()
    src = outdir / "vchan_pc_probe.c"
    src.write_text(VCHAN_PC_PROBE)
    exe = outdir / "vchan_pc_probe"
    run([CC, *WARN, "-O2", "-o", exe, src, *flags], env=env)
    return flags, exe


def linked(exe: Path, soname: str, env: dict[str, str] | None = None) -> Path:
    """The file the dynamic linker loads for ``soname`` in ``exe``, links resolved."""
    for line in run(["ldd", exe], env=env).splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name == soname:
            return Path(rest.split(" (")[0]).resolve()
    raise AssertionError(f"{exe} does not load {soname}")


@pytest.fixture(scope="session")
def pkgout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PKGOUT of `make deb` and `make rpm`."""
    return tmp_path_factory.mktemp("pkgout")


@pytest.fixture(scope="session")
def debs(pkgout: Path) -> Path:
    """`make deb`: the directory of the .deb and .changes files."""
    need("dpkg-buildpackage", "dh")
    make("deb", f"PKGOUT={pkgout}")
    return pkgout / "deb"


@pytest.fixture(scope="session")
def rpms(pkgout: Path) -> Path:
    """`make rpm`: the rpmbuild top directory (RPMS/, SRPMS/)."""
    need("rpmbuild")
    make("rpm", f"PKGOUT={pkgout}")
    return pkgout / "rpm"


@pytest.fixture(scope="session")
def pydist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make dist`: the directory with the sdist and the wheels."""
    out = tmp_path_factory.mktemp("dist")
    make("dist", f"DISTDIR={out}")
    return out
