"""`make deb`: libvchan-socket1, libvchan-socket-dev and libvchan-socket-default-dev, lintian
clean; installed, they build the example programs with pkg-config (`vchan-socket`, and
`vchan` as Qubes components ask) and the programs talk; then they are purged."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.c.conftest import CC, WARN, run
from tests.c.test_clib import _exchange, _one_way
from tests.conftest import REPO
from tests.packaging.conftest import (
    RELEASE,
    build_with_vchan_pc,
    env_without,
    linked,
    listing,
    need,
)

# in dependency order: installed together, purged in reverse
PACKAGES = ("libvchan-socket1", "libvchan-socket-dev", "libvchan-socket-default-dev")
EXAMPLES = REPO / "libvchan-socket" / "examples"


def _arch() -> str:
    return run(["dpkg-architecture", "-qDEB_HOST_ARCH"]).strip()


def _multiarch() -> str:
    return run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"]).strip()


def _deb(debs: Path, package: str) -> Path:
    path = debs / f"{package}_{RELEASE}_{_arch()}.deb"
    assert path.is_file(), listing([p.name for p in debs.iterdir()])
    return path


def _members(deb: Path) -> dict[str, tarfile.TarInfo]:
    """The package's files and links by path, without the directories and /usr/share/doc."""
    tar = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, timeout=60, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        members = {m.name.removeprefix("."): m for m in archive.getmembers() if not m.isdir()}
    return {n: m for n, m in members.items() if not n.startswith("/usr/share/doc/")}


def _payload(deb: Path) -> set[str]:
    return set(_members(deb))


def test_lintian_clean(debs: Path) -> None:
    need("lintian")
    (changes,) = debs.glob("*.changes")
    # errors and warnings fail; info tags are shown (-I) for the log
    proc = subprocess.run(
        ["lintian", "--fail-on", "error,warning", "-I", "--no-tag-display-limit", changes],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [line for line in proc.stdout.splitlines() if line.startswith(("E:", "W:"))]


def test_runtime_package_has_both_sonames(debs: Path) -> None:
    lib = f"/usr/lib/{_multiarch()}"
    assert _payload(_deb(debs, "libvchan-socket1")) == {
        f"{lib}/libvchan-socket.so.1.0.0",
        f"{lib}/libvchan-socket.so.1",
        f"{lib}/libvchan-socket-simple.so.1.0.0",
        f"{lib}/libvchan-socket-simple.so.1",
    }
    fields = run(["dpkg-deb", "-f", _deb(debs, "libvchan-socket1"), "Multi-Arch", "Section"])
    assert "Multi-Arch: same" in fields and "Section: libs" in fields


def test_dev_package_has_header_links_and_pc_files(debs: Path) -> None:
    lib = f"/usr/lib/{_multiarch()}"
    assert _payload(_deb(debs, "libvchan-socket-dev")) == {
        "/usr/include/vchan-socket/libvchan.h",
        f"{lib}/libvchan-socket.so",
        f"{lib}/libvchan-socket-simple.so",
        f"{lib}/pkgconfig/vchan-socket.pc",
        f"{lib}/pkgconfig/vchan-socket-simple.pc",
    }
    depends = run(["dpkg-deb", "-f", _deb(debs, "libvchan-socket-dev"), "Depends"])
    assert f"libvchan-socket1 (= {RELEASE})" in depends


def test_default_dev_package_is_the_vchan_pc_link(debs: Path) -> None:
    """vchan.pc, a link to vchan-socket.pc (as Qubes' Xen backend links it to vchan-xen.pc),
    and nothing else; it takes the place of the Xen backend's development package."""
    deb = _deb(debs, "libvchan-socket-default-dev")
    pc = f"/usr/lib/{_multiarch()}/pkgconfig/vchan.pc"
    members = _members(deb)
    assert set(members) == {pc}
    assert members[pc].issym() and members[pc].linkname == "vchan-socket.pc"
    fields = dict(
        line.split(": ", 1)
        for line in run(
            ["dpkg-deb", "-f", deb, "Depends", "Conflicts", "Provides", "Multi-Arch", "Section"]
        ).splitlines()
    )
    assert fields == {
        "Depends": f"libvchan-socket-dev (= {RELEASE})",
        "Conflicts": "libvchan-xen-dev",
        "Provides": "libvchan-dev",
        "Multi-Arch": "same",
        "Section": "libdevel",
    }


def _installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}", package],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode == 0 and proc.stdout.strip() not in ("", "not-installed")


