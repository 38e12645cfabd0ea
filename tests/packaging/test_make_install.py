"""`make -C libvchan-socket install INSTALL_DEFAULT_PC=1` (issue 14): the source install's
opt-in to be the default libvchan, vchan.pc -> vchan-socket.pc as Qubes' Xen backend links
its own. It never replaces another backend's vchan.pc unless told (INSTALL_DEFAULT_PC=force),
and a program built with `pkg-config vchan` against the install loads libvchan-socket."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.c.conftest import run
from tests.conftest import REPO
from tests.packaging.conftest import (
    RELEASE,
    build_with_vchan_pc,
    env_without,
    linked,
    need,
)

CLIB = REPO / "libvchan-socket"
DIRS = ("PREFIX=/usr", "LIBDIR=/usr/lib", "INCLUDEDIR=/usr/include")


def _make(destdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``make -C libvchan-socket`` with the /usr layout staged in ``destdir``; not checked."""
    return subprocess.run(
        ["make", "-C", str(CLIB), *args, *DIRS, f"DESTDIR={destdir}"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _ok(destdir: Path, *args: str) -> None:
    proc = _make(destdir, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _pcdir(destdir: Path) -> Path:
    return destdir / "usr/lib/pkgconfig"


def _pkg_config(destdir: Path, *args: str) -> str:
    """pkg-config that sees only the staged .pc files (paths prefixed with the stage)."""
    need("pkg-config")
    env = env_without(
        "PKG_CONFIG_PATH",
        PKG_CONFIG_LIBDIR=str(_pcdir(destdir)),
        PKG_CONFIG_SYSROOT_DIR=str(destdir),
    )
    return run(["pkg-config", *args], env=env).strip()


def test_opt_in_installs_vchan_pc_as_a_link_to_ours(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    _ok(stage, "install", "INSTALL_DEFAULT_PC=1")
    pc = _pcdir(stage) / "vchan.pc"
    assert pc.is_symlink() and os.readlink(pc) == "vchan-socket.pc"
    assert _pkg_config(stage, "--cflags", "--libs", "vchan") == _pkg_config(
        stage, "--cflags", "--libs", "vchan-socket"
    )
    assert _pkg_config(stage, "--modversion", "vchan") == RELEASE
    for name in ("vchan", "vchan-socket", "vchan-socket-simple"):
        assert _pkg_config(stage, "--variable=backend_vmm", name) == "socket"
    # our own link is not "another backend's": installing again is fine
    _ok(stage, "install", "INSTALL_DEFAULT_PC=1")
    assert os.readlink(pc) == "vchan-socket.pc"


def test_without_the_opt_in_there_is_no_vchan_pc(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    _ok(stage, "install")
    assert (_pcdir(stage) / "vchan-socket.pc").is_file()
    assert not os.path.lexists(_pcdir(stage) / "vchan.pc")


def test_install_default_pc_after_an_install(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    proc = _make(stage, "install-default-pc")
    assert proc.returncode != 0 and "make install first" in proc.stderr, proc.stderr
    _ok(stage, "install")
    _ok(stage, "install-default-pc")
    assert os.readlink(_pcdir(stage) / "vchan.pc") == "vchan-socket.pc"


def _xen_link(pc: Path) -> None:
    (pc.parent / "vchan-xen.pc").write_text("Name: vchan-xen\nVersion: 4\nLibs: -lvchan-xen\n")
    pc.symlink_to("vchan-xen.pc")


def _plain_file(pc: Path) -> None:
    pc.write_text("Name: vchan-kvm\nVersion: 1\nLibs: -lvchan-kvm\n")


def _dangling_link(pc: Path) -> None:
    pc.symlink_to("vchan-xen.pc")


def _state(pc: Path) -> tuple[str | None, bytes]:
    """Where ``pc`` links to (if a link), and what it reads (if it resolves)."""
    return (os.readlink(pc) if pc.is_symlink() else None, pc.read_bytes() if pc.exists() else b"")


@pytest.mark.parametrize("foreign", [_xen_link, _plain_file, _dangling_link])
def test_refuses_another_backends_vchan_pc(tmp_path: Path, foreign: Callable[[Path], None]) -> None:
    stage = tmp_path / "stage"
    pcdir = _pcdir(stage)
    pcdir.mkdir(parents=True)
    pc = pcdir / "vchan.pc"
    foreign(pc)
    before = _state(pc)

    def unchanged() -> bool:
        return os.path.lexists(pc) and _state(pc) == before

    proc = _make(stage, "install", "INSTALL_DEFAULT_PC=1")
    assert proc.returncode != 0, proc.stdout
    assert f"{pc} exists and is not libvchan-socket's" in proc.stderr, proc.stderr
    assert "INSTALL_DEFAULT_PC=force" in proc.stderr, proc.stderr
    assert unchanged()
    # refused before anything was copied
    assert not (pcdir / "vchan-socket.pc").exists()
    assert not (stage / "usr/lib/libvchan-socket.so.1.0.0").exists()

    # a plain install leaves it alone, install-default-pc refuses, uninstall keeps it
    _ok(stage, "install")
    assert unchanged()
    proc = _make(stage, "install-default-pc")
    assert proc.returncode != 0 and "is not libvchan-socket's" in proc.stderr, proc.stderr
    assert unchanged()
    _ok(stage, "uninstall")
    assert unchanged() and not (pcdir / "vchan-socket.pc").exists()

    # told explicitly, it replaces it
    _ok(stage, "install", "INSTALL_DEFAULT_PC=force")
    assert os.readlink(pc) == "vchan-socket.pc"
    assert _pkg_config(stage, "--variable=backend_vmm", "vchan") == "socket"


def test_uninstall_removes_our_vchan_pc(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    _ok(stage, "install", "INSTALL_DEFAULT_PC=1")
    _ok(stage, "uninstall")
    assert not os.path.lexists(_pcdir(stage) / "vchan.pc")
    assert not (_pcdir(stage) / "vchan-socket.pc").exists()


def test_unknown_opt_in_value_is_an_error(tmp_path: Path) -> None:
    proc = _make(tmp_path / "stage", "install", "INSTALL_DEFAULT_PC=yes")
    assert proc.returncode != 0
    assert "INSTALL_DEFAULT_PC is 1, force or unset" in proc.stderr, proc.stderr
    assert not (tmp_path / "stage").exists()


def test_program_built_with_pkg_config_vchan_loads_ours(tmp_path: Path, sockdir: str) -> None:
    """Installed into a prefix of one's own (DESTDIR empty), found through PKG_CONFIG_PATH as
    the README shows for Qubes components; only that prefix's .pc files are seen."""
    prefix = tmp_path / "prefix"
    proc = subprocess.run(
        [
            "make",
            "-C",
            str(CLIB),
            "install",
            "INSTALL_DEFAULT_PC=1",
            f"PREFIX={prefix}",
            "DESTDIR=",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = env_without(
        "PKG_CONFIG_PATH",
        "LD_LIBRARY_PATH",
        "CPATH",
        "LIBRARY_PATH",
        PKG_CONFIG_LIBDIR=str(prefix / "lib/pkgconfig"),
    )
    flags, probe = build_with_vchan_pc(tmp_path, env)
    assert f"-I{prefix}/include/vchan-socket" in flags and "-lvchan-socket" in flags, flags
    run_env = dict(env, LD_LIBRARY_PATH=str(prefix / "lib"), VCHAN_SOCKET_DIR=sockdir)
    loaded = linked(probe, "libvchan-socket.so.1", run_env)
    assert loaded == prefix / "lib/libvchan-socket.so.1.0.0"
    assert run([probe], env=run_env).strip() == "waiting"
