"""The C library's own tests (issue 3): build products, ABI surface, install and
pkg-config, the example programs, and leak/close-race checks run as C programs.

The shared behaviour (SPEC §1-§7) is proven by tests/conformance with VCHAN_TEST_IMPLS=c;
these tests cover what only the C deliverable has.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.c.conftest import (
    CC,
    HERE,
    LIBDIR,
    SAN,
    WARN,
    compile_c,
    run,
)
from tests.conftest import TIMEOUT, pattern, wait_until

API = {
    "libvchan_server_init",
    "libvchan_client_init",
    "libvchan_client_init_async",
    "libvchan_client_init_async_finish",
    "libvchan_write",
    "libvchan_send",
    "libvchan_read",
    "libvchan_recv",
    "libvchan_wait",
    "libvchan_close",
    "libvchan_fd_for_select",
    "libvchan_is_open",
    "libvchan_data_ready",
    "libvchan_buffer_space",
    "libvchan_set_blocking",
}


def _soname(lib: Path) -> str:
    out = run(["readelf", "-d", lib])
    m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    assert m, out
    return m.group(1)


def _exported(lib: Path) -> set[str]:
    out = run(["nm", "-D", "--defined-only", lib])
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


# ------------------------------------------------------------------------ build products


def test_build_products_sonames_and_symlinks(clib):
    for name in ("libvchan-socket", "libvchan-socket-simple"):
        real = clib / f"{name}.so.1.0.0"
        assert real.is_file()
        assert os.readlink(clib / f"{name}.so.1") == f"{name}.so.1.0.0"
        assert os.readlink(clib / f"{name}.so") == f"{name}.so.1"
        assert _soname(real) == f"{name}.so.1"
    for prog in ("node", "node-select"):
        assert os.access(clib / prog, os.X_OK)


@pytest.mark.parametrize("lib", ["libvchan-socket.so.1.0.0", "libvchan-socket-simple.so.1.0.0"])
def test_only_libvchan_symbols_exported(clib, lib):
    assert _exported(clib / lib) == API


def test_sanitizer_build_exports_only_api_and_links_asan(asan_clib):
    lib = asan_clib / "libvchan-socket.so"
    assert _exported(lib) == API
    assert "libasan" in run(["readelf", "-d", lib])


# ------------------------------------------------------------------------ the header


def test_all_api_program_compiles_strictly_and_runs(clib, bindir, sockdir):
    exe = compile_c(HERE / "all_api.c", bindir / "all_api", clib, "-std=c11", "-pedantic")
    assert run([exe], timeout=TIMEOUT).strip() == "all_api: ok"


def test_header_is_usable_from_cplusplus(clib, tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "t.cc"
    src.write_text(
        "#include <libvchan.h>\n"
        "int main() {\n"
        "  libvchan_t *h = libvchan_server_init(0, 1, 0, 0);\n"
        "  if (h)\n"
        "    libvchan_close(h);\n"
        "  return VCHAN_CONNECTED - 1;\n"
        "}\n"
    )
    run(
        [
            "g++",
            *WARN,
            "-pedantic",
            f"-I{LIBDIR}",
            "-o",
            tmp_path / "t",
            src,
            f"-L{clib}",
            "-lvchan-socket",
        ]
    )


# ------------------------------------------------------------------- install, pkg-config


@pytest.fixture(scope="module")
def installed(clib, tmp_path_factory) -> Path:
    """``make install`` into a temporary prefix."""
    prefix = tmp_path_factory.mktemp("prefix")
    run(
        [
            "make",
            "-C",
            LIBDIR,
            "install",
            f"PREFIX={prefix}",
            f"LIBDIR={prefix}/lib",
            f"INCLUDEDIR={prefix}/include",
            "DESTDIR=",
        ]
    )
    return prefix


def test_install_layout(installed):
    p = installed
    assert (p / "include/vchan-socket/libvchan.h").is_file()
    for name in ("libvchan-socket", "libvchan-socket-simple"):
        assert (p / f"lib/{name}.so.1.0.0").is_file()
        assert os.readlink(p / f"lib/{name}.so.1") == f"{name}.so.1.0.0"
        assert os.readlink(p / f"lib/{name}.so") == f"{name}.so.1"
        assert _soname(p / f"lib/{name}.so.1.0.0") == f"{name}.so.1"
    for pc in ("vchan-socket", "vchan-socket-simple"):
        text = (p / f"lib/pkgconfig/{pc}.pc").read_text()
        assert "@" not in text, text
        release = (HERE.parents[1] / "version").read_text().strip()
        assert f"\nVersion: {release}\n" in text, text  # the release, not the ABI number


def _pkg_config(prefix: Path, pkg: str) -> list[str]:
    if shutil.which("pkg-config") is None:
        pytest.skip("no pkg-config")
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib/pkgconfig"))
    out = run(["pkg-config", "--cflags", "--libs", pkg], env=env)
    return out.split()


@pytest.mark.parametrize("pkg", ["vchan-socket", "vchan-socket-simple"])
def test_pkg_config_flags(installed, pkg):
    flags = _pkg_config(installed, pkg)
    assert f"-I{installed}/include/vchan-socket" in flags
    assert f"-L{installed}/lib" in flags
    assert f"-l{pkg}" in flags  # -lvchan-socket or -lvchan-socket-simple
    assert "-pthread" in flags


def test_destdir_staging(clib, tmp_path):
    stage = tmp_path / "stage"
    run(
        [
            "make",
            "-C",
            LIBDIR,
            "install",
            "PREFIX=/usr",
            "LIBDIR=/usr/lib",
            "INCLUDEDIR=/usr/include",
            f"DESTDIR={stage}",
        ]
    )
    assert (stage / "usr/include/vchan-socket/libvchan.h").is_file()
    assert (stage / "usr/lib/libvchan-socket.so.1.0.0").is_file()
    pc = (stage / "usr/lib/pkgconfig/vchan-socket.pc").read_text()
    assert "libdir=/usr/lib" in pc and str(stage) not in pc


def _build_with_pkg_config(prefix: Path, pkg: str, src: Path, out: Path) -> Path:
    flags = _pkg_config(prefix, pkg)
    run([CC, *WARN, "-O2", "-o", out, src, *flags])
    return out


# ------------------------------------------------------------------ the example programs


class Proc:
    """A child process whose stdout is collected by a thread; stdin stays open."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.out = bytearray()
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._collect, daemon=True)
        self._t.start()

    def _collect(self) -> None:
        assert self.p.stdout is not None
        while chunk := self.p.stdout.read1(65536):
            with self._lock:
                self.out += chunk

    def got(self) -> int:
        with self._lock:
            return len(self.out)

    def feed(self, data: bytes) -> threading.Thread:
        def write() -> None:
            assert self.p.stdin is not None
            try:
                self.p.stdin.write(data)
                self.p.stdin.flush()
            except BrokenPipeError:
                pass

        t = threading.Thread(target=write, daemon=True)
        t.start()
        return t

    def finish(self) -> tuple[int, bytes, str]:
        try:
            rc = self.p.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise
        self._t.join(TIMEOUT)
        assert self.p.stderr is not None
        return rc, bytes(self.out), self.p.stderr.read().decode(errors="replace")


