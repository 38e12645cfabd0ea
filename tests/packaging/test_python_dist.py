"""`make dist`: the sdist and the wheels. With a C compiler (here) the wheel carries the
compiled engine, as a platform wheel and its manylinux twin (auditwheel repair); each is
installed in a fresh virtual environment (from the file alone: no index) and runs `vchan`
on the compiled engine, moves verified data both ways between two processes, and imports
vchan.asyncio. The sdist builds without a compiler too: a pure wheel, the pure engine."""

from __future__ import annotations

import platform
import re
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.c.conftest import run
from tests.c.test_clib import _exchange
from tests.conftest import REPO
from tests.packaging.conftest import PACKAGING_TIMEOUT, RELEASE, env_without, listing

#: What a run in the fresh environment must not inherit from this one.
INHERITED = (
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "PYTHONHOME",
    "VCHAN_BACKEND",
    "VCHAN_DOMAIN",
    "VCHAN_PURE_PYTHON",
)
PY = f"cp{sys.version_info.major}{sys.version_info.minor}"
ARCH = platform.machine()
EXTENSION = f"vchan/_speedups{sysconfig.get_config_var('EXT_SUFFIX')}"
#: The C sources the sdist carries to build the extension, and nothing else of the C tree.
C_SOURCES = {
    "speedups/_speedups.c",
    "speedups/exports.map",
    "libvchan-socket/internal.h",
    "libvchan-socket/libvchan.h",
    "libvchan-socket/Makefile",  # setup.py reads SRCS from it
    *(
        f"libvchan-socket/{f}"
        for f in re.search(
            r"^SRCS\s*:?=\s*(.+)$",
            (REPO / "libvchan-socket" / "Makefile").read_text(),
            re.M,
        )
        .group(1)  # type: ignore[union-attr]
        .split()
    ),
}
WHEELS = {
    "platform": rf"vchan-{re.escape(RELEASE)}-{PY}-{PY}-linux_{ARCH}\.whl",
    "manylinux": rf"vchan-{re.escape(RELEASE)}-{PY}-{PY}-manylinux_\d+_\d+_{ARCH}\.whl",
}


def _wheel(pydist: Path, kind: str) -> Path:
    wheels = [p for p in pydist.glob("vchan-*.whl") if re.fullmatch(WHEELS[kind], p.name)]
    assert len(wheels) == 1, sorted(p.name for p in pydist.iterdir())
    return wheels[0]


def test_sdist_and_wheels_are_named_by_the_version(pydist: Path) -> None:
    names = sorted(p.name for p in pydist.iterdir())
    assert len(names) == 3, names
    assert f"vchan-{RELEASE}.tar.gz" in names
    for kind in WHEELS:
        _wheel(pydist, kind)


@pytest.mark.parametrize("kind", WHEELS)
def test_wheel_contents(pydist: Path, kind: str) -> None:
    with zipfile.ZipFile(_wheel(pydist, kind)) as whl:
        names = whl.namelist()
        info = f"vchan-{RELEASE}.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
        wheel_info = whl.read(f"{info}/WHEEL").decode()
    shown = listing(names)
    assert "vchan/py.typed" in names, shown
    assert f"{info}/licenses/LICENSE" in names, shown
    assert f"Version: {RELEASE}\n" in metadata
    assert "Root-Is-Purelib: false" in wheel_info
    # the package, its compiled engine and its metadata: no tests, benchmarks, C sources,
    # other build outputs (auditwheel grafts no library: the extension needs only libc)
    assert EXTENSION in names, shown
    for name in names:
        assert name.startswith(("vchan/", f"{info}/")), shown
        assert "__pycache__" not in name and not name.endswith((".pyc", ".o", ".c")), shown
        assert not name.endswith(".so") or name == EXTENSION, shown
    assert {n for n in names if n.startswith("vchan/")} >= {
        "vchan/__init__.py",
        "vchan/asyncio/__init__.py",
        "vchan/asyncio/transport.py",
        "vchan/asyncio/streams.py",
        "vchan/asyncio/server.py",
        "vchan/cli/__init__.py",
        "vchan/cli/parser.py",
        "vchan/_version.py",
        "vchan/_speedups.pyi",
    }


