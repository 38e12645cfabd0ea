"""Programs that use the API the way Qubes components do (issue 14, part 2).

The conformance suite tests the API call by call; these scenarios run whole programs, each
end in its own process, written from the public description of a Qubes component's pattern
(see the comment at the top of each program):

1. qrexec_setup: qrexec's connection set-up (hello before any client, one poll + one wait
   for the client, the async connect with the watch fd, the poll before the prefix data);
2. qrexec_data: qrexec's data loop, 64 MiB both ways at once through select loops gated
   by buffer_space(), the remote end exiting right after its last write;
3. qubesdb: qubesdb's daemon re-initialising its server whenever its peer goes, the peer
   SIGKILLed and restarted 20 times;
4. gui_loop: the GUI protocol's loop, the vchan fd and an unrelated fd in one poll set.

Each program is a C file (built here with gcc -Wall -Wextra -Werror against
libvchan-socket/libvchan.h) with a Python twin beside it on :mod:`vchan.libvchan` (the pure
Python engine), same arguments, same bytes on the wire. Every scenario runs in each combo
of (server end, client end): C-C, Py-Py, C-Py, Py-C, the twins on the compiled engine
(vchan._speedups) against each other, and with ``VCHAN_TEST_LIB=/path/lib.so`` also lib-lib,
lib-Py and Py-lib (the C programs linked to that library instead of ours); VCHAN_TEST_IMPLS
(tests/conftest.py) narrows them.

A program exits non-zero and says why on any deviation, and never hangs: every wait has a
deadline (``VCHAN_TEST_TIMEOUT``-scaled, as in tests/conftest.py), and the driver kills what
is left when its own deadline passes. Run: ``.venv/bin/python -m pytest -q tests/programs``
(``-rP`` shows each program's summary line: timings, wake-up counts). One program by hand:
``PYTHONPATH=src VCHAN_SOCKET_DIR=$(mktemp -d /tmp/vcXXXX) python tests/programs/gui_loop.py
server 0 3 100`` (and the client likewise). The twins are type-checked as top-level modules:
``MYPYPATH=tests/programs .venv/bin/mypy --strict --follow-imports=silent -m _progs -m gui_loop
-m qrexec_data -m qrexec_setup -m qubesdb``.
"""

from __future__ import annotations

import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from tests.c.conftest import compile_c
from tests.conftest import CLIB, REPO, TIMEOUT, _build_clib, _impl_names, scaled

HERE = Path(__file__).resolve().parent
NAMES = ("qrexec_setup", "qrexec_data", "qubesdb", "gui_loop")
OTHER_LIB = os.environ.get("VCHAN_TEST_LIB", "")

# What an end runs: "c" the C program on our libvchan-socket, "py" the Python twin on the
# pure-Python engine, "sp" the Python twin on the compiled engine (vchan._speedups, our C
# library's sources as a CPython extension), "lib" the C program on $VCHAN_TEST_LIB. Each
# is the implementation of that name in VCHAN_TEST_IMPLS (tests/conftest.py), which selects
# the combos: the four of the brief, the compiled engine against itself, and the other
# library against itself and the Python engine.
IMPL_OF = {"c": "c", "py": "python", "sp": "speedups", "lib": "lib"}
ENGINE_OF = {"py": "python", "sp": "speedups"}
ALL_COMBOS = [
    ("c", "c"), ("py", "py"), ("c", "py"), ("py", "c"), ("sp", "sp"),
    ("lib", "lib"), ("lib", "py"), ("py", "lib"),
]  # fmt: skip
COMBOS = [c for c in ALL_COMBOS if all(IMPL_OF[end] in _impl_names() for end in c)]


def _combo_id(combo: tuple[str, str]) -> str:
    return f"{combo[0]}-server-{combo[1]}-client"


combos = pytest.mark.parametrize("combo", COMBOS, ids=[_combo_id(c) for c in COMBOS])