@pytest.fixture
def installed_debs(debs: Path) -> Iterator[None]:
    """Both packages installed with dpkg for the test; purged afterwards, pass or fail."""
    if os.geteuid() != 0:
        pytest.skip("installing packages needs root")
    already = [p for p in PACKAGES if _installed(p)]
    if already:
        pytest.skip(f"{', '.join(already)} already installed: not replacing the system's")
    # For `make test-packages`: if this process dies (a deadline ends the whole run) before
    # the purge below, the mark tells it to purge them.
    mark = Path(os.environ.get("VCHAN_TEST_DEB_MARK", "/nonexistent/mark"))
    if mark.parent.is_dir():
        mark.write_text(" ".join(PACKAGES) + "\n")
    try:
        run(["dpkg", "-i", *(_deb(debs, p) for p in PACKAGES)], timeout=120)
        yield
    finally:
        run(["dpkg", "--purge", *reversed(PACKAGES)], timeout=120)
        mark.unlink(missing_ok=True)
    assert not [p for p in PACKAGES if _installed(p)]


def test_installed_packages_build_and_run_the_examples(
    installed_debs: None, sockdir: str, tmp_path: Path
) -> None:
    # pkg-config finds the system's .pc files, nothing of this tree
    env = env_without("PKG_CONFIG_PATH", "LD_LIBRARY_PATH", "CPATH", "LIBRARY_PATH")
    lib = f"/usr/lib/{_multiarch()}"
    flags = run(["pkg-config", "--cflags", "--libs", "vchan-socket"], env=env).split()
    assert "-I/usr/include/vchan-socket" in flags and "-lvchan-socket" in flags, flags
    assert run(["pkg-config", "--modversion", "vchan-socket"], env=env).strip() == RELEASE
    exes: dict[str, str] = {}
    for prog in ("node", "node-select"):
        exe = tmp_path / prog
        run([CC, *WARN, "-O2", "-o", exe, EXAMPLES / f"{prog}.c", *flags], env=env)
        assert linked(exe, "libvchan-socket.so.1") == Path(lib, "libvchan-socket.so.1.0.0")
        exes[prog] = str(exe)
    # the simple variant's name links too
    simple = run(["pkg-config", "--cflags", "--libs", "vchan-socket-simple"], env=env).split()
    exe = tmp_path / "node-simple"
    run([CC, *WARN, "-O2", "-o", exe, EXAMPLES / "node.c", *simple], env=env)
    assert linked(exe, "libvchan-socket-simple.so.1") == Path(
        lib, "libvchan-socket-simple.so.1.0.0"
    )
    exes["node-simple"] = str(exe)

    run_env = dict(env, VCHAN_SOCKET_DIR=sockdir, VCHAN_DOMAIN="0")
    _exchange([exes["node"], "server", "0", "5"], [exes["node"], "client", "0", "5"], run_env)
    _exchange(
        [exes["node-select"], "server", "0", "6"],
        [exes["node-simple"], "client", "0", "6"],
        run_env,
    )
    _one_way(
        [exes["node"], "-r", "server", "0", "7"],
        [exes["node-simple"], "-w", "client", "0", "7"],
        run_env,
        tmp_path,
    )


def test_installed_default_package_builds_what_asks_pkg_config_vchan(
    installed_debs: None, sockdir: str, tmp_path: Path
) -> None:
    """What a Qubes component does without a BACKEND_VMM: `pkg-config vchan` gives our
    flags, and the programs built with them load libvchan-socket.so.1 and work."""
    env = env_without("PKG_CONFIG_PATH", "LD_LIBRARY_PATH", "CPATH", "LIBRARY_PATH")
    lib = f"/usr/lib/{_multiarch()}"
    assert run(["pkg-config", "--modversion", "vchan"], env=env).strip() == RELEASE
    assert run(["pkg-config", "--variable=backend_vmm", "vchan"], env=env).strip() == "socket"
    flags, probe = build_with_vchan_pc(tmp_path, env)
    assert flags == run(["pkg-config", "--cflags", "--libs", "vchan-socket"], env=env).split()
    assert linked(probe, "libvchan-socket.so.1", env) == Path(lib, "libvchan-socket.so.1.0.0")
    run_env = dict(env, VCHAN_SOCKET_DIR=sockdir, VCHAN_DOMAIN="0")
    assert run([probe], env=run_env).strip() == "waiting"
    # and a real exchange between two programs built that way
    node = tmp_path / "node"
    run([CC, *WARN, "-O2", "-o", node, EXAMPLES / "node.c", *flags], env=env)
    assert linked(node, "libvchan-socket.so.1", env) == Path(lib, "libvchan-socket.so.1.0.0")
    _exchange([str(node), "server", "0", "8"], [str(node), "client", "0", "8"], run_env)