def test_sdist_contents(pydist: Path) -> None:
    (sdist,) = pydist.glob("vchan-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name]
    shown = listing(names)
    for needed in (
        "version",
        "pyproject.toml",
        "setup.py",
        "LICENSE",
        "README.md",
        "src/vchan/py.typed",
        *C_SOURCES,
    ):
        assert needed in names, shown
    for name in names:
        assert not name.startswith(("tests/", "bench/", ".venv/", "build/")), shown
        assert (
            not name.startswith(("libvchan-socket/", "speedups/"))
            or name in C_SOURCES
            or name.endswith("/")
        ), shown
        assert "__pycache__" not in name and not name.endswith((".pyc", ".so", ".o")), shown


def _fresh_venv(wheel: Path, where: Path) -> Path:
    """A new virtual environment with only ``wheel`` installed, from the file alone."""
    venv = where / "venv"
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
            wheel,
        ],
        timeout=120,
        env=env_without(*INHERITED, PIP_NO_INDEX="1"),
    )
    return venv


@pytest.fixture(scope="module", params=["platform", "manylinux", "pure"])
def fresh_venv(
    request: pytest.FixtureRequest, pydist: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A fresh environment with one wheel, and the engine it must run: each wheel of
    `make dist` (compiled), and a wheel the sdist builds without a compiler (pure)."""
    where = tmp_path_factory.mktemp(f"fresh-{request.param}")
    if request.param != "pure":
        return _fresh_venv(_wheel(pydist, request.param), where), "speedups"
    (sdist,) = pydist.glob("vchan-*.tar.gz")
    out = where / "wheel"
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, sdist],
        timeout=PACKAGING_TIMEOUT,
        env=env_without(*INHERITED, CC="/nonexistent/cc"),
    )
    (wheel,) = out.glob("*.whl")
    assert wheel.name == f"vchan-{RELEASE}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as whl:
        assert not [n for n in whl.namelist() if n.endswith(".so")]
        assert "Root-Is-Purelib: true" in whl.read(f"vchan-{RELEASE}.dist-info/WHEEL").decode()
    return _fresh_venv(wheel, where), "python"


def test_installed_vchan_version_names_the_engine(
    fresh_venv: tuple[Path, str], tmp_path: Path
) -> None:
    venv, engine = fresh_venv
    out = run([venv / "bin/vchan", "--version"], cwd=tmp_path, env=env_without(*INHERITED))
    assert out == f"vchan {RELEASE} ({engine} engine)\n"
    forced = env_without(*INHERITED, VCHAN_PURE_PYTHON="1")
    out = run([venv / "bin/vchan", "--version"], cwd=tmp_path, env=forced)
    assert out == f"vchan {RELEASE} (python engine)\n"


def test_installed_package_imports_from_the_venv(
    fresh_venv: tuple[Path, str], tmp_path: Path
) -> None:
    venv, engine = fresh_venv
    code = (
        "import sys, vchan, vchan.asyncio, vchan.libvchan\n"
        "print(vchan.__file__)\n"
        "print(vchan.__version__)\n"
        "print(callable(vchan.asyncio.open_client))\n"
        "print(vchan.ENGINE)\n"
        "mod = sys.modules.get('vchan._speedups')\n"
        "print(mod.__file__ if mod else None)\n"
    )
    out = run(
        [venv / "bin/python", "-c", code], cwd=tmp_path, env=env_without(*INHERITED)
    ).splitlines()
    assert Path(out[0]).is_relative_to(venv), out
    assert out[1:4] == [RELEASE, "True", engine]
    if engine == "speedups":
        assert Path(out[4]).is_relative_to(venv), out
    else:
        assert out[4] == "None"


def test_installed_vchan_listen_connect_both_ways(
    fresh_venv: tuple[Path, str], sockdir: str, tmp_path: Path
) -> None:
    """`vchan listen` and `vchan connect`, two processes of the installed command: each
    copies its stdin to the other's stdout at once; every byte arrives, both exit 0."""
    assert len(sockdir) < 40  # sun_path is 108 bytes
    vchan = str(fresh_venv[0] / "bin/vchan")
    env = env_without(*INHERITED, VCHAN_SOCKET_DIR=sockdir, VCHAN_DOMAIN="0")
    _exchange(
        [vchan, "listen", "--timeout", "60", "0", "7"],
        [vchan, "connect", "--timeout", "60", "0", "7"],
        env,
    )