# The suite's per-test limit (pyproject: 60 s, thread method) at the default timeout; scaled
# with VCHAN_TEST_TIMEOUT so that the driver's own deadlines (below it) report first.
pytestmark = pytest.mark.timeout(max(60, int(6 * TIMEOUT)))


# ---------------------------------------------------------------------------------- build


def _link_dir_for(lib: Path, where: Path) -> Path:
    """A directory in which ``-lvchan-socket`` and the library's soname both name ``lib``."""
    where.mkdir(parents=True, exist_ok=True)
    names = {"libvchan-socket.so"}
    out = subprocess.run(
        ["readelf", "-d", str(lib)], capture_output=True, text=True, check=False
    ).stdout
    m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    if m:
        names.add(m.group(1))
    for name in names:
        link = where / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(lib.resolve())
    return where


class Builds:
    """The C programs, compiled on first use, per library ("c": ours, "lib": VCHAN_TEST_LIB)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.libdirs = {"c": CLIB.parent}
        self._exes: dict[tuple[str, str], Path] = {}

    def exe(self, lang: str, name: str) -> Path:
        key = (lang, name)
        if key not in self._exes:
            if lang == "lib" and "lib" not in self.libdirs:
                self.libdirs["lib"] = _link_dir_for(Path(OTHER_LIB), self.root / "otherlib")
            out = self.root / lang
            out.mkdir(parents=True, exist_ok=True)
            self._exes[key] = compile_c(HERE / f"{name}.c", out / name, self.libdirs[lang])
        return self._exes[key]


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """Our C library built (``make -C libvchan-socket`` if stale) and a place for programs."""
    reason = _build_clib()
    if reason is not None:
        pytest.skip(reason)
    return Builds(tmp_path_factory.mktemp("programs"))


# ------------------------------------------------------------------------------ processes


class Proc:
    """One end (or helper) of a scenario in a child process; stderr goes to a file."""

    def __init__(
        self,
        cmd: Sequence[str],
        label: str,
        logdir: Path,
        *,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = subprocess.DEVNULL,
        pass_fds: Sequence[int] = (),
        engine: str | None = None,
    ) -> None:
        self.label = label
        self.cmd = list(cmd)
        self._err = open(logdir / f"{label}.stderr", "w+b")  # noqa: SIM115 - kept open
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "src"), *filter(None, [env.get("PYTHONPATH", "")])]
        )
        if engine is not None:  # a Python twin: on that engine and no other (see _progs.py)
            env.pop("VCHAN_BACKEND", None)
            env.pop("VCHAN_PURE_PYTHON", None)
            if engine == "python":
                env["VCHAN_PURE_PYTHON"] = "1"
            env["VCHAN_PROGRAM_ENGINE"] = engine
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=stdin,
            stdout=stdout,
            stderr=self._err,
            pass_fds=tuple(pass_fds),
            env=env,
            cwd=logdir,
        )
        self.t_start = time.monotonic()
        self.t_end: float | None = None

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None and self.t_end is None:
            self.t_end = time.monotonic()
        return rc

    def kill(self) -> None:
        if self.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.poll()

    def stderr(self) -> str:
        self._err.flush()
        self._err.seek(0)
        return self._err.read().decode(errors="replace")

    def report(self) -> str:
        rc = self.proc.returncode
        return f"--- {self.label} (exit {rc}): {' '.join(self.cmd)}\n{self.stderr()}"

    def close(self) -> None:
        self.kill()
        self._err.close()


class Scenario:
    """Starts the programs of one test and reaps them, whatever happens."""

    def __init__(self, builds: Builds, logdir: Path) -> None:
        self.builds = builds
        self.logdir = logdir
        self.procs: list[Proc] = []

    def command(self, lang: str, name: str, *args: object) -> list[str]:
        if lang in ENGINE_OF:
            if lang == "sp":
                from vchan import _engine

                why = _engine.speedups_error()
                if why is not None:
                    pytest.skip(why)
            return [sys.executable, str(HERE / f"{name}.py"), *map(str, args)]
        return [str(self.builds.exe(lang, name)), *map(str, args)]

    def start(self, lang: str, name: str, label: str, *args: object, **kw: Any) -> Proc:
        cmd = self.command(lang, name, *args)
        p = Proc(cmd, f"{label}-{lang}", self.logdir, engine=ENGINE_OF.get(lang), **kw)
        self.procs.append(p)
        return p

    def reports(self, procs: Sequence[Proc] | None = None) -> str:
        """Every program's command, exit status and stderr; the first to exit first."""
        chosen = list(self.procs if procs is None else procs)
        chosen.sort(key=lambda p: p.t_end if p.t_end is not None else float("inf"))
        return "\n".join(p.report() for p in chosen)

    def finish(self, procs: Sequence[Proc], timeout: float) -> float:
        """Wait for ``procs`` to exit 0 within ``timeout``; fail with every stderr otherwise.

        Once one has failed the others get a short grace (they usually see the peer gone at
        once) and are then killed, so a failure costs no more than its own deadline.
        Returns the time from the first start to the last exit.
        """
        __tracebackhide__ = True
        end = time.monotonic() + timeout
        failed_at: float | None = None
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = time.monotonic()
            now = time.monotonic()
            if now > end or (failed_at is not None and now > failed_at + scaled(5)):
                for p in procs:
                    p.kill()
                why = "timed out" if failed_at is None else "a program failed"
                pytest.fail(f"{why} (driver deadline {timeout:.0f} s)\n{self.reports(procs)}")
            time.sleep(0.005)
        if any(p.proc.returncode != 0 for p in procs):
            pytest.fail(f"a program failed\n{self.reports(procs)}")
        starts = min(p.t_start for p in procs)
        ends = max(p.t_end or time.monotonic() for p in procs)
        return ends - starts

    def summary(self, procs: Sequence[Proc] | None = None) -> None:
        """Print the programs' last stderr lines (their summaries): pytest -s or -rP shows them."""
        for p in self.procs if procs is None else procs:
            lines = p.stderr().strip().splitlines()
            print(f"{p.label}: {lines[-1] if lines else '(no output)'}")

    def close(self) -> None:
        for p in self.procs:
            p.close()