def _exchange(server_cmd: list[str], client_cmd: list[str], env: dict[str, str]) -> None:
    """Both ends copy their stdin to the other's stdout at the same time; then the client's
    input ends, it closes the channel, and both exit 0 with every byte delivered."""
    a, b = pattern(700_000, seed=31), pattern(500_000, seed=32)
    srv = Proc(server_cmd, env)
    cli = Proc(client_cmd, env)
    try:
        feeders = [srv.feed(a), cli.feed(b)]
        wait_until(lambda: cli.got() >= len(a) and srv.got() >= len(b), timeout=TIMEOUT)
        for t in feeders:
            t.join(TIMEOUT)
        assert cli.p.stdin is not None and srv.p.stdin is not None
        cli.p.stdin.close()  # end of the client's input: it closes the channel
        rc_c, out_c, err_c = cli.finish()
        rc_s, out_s, err_s = srv.finish()  # sees the peer gone after reading everything
        srv.p.stdin.close()
    finally:
        for pr in (srv, cli):
            if pr.p.poll() is None:
                pr.p.kill()
                pr.p.wait()
    assert (rc_c, rc_s) == (0, 0), (err_c, err_s)
    assert out_c == a
    assert out_s == b


def _one_way(server_cmd: list[str], client_cmd: list[str], env: dict[str, str], tmp: Path) -> None:
    data = pattern(3 << 20, seed=33)
    src, dst = tmp / "in.bin", tmp / "out.bin"
    src.write_bytes(data)
    with open(dst, "wb") as out:
        srv = subprocess.Popen(server_cmd, stdout=out, stdin=subprocess.DEVNULL, env=env)
        try:
            with open(src, "rb") as inp:
                cli = subprocess.run(client_cmd, stdin=inp, env=env, timeout=TIMEOUT, check=False)
            assert cli.returncode == 0
            assert srv.wait(TIMEOUT) == 0
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
    assert dst.read_bytes() == data


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


