"""The release version lives in ./version; everything that states it agrees (issue 11)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

import vchan
from tests.conftest import REPO

RELEASE = (REPO / "version").read_text(encoding="utf-8").strip()


def test_version_file_is_one_plain_version() -> None:
    assert (REPO / "version").read_text(encoding="utf-8") == RELEASE + "\n"
    # valid for PEP 440, Debian and RPM alike: no hyphen, no epoch, no local part
    assert re.fullmatch(r"\d+\.\d+\.\d+", RELEASE), RELEASE


def test_python_package_reads_it() -> None:
    assert vchan.__version__ == RELEASE
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"file": "version"}


def test_debian_changelog_top_entry_is_it() -> None:
    first = (REPO / "debian/changelog").read_text(encoding="utf-8").splitlines()[0]
    m = re.match(r"^libvchan-socket \(([^)]+)\) ", first)
    assert m, first
    # native source format: the package version is the release itself
    assert m[1] == RELEASE, "new release: add a debian/changelog entry (dch -v VERSION)"


def test_rpm_spec_takes_it_from_make() -> None:
    spec = (REPO / "rpm_spec/libvchan-socket.spec.in").read_text(encoding="utf-8")
    assert re.search(r"^Version:\s+@VERSION@$", spec, re.M)


def test_c_makefile_reads_it() -> None:
    makefile = (REPO / "libvchan-socket/Makefile").read_text(encoding="utf-8")
    assert re.search(r"^VERSION := \$\(shell cat .*\.\./version", makefile, re.M)
    assert not re.search(r"^VERSION\s*:?=\s*\d", makefile, re.M)


def test_layers_are_imported_on_first_use() -> None:
    """``import vchan`` alone loads neither event-loop layer; naming one imports it."""
    code = (
        "import sys, vchan\n"
        "assert 'vchan.asyncio' not in sys.modules and 'vchan.anyio' not in sys.modules\n"
        "assert vchan.asyncio.open_client and vchan.anyio.connect\n"
        "assert 'vchan.asyncio' in sys.modules and 'vchan.anyio' in sys.modules\n"
    )
    pytest.importorskip("anyio")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