@pytest.fixture
def scenario(builds: Builds, sockdir: str, tmp_path: Path) -> Iterator[Scenario]:
    """A Scenario in a private short VCHAN_SOCKET_DIR (the ``sockdir`` fixture)."""
    s = Scenario(builds, tmp_path)
    try:
        yield s
    finally:
        s.close()


def _sync_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    return r, w


# ----------------------------------------------------------- 1. qrexec connection set-up

SETUP_ROUNDS = 25  # rounds per run: the client's hello often beats the server's wait()


@combos
@pytest.mark.parametrize("flavour", ["daemon", "data"])
@pytest.mark.parametrize("order", ["server-first", "client-first"])
@pytest.mark.parametrize("client", ["client-async", "client-blocking"])
def test_qrexec_setup(
    scenario: Scenario, combo: tuple[str, str], client: str, order: str, flavour: str
) -> None:
    """qrexec's set-up, SETUP_ROUNDS times: every round connects at once and never stalls.

    ``order`` is enforced in every round with a token on a pipe: server-first, the client
    starts only once the server listens (and has sent its hello, flavour "daemon"), and must
    connect at once; client-first, the server starts only once the client is waiting for it.
    """
    srv_lang, cli_lang = combo
    r, w = _sync_pipe()
    try:
        if order == "server-first":
            s_sync, c_sync = f"give:{w}", f"take:{r}"
        else:
            s_sync, c_sync = f"take:{r}", f"give:{w}"
        args = (flavour, 0, 100, SETUP_ROUNDS)
        if order == "client-first":  # the driver starts the client first
            cli = scenario.start(
                cli_lang, "qrexec_setup", "client", client, *args, c_sync, pass_fds=(r, w)
            )
            srv = scenario.start(
                srv_lang, "qrexec_setup", "server", "server", *args, s_sync, pass_fds=(r, w)
            )
        else:
            srv = scenario.start(
                srv_lang, "qrexec_setup", "server", "server", *args, s_sync, pass_fds=(r, w)
            )
            cli = scenario.start(
                cli_lang, "qrexec_setup", "client", client, *args, c_sync, pass_fds=(r, w)
            )
    finally:
        os.close(r)
        os.close(w)
    took = scenario.finish([srv, cli], timeout=4 * TIMEOUT)
    scenario.summary()
    print(f"{SETUP_ROUNDS} rounds in {took:.2f} s")