@pytest.mark.parametrize("prog", ["node", "node-select"])
def test_example_exchange_in_tree(clib, sockdir, prog):
    exe = str(clib / prog)
    _exchange([exe, "server", "0", "5"], [exe, "client", "0", "5"], _env())


def test_node_one_way_in_tree(clib, sockdir, tmp_path):
    exe = str(clib / "node")
    _one_way([exe, "-r", "server", "0", "6"], [exe, "-w", "client", "0", "6"], _env(), tmp_path)


def test_node_one_way_writer_is_server(clib, sockdir, tmp_path):
    exe = str(clib / "node")
    # the reading client starts first and waits for the server to appear
    data = pattern(1 << 20, seed=34)
    (tmp_path / "in.bin").write_bytes(data)
    with open(tmp_path / "out.bin", "wb") as out:
        cli = subprocess.Popen([exe, "-r", "client", "0", "7"], stdout=out, env=_env())
        try:
            with open(tmp_path / "in.bin", "rb") as inp:
                srv = subprocess.run(
                    [exe, "-w", "server", "0", "7"],
                    stdin=inp,
                    env=_env(),
                    timeout=TIMEOUT,
                    check=False,
                )
            assert srv.returncode == 0
            assert cli.wait(TIMEOUT) == 0
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
    assert (tmp_path / "out.bin").read_bytes() == data


def test_examples_built_with_pkg_config_exchange(installed, sockdir, bindir, tmp_path):
    """The acceptance test of the install: pkg-config builds node/node-select against the
    installed library, and a node server and client exchange their stdin."""
    exes = {
        prog: _build_with_pkg_config(
            installed, "vchan-socket", LIBDIR / "examples" / f"{prog}.c", bindir / f"pc-{prog}"
        )
        for prog in ("node", "node-select")
    }
    env = _env(LD_LIBRARY_PATH=str(installed / "lib"))
    ldd = run(["ldd", exes["node"]], env=env)
    assert f"{installed}/lib/libvchan-socket.so.1" in ldd, ldd
    _exchange([str(exes["node"]), "server", "0", "8"], [str(exes["node"]), "client", "0", "8"], env)
    # and the two example programs talk to each other
    _exchange(
        [str(exes["node-select"]), "server", "0", "9"], [str(exes["node"]), "client", "0", "9"], env
    )
    _one_way(
        [str(exes["node"]), "-r", "server", "0", "10"],
        [str(exes["node"]), "-w", "client", "0", "10"],
        env,
        tmp_path,
    )


