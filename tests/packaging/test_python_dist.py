"""`make dist`: the sdist and the wheel; the wheel installed in a fresh virtual environment
(from the file alone: no index) runs `vchan`, moves verified data both ways between two
processes, and imports vchan.asyncio."""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.c.conftest import run
from tests.c.test_clib import _exchange
from tests.packaging.conftest import RELEASE, env_without, listing

#: What a run in the fresh environment must not inherit from this one.
INHERITED = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "VCHAN_BACKEND", "VCHAN_DOMAIN")


def _wheel(pydist: Path) -> Path:
    wheels = list(pydist.glob("vchan-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_sdist_and_wheel_are_named_by_the_version(pydist: Path) -> None:
    names = sorted(p.name for p in pydist.iterdir())
    assert names == [f"vchan-{RELEASE}-py3-none-any.whl", f"vchan-{RELEASE}.tar.gz"]


def test_wheel_contents(pydist: Path) -> None:
    with zipfile.ZipFile(_wheel(pydist)) as whl:
        names = whl.namelist()
        info = f"vchan-{RELEASE}.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
    shown = listing(names)
    assert "vchan/py.typed" in names, shown
    assert f"{info}/licenses/LICENSE" in names, shown
    assert f"Version: {RELEASE}\n" in metadata
    # only the package and its metadata: no tests, benchmarks, C sources or build outputs
    for name in names:
        assert name.startswith(("vchan/", f"{info}/")), shown
        assert "__pycache__" not in name and not name.endswith((".pyc", ".so", ".o")), shown
    assert {n for n in names if n.startswith("vchan/")} >= {
        "vchan/__init__.py",
        "vchan/asyncio.py",
        "vchan/cli.py",
        "vchan/_version.py",
    }


def test_sdist_contents(pydist: Path) -> None:
    (sdist,) = pydist.glob("vchan-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name]
    shown = listing(names)
    for needed in ("version", "pyproject.toml", "LICENSE", "README.md", "src/vchan/py.typed"):
        assert needed in names, shown
    for name in names:
        assert not name.startswith(("tests/", "bench/", ".venv/", "libvchan-socket/")), shown
        assert "__pycache__" not in name and not name.endswith((".pyc", ".so", ".o")), shown


@pytest.fixture(scope="module")
def fresh_venv(pydist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with only the wheel installed, from the file alone."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    run([sys.executable, "-m", "venv", venv], timeout=120)
    run(
        [
            venv / "bin/python",
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            _wheel(pydist),
        ],
        timeout=120,
        env=env_without(*INHERITED, PIP_NO_INDEX="1"),
    )
    return venv


def test_installed_vchan_version(fresh_venv: Path, tmp_path: Path) -> None:
    out = run([fresh_venv / "bin/vchan", "--version"], cwd=tmp_path, env=env_without(*INHERITED))
    assert out == f"vchan {RELEASE}\n"


def test_installed_package_imports_from_the_venv(fresh_venv: Path, tmp_path: Path) -> None:
    code = (
        "import vchan, vchan.asyncio, vchan.libvchan\n"
        "print(vchan.__file__)\n"
        "print(vchan.__version__)\n"
        "print(callable(vchan.asyncio.open_client))\n"
    )
    out = run(
        [fresh_venv / "bin/python", "-c", code], cwd=tmp_path, env=env_without(*INHERITED)
    ).splitlines()
    assert Path(out[0]).is_relative_to(fresh_venv), out
    assert out[1:] == [RELEASE, "True"]


def test_installed_vchan_listen_connect_both_ways(
    fresh_venv: Path, sockdir: str, tmp_path: Path
) -> None:
    """`vchan listen` and `vchan connect`, two processes of the installed command: each
    copies its stdin to the other's stdout at once; every byte arrives, both exit 0."""
    assert len(sockdir) < 40  # sun_path is 108 bytes
    vchan = str(fresh_venv / "bin/vchan")
    env = env_without(*INHERITED, VCHAN_SOCKET_DIR=sockdir, VCHAN_DOMAIN="0")
    _exchange(
        [vchan, "listen", "--timeout", "60", "0", "7"],
        [vchan, "connect", "--timeout", "60", "0", "7"],
        env,
    )