# ------------------------------------------------------- 2. qrexec's data loop, both ways

# Bytes each end sends: 64 MiB in every combo (the brief's default). Measured on this shared
# 2-CPU machine, one test (both ways at once, six processes) takes 0.3-0.8 s C-C, 1-2 s C-Py
# or Py-C, 1.1-3 s Py-Py or Sp-Sp (the slowest, under a load average near 10), so no combo
# needs a smaller size; VCHAN_TEST_DATA_MIB sets another one (e.g. for a slower machine).
DATA_SIZE = int(os.environ.get("VCHAN_TEST_DATA_MIB", "64")) << 20
# the client end sends a few bytes more, so the two streams never end at the same offset
# and the last message is not a whole 64 KiB
DATA_EXTRA = 4099


@combos
@pytest.mark.parametrize("remote", ["client", "server"], ids=["remote-client", "remote-server"])
def test_qrexec_data(scenario: Scenario, combo: tuple[str, str], remote: str) -> None:
    """`gen | end | verify` on each side: every byte arrives both ways; the remote end
    (the service, ``remote``) closes the channel right after its last write."""
    sizes = {"server": DATA_SIZE, "client": DATA_SIZE + DATA_EXTRA}
    seeds = {"server": 11, "client": 22}
    peer = {"server": "client", "client": "server"}
    procs: list[Proc] = []
    for role, lang in zip(("server", "client"), combo, strict=True):
        side = "remote" if role == remote else "local"
        other = peer[role]
        g = scenario.start(
            lang,
            "qrexec_data",
            f"gen-{role}",
            "gen",
            seeds[role],
            sizes[role],
            stdout=subprocess.PIPE,
        )
        assert g.proc.stdout is not None
        e = scenario.start(
            lang, "qrexec_data", role, role, side, 0, 5, stdin=g.proc.stdout, stdout=subprocess.PIPE
        )
        g.proc.stdout.close()  # the end holds it now
        assert e.proc.stdout is not None
        v = scenario.start(
            lang,
            "qrexec_data",
            f"verify-{role}",
            "verify",
            seeds[other],
            sizes[other],
            stdin=e.proc.stdout,
        )
        e.proc.stdout.close()
        procs += [g, e, v]
    took = scenario.finish(procs, timeout=4 * TIMEOUT)
    scenario.summary()
    print(f"{(sizes['server'] + sizes['client']) / 2**20:.0f} MiB in {took:.2f} s")


# ------------------------------------------------ 3. qubesdb: the peer killed, restarted

RESTARTS = 20


class LineReader:
    """Lines of a child's stdout pipe, read with deadlines."""

    def __init__(self, proc: Proc) -> None:
        assert proc.proc.stdout is not None
        self.fd = proc.proc.stdout.fileno()
        self.buf = b""
        self.lines: list[str] = []
        self.eof = False

    def read_some(self, timeout: float) -> None:
        """Whatever arrives within ``timeout`` (one read)."""
        ready = select.select([self.fd], [], [], timeout)[0]
        if not ready:
            return
        data = os.read(self.fd, 65536)
        if not data:
            self.eof = True
            return
        self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [d.decode() for d in done]

    def until(self, count: int, timeout: float) -> bool:
        """Read until ``count`` lines in all, EOF, or ``timeout``; whether count was reached."""
        end = time.monotonic() + timeout
        while len(self.lines) < count and not self.eof and time.monotonic() < end:
            self.read_some(end - time.monotonic())
        return len(self.lines) >= count

    def rest(self, timeout: float) -> None:
        """Everything up to EOF (the writer is dead or done)."""
        end = time.monotonic() + timeout
        while not self.eof and time.monotonic() < end:
            self.read_some(end - time.monotonic())