def test_simple_variant_built_with_pkg_config_runs_all_api(installed, sockdir, bindir):
    exe = _build_with_pkg_config(
        installed, "vchan-socket-simple", HERE / "all_api.c", bindir / "all_api_simple"
    )
    env = _env(LD_LIBRARY_PATH=str(installed / "lib"))
    assert "libvchan-socket-simple.so.1" in run(["ldd", exe], env=env)
    assert run([exe], env=env, timeout=TIMEOUT).strip() == "all_api: ok"


def test_example_usage_errors(clib):
    for args in ([], ["nonsense", "0", "1"], ["server", "x", "1"], ["-r", "server", "0"]):
        proc = subprocess.run(
            [str(clib / "node"), *args], capture_output=True, check=False, timeout=TIMEOUT
        )
        assert proc.returncode == 2 and b"usage" in proc.stderr


# ------------------------------------------------------------- leaks and close races (C)


def _leak_output_ok(out: str, cycles: int) -> None:
    m = re.search(r"fds (\d+)->(\d+) threads (\d+)->(\d+) rss (\d+)->(\d+) KiB, (\d+) socket", out)
    assert m, out
    fds0, fds1, thr0, thr1, _, _, left = map(int, m.groups())
    assert fds1 <= fds0 and thr1 <= thr0 and left == 0, out
    assert out.startswith(f"{cycles} cycles"), out


def test_leak_cycles_10000(clib, bindir, sockdir):
    """10,000 open/close cycles of connected pairs (some with helper threads and promises
    kept through the overflow) leave fds, threads, socket files and RSS where they were."""
    exe = compile_c(HERE / "leak_cycles.c", bindir / "leak_cycles", clib)
    _leak_output_ok(run([exe, "10000"], timeout=6 * TIMEOUT), 10000)


def test_leak_cycles_10000_under_asan_and_lsan(asan_clib, bindir, sockdir):
    exe = compile_c(HERE / "leak_cycles.c", bindir / "leak_cycles_asan", asan_clib, *SAN)
    env = _env(
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
    )
    _leak_output_ok(run([exe, "10000"], env=env, timeout=12 * TIMEOUT), 10000)


def test_close_from_other_thread_wakes_every_blocking_call(clib, bindir, sockdir):
    exe = compile_c(HERE / "close_race.c", bindir / "close_race", clib)
    assert "ok" in run([exe, "50"], timeout=12 * TIMEOUT)


def test_close_race_under_asan(asan_clib, bindir, sockdir):
    exe = compile_c(HERE / "close_race.c", bindir / "close_race_asan", asan_clib, *SAN)
    env = _env(
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
    )
    assert "ok" in run([exe, "30"], env=env, timeout=12 * TIMEOUT)


# ------------------------------------------------------- found by the soak (tests/soak.py)


@pytest.mark.spec("CLOSE-DELIVERS")
def test_close_of_waiting_server_delivers_to_client_in_backlog(clib, sockdir):
    """Bytes sent on a WAITING server reach a client that connected (it sits in the backlog,
    not yet accepted) even when the server closes before any other call (soak seed 21)."""
    from vchan import _cffi

    lib = _cffi.load(str(clib / "libvchan-socket.so"))
    for i in range(200):
        srv = lib.libvchan_server_init(0, 1, 0, 0)
        assert srv is not None
        assert lib.libvchan_send(srv, b"e%d" % i, len(b"e%d" % i)) == len(b"e%d" % i)
        cli = lib.libvchan_client_init(0, 1)
        assert cli is not None
        lib.libvchan_close(srv)  # the client was never accepted by a call
        buf = bytearray(16)
        got = b""
        while True:
            n = lib.libvchan_read(cli, buf, 16)
            if n < 0:
                break
            got += bytes(buf[:n])
        lib.libvchan_close(cli)
        assert got == b"e%d" % i
