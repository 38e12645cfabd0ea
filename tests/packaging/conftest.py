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

from tests.c.conftest import run
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
    """`make dist`: the directory with the sdist and the wheel."""
    out = tmp_path_factory.mktemp("dist")
    make("dist", f"DISTDIR={out}")
    return out
