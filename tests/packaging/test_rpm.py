"""`make rpm`: rpm_spec/libvchan-socket.spec.in, filled with ./version, builds with rpmbuild
into qubes-libvchan-socket (the library under both sonames), -devel (header, .so links,
.pc files), the names and layout of the Qubes/Fedora packages, and -default-devel (vchan.pc,
for components that ask `pkg-config vchan`)."""

from __future__ import annotations

from pathlib import Path

from tests.c.conftest import run
from tests.conftest import REPO
from tests.packaging.conftest import RELEASE, listing

NAME = "qubes-libvchan-socket"


def _rpm(rpms: Path, name: str) -> Path:
    found = list((rpms / "RPMS").glob(f"*/{name}-{RELEASE}-1*.rpm"))
    assert len(found) == 1, listing([str(p) for p in (rpms / "RPMS").rglob("*.rpm")])
    return found[0]


def _query(rpm: Path, *what: str) -> list[str]:
    return run(["rpm", "-qp", *what, rpm], timeout=60).splitlines()


def _libdir() -> str:
    return run(["rpm", "--eval", "%{_libdir}"], timeout=60).strip()


def _listing(rpm: Path) -> list[str]:
    """`rpm -qlpv` lines of the files and links, without the directories and build-id links."""
    lines = run(["rpm", "-qlpv", rpm], timeout=60).splitlines()
    print(f"{rpm.name}:\n" + "\n".join(lines))
    return [line for line in lines if not line.startswith("d") and "/.build-id/" not in line]


def _files(rpm: Path) -> set[str]:
    return {line.split()[8] for line in _listing(rpm)}


def test_spec_is_generated_with_the_version(rpms: Path) -> None:
    spec = (REPO / "rpm_spec/libvchan-socket.spec").read_text()
    assert f"\nVersion:        {RELEASE}\n" in spec
    assert "@VERSION@" not in spec


def test_source_rpm(rpms: Path) -> None:
    assert (rpms / "SRPMS" / f"{NAME}-{RELEASE}-1.src.rpm").is_file(), listing(
        [p.name for p in (rpms / "SRPMS").iterdir()]
    )


def test_library_package(rpms: Path) -> None:
    rpm = _rpm(rpms, NAME)
    assert _query(rpm, "--queryformat", "%{NAME} %{VERSION} %{LICENSE}\n") == [
        f"{NAME} {RELEASE} MIT"
    ]
    lib = _libdir()
    files = _files(rpm)
    assert {f for f in files if not f.startswith("/usr/share/licenses/")} == {
        f"{lib}/libvchan-socket.so.1.0.0",
        f"{lib}/libvchan-socket.so.1",
        f"{lib}/libvchan-socket-simple.so.1.0.0",
        f"{lib}/libvchan-socket-simple.so.1",
    }
    assert f"/usr/share/licenses/{NAME}-{RELEASE}/LICENSE" in files
    provides = _query(rpm, "--provides")
    assert any(p.startswith("libvchan-socket.so.1()") for p in provides), provides
    assert any(p.startswith("libvchan-socket-simple.so.1()") for p in provides), provides


def test_devel_package(rpms: Path) -> None:
    rpm = _rpm(rpms, f"{NAME}-devel")
    lib = _libdir()
    assert _files(rpm) == {
        "/usr/include/vchan-socket/libvchan.h",
        f"{lib}/libvchan-socket.so",
        f"{lib}/libvchan-socket-simple.so",
        f"{lib}/pkgconfig/vchan-socket.pc",
        f"{lib}/pkgconfig/vchan-socket-simple.pc",
    }
    requires = _query(rpm, "--requires")
    assert any(r.startswith(f"{NAME}(") and r.endswith(f"= {RELEASE}-1") for r in requires)
    provides = _query(rpm, "--provides")
    assert f"pkgconfig(vchan-socket) = {RELEASE}" in provides, provides
    assert f"pkgconfig(vchan-socket-simple) = {RELEASE}" in provides, provides


def test_default_devel_package(rpms: Path) -> None:
    """Only vchan.pc, a link to vchan-socket.pc; needs -devel; conflicts with the Xen
    backend's devel package, which is the default on Qubes."""
    rpm = _rpm(rpms, f"{NAME}-default-devel")
    pc = f"{_libdir()}/pkgconfig/vchan.pc"
    (line,) = _listing(rpm)
    assert line.startswith("l") and line.split()[8:] == [pc, "->", "vchan-socket.pc"], line
    requires = _query(rpm, "--requires")
    assert any(r.startswith(f"{NAME}-devel(") and r.endswith(f"= {RELEASE}-1") for r in requires), (
        requires
    )
    assert _query(rpm, "--conflicts") == ["qubes-libvchan-xen-devel"]
    provides = _query(rpm, "--provides")
    assert f"pkgconfig(vchan) = {RELEASE}" in provides, provides
    assert "qubes-libvchan-devel" in provides, provides