@combos
def test_qubesdb_restarts(scenario: Scenario, combo: tuple[str, str], tmp_path: Path) -> None:
    """The writer is SIGKILLed and restarted RESTARTS times while the daemon goes on:
    every acknowledged key was recorded, each restart connects at once (the writer checks)
    and no byte of an old session reaches a new one (the daemon checks)."""
    srv_lang, cli_lang = combo
    rng = random.Random(1414)
    record = tmp_path / "records"
    daemon = scenario.start(srv_lang, "qubesdb", "daemon", "daemon", 0, 7, record)
    acked: list[str] = []
    for gen in range(RESTARTS + 1):
        last = gen == RESTARTS
        w = scenario.start(
            cli_lang,
            "qubesdb",
            f"writer{gen}",
            "writer",
            0,
            7,
            gen,
            50 if last else 0,
            stdout=subprocess.PIPE,
        )
        lines = LineReader(w)
        if last:
            scenario.finish([w], timeout=3 * TIMEOUT)
            lines.rest(TIMEOUT)
        else:
            # kill it at a different point each time: after 1..200 acks, 0..2 ms later; one
            # time in five as soon as it started (before, while or just after it connects)
            want = 0 if rng.random() < 0.2 else rng.randint(1, 200)
            if not lines.until(want, 2 * TIMEOUT):
                w.kill()
                if daemon.poll() is not None or w.proc.returncode not in (0, -signal.SIGKILL):
                    pytest.fail(f"writer {gen} stopped\n{scenario.reports([daemon, w])}")
                pytest.fail(
                    f"writer {gen}: {len(lines.lines)}/{want} acks within "
                    f"{2 * TIMEOUT} s\n{scenario.reports([daemon, w])}"
                )
            time.sleep(rng.uniform(0, 0.005 if want == 0 else 0.002))
            w.proc.send_signal(signal.SIGKILL)
            w.proc.wait()
            if w.proc.returncode != -signal.SIGKILL:
                pytest.fail(f"writer {gen} exited by itself\n{scenario.reports([daemon, w])}")
            lines.rest(TIMEOUT)
        acked += lines.lines
        if not last and daemon.poll() is not None:
            pytest.fail(f"the daemon stopped\n{scenario.reports([daemon, w])}")
    scenario.finish([daemon], timeout=2 * TIMEOUT)
    recorded = record.read_text().splitlines()
    missing = sorted(set(acked) - set(recorded), key=acked.index)
    assert not missing, f"{len(missing)} acknowledged keys never recorded: {missing[:10]}"
    assert len(set(recorded)) == len(recorded), "a key was recorded twice"
    print(f"daemon: {daemon.stderr().strip().splitlines()[-1]}")
    print(f"{len(acked)} keys acknowledged over {RESTARTS + 1} writers, {len(recorded)} recorded")


# ------------------------------------------------------------- 4. the GUI protocol's loop

GUI_MESSAGES = 3000  # each way; about 0.1 s (C-C) to 1-3 s (Py-Py) per test


@combos
def test_gui_loop(scenario: Scenario, combo: tuple[str, str]) -> None:
    """Messages both ways through poll(vchan fd + own pipe), wait(), data_ready() reads:
    every message arrives intact, no wait() blocks after the fd polled readable."""
    srv_lang, cli_lang = combo
    srv = scenario.start(srv_lang, "gui_loop", "server", "server", 0, 3, GUI_MESSAGES)
    cli = scenario.start(cli_lang, "gui_loop", "client", "client", 0, 3, GUI_MESSAGES)
    took = scenario.finish([srv, cli], timeout=4 * TIMEOUT)
    scenario.summary()
    print(f"{GUI_MESSAGES} messages each way in {took:.2f} s")
