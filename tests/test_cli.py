"""The ``vchan`` command, driven as a user would: real processes, pipes and shells."""

from __future__ import annotations

import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import vchan
from tests import _backends
from tests.conftest import CLIB, TIMEOUT, _build_clib, pattern, sock_path, wait_until

VCHAN = [sys.executable, "-m", "vchan"]


def env_for(sockdir: str, domain: int | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VCHAN_DOMAIN", None)
    env.pop("VCHAN_BACKEND", None)
    env.update(extra, VCHAN_SOCKET_DIR=sockdir)
    if domain is not None:
        env["VCHAN_DOMAIN"] = str(domain)
    # `vchan` on PATH for the shell pipelines: a tiny wrapper around this interpreter.
    env["PATH"] = f"{_wrapper_dir()}{os.pathsep}{env.get('PATH', '')}"
    return env


_WRAPPER: list[str] = []


def _wrapper_dir() -> str:
    if not _WRAPPER:
        import tempfile

        d = tempfile.mkdtemp(prefix="vcbin")
        script = Path(d) / "vchan"
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vchan "$@"\n')
        script.chmod(0o755)
        _WRAPPER.append(d)
    return _WRAPPER[0]


def run_cli(
    args: list[str], env: dict[str, str], input: bytes = b"", timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        VCHAN + args, env=env, input=input, capture_output=True, timeout=timeout, check=False
    )


def one_line_error(proc: subprocess.CompletedProcess[bytes] | tuple[int, bytes]) -> str:
    """The stderr of a failed command: exactly one line starting with 'vchan', no traceback."""
    err = proc.stderr if isinstance(proc, subprocess.CompletedProcess) else proc[1]
    text = err.decode()
    assert "Traceback" not in text, text
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    assert text.startswith("vchan"), text
    return text.strip()


def finish(proc: subprocess.Popen[bytes], timeout: float = TIMEOUT) -> tuple[int, bytes]:
    """Wait for ``proc`` (killing it on timeout); return (exit status, stderr)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err or b""


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes to kill if a test leaves them running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(TIMEOUT)


def make_tree(root: Path) -> None:
    rng = random.Random(7)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "empty-file").write_bytes(b"")
    (root / "big.bin").write_bytes(rng.randbytes(3_000_000))
    for i in range(40):
        (root / "sub" / f"f{i}.txt").write_bytes(rng.randbytes(rng.randrange(0, 20_000)))
    (root / "sub" / "deeper" / "x.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "sub" / "deeper" / "x.sh").chmod(0o755)
    (root / "link").symlink_to("sub/deeper/x.sh")


def tree_of(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    out: dict[str, tuple[str, bytes | str, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path), 0)
        elif path.is_dir():
            out[rel] = ("dir", b"", path.stat().st_mode & 0o777)
        else:
            out[rel] = ("file", path.read_bytes(), path.stat().st_mode & 0o777)
    return out


# --------------------------------------------------------------------------- basics


def test_version_and_help_everywhere(sockdir):
    env = env_for(sockdir)
    proc = run_cli(["--version"], env)
    assert proc.returncode == 0
    # the engine in use: the compiled one (built for the suite) unless the pure one is asked
    assert proc.stdout.decode().strip() == f"vchan {vchan.__version__} (speedups engine)"
    for forced in ({"VCHAN_PURE_PYTHON": "1"}, {"VCHAN_BACKEND": "python"}):
        proc = run_cli(["--version"], dict(env, **forced))
        assert proc.stdout.decode().strip() == f"vchan {vchan.__version__} (python engine)"
    for cmd in ([], ["listen"], ["connect"], ["ls"], ["demo"], ["bench"]):
        proc = run_cli([*cmd, "--help"], env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(b"usage: vchan"), proc.stdout
    text = run_cli(["connect", "--help"], env).stdout.decode()
    assert "--send-only" in text and "--receive-only" in text and "--on-eof" in text
    assert "no half-close" in text


def test_bench_subcommand_runs_the_checkout_benchmarks(sockdir):
    proc = run_cli(["bench", "--", "--help"], env_for(sockdir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"usage: python -m bench"), proc.stdout


def test_console_script_is_installed(sockdir):
    script = Path(sys.executable).parent / "vchan"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable} (package not installed)")
    proc = subprocess.run(
        [str(script), "--version"], capture_output=True, timeout=TIMEOUT, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith(b"vchan ")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["listen"],
        ["listen", "1"],
        ["listen", "x", "7"],
        ["listen", "40000", "7"],
        ["connect", "0", "-1"],
        ["connect", "0", "7", "--send-only", "--receive-only"],
        ["connect", "0", "7", "--timeout", "soon"],
        ["connect", "0", "7", "--on-eof", "never"],
        ["listen", "1", "7", "--read-min", "99999999"],
        ["demo", "--mib", "0"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(sockdir, args):
    proc = run_cli(args, env_for(sockdir))
    assert proc.returncode == 2
    assert b"usage: vchan" in proc.stderr
    assert b"Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("backend", _backends.names())
def test_tar_pipeline_round_trips_a_directory(sockdir, tmp_path, procs, backend):
    """`tar c . | vchan connect 0 7` in domain 1; `vchan listen 1 7 | tar x` in domain 0."""
    lib = _backends.backend_arg(backend)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    make_tree(src)
    receiver = subprocess.Popen(
        # pipefail: the status is vchan's or tar's, whichever failed
        ["bash", "-o", "pipefail", "-ec", 'vchan listen 1 7 | tar x -C "$1"', "sh", str(dst)],
        env=env_for(sockdir, 0, VCHAN_BACKEND=lib),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    procs.append(receiver)
    wait_until(lambda: sock_path(sockdir, 0, 1, 7).exists())
    sender = subprocess.Popen(
        ["bash", "-o", "pipefail", "-ec", 'cd "$1"; tar c . | vchan connect 0 7', "sh", str(src)],
        env=env_for(sockdir, 1, VCHAN_BACKEND=lib),
        stderr=subprocess.PIPE,
    )
    procs.append(sender)
    assert finish(sender) == (0, b"")
    assert finish(receiver) == (0, b"")
    assert tree_of(dst) == tree_of(src)
    assert os.listdir(sockdir) == []


def test_tar_pipeline_client_first_reverse_direction(sockdir, tmp_path, procs):
    """The client waits for the server; data flows from the server to the client."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    make_tree(src)
    receiver = subprocess.Popen(
        [
            "bash",
            "-o",
            "pipefail",
            "-ec",
            'vchan connect 0 7 </dev/null | tar x -C "$1"',
            "sh",
            str(dst),
        ],
        env=env_for(sockdir, 1),
        stderr=subprocess.PIPE,
    )
    procs.append(receiver)
    sender = subprocess.Popen(
        ["bash", "-o", "pipefail", "-ec", 'tar c -C "$1" . | vchan listen 1 7', "sh", str(src)],
        env=env_for(sockdir, 0),
        stderr=subprocess.PIPE,
    )
    procs.append(sender)
    assert finish(sender) == (0, b"")
    assert finish(receiver) == (0, b"")
    assert tree_of(dst) == tree_of(src)


def test_both_directions_at_once(sockdir, procs):
    """Large data both ways at the same time through pipes: no deadlock, no loss."""
    up, down = pattern(3_000_000, 1), pattern(3_000_000, 2)
    lst = subprocess.Popen(
        VCHAN + ["listen", "1", "7"],
        env=env_for(sockdir, 0),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.append(lst)
    wait_until(lambda: sock_path(sockdir, 0, 1, 7).exists())
    con = subprocess.Popen(
        VCHAN + ["connect", "0", "7"],
        env=env_for(sockdir, 1),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.append(con)
    assert lst.stdin and lst.stdout and con.stdin and con.stdout
    got: dict[str, bytes] = {}

    def feed(pipe: object, data: bytes) -> None:
        pipe.write(data)  # type: ignore[attr-defined]
        pipe.flush()  # type: ignore[attr-defined]

    def drain(name: str, pipe: object, n: int) -> None:
        buf = bytearray()
        while len(buf) < n:
            chunk = pipe.read1(n - len(buf))  # type: ignore[attr-defined]
            if not chunk:
                break
            buf += chunk
        got[name] = bytes(buf)

    threads = [
        threading.Thread(target=feed, args=(con.stdin, up), daemon=True),
        threading.Thread(target=feed, args=(lst.stdin, down), daemon=True),
        threading.Thread(target=drain, args=("up", lst.stdout, len(up)), daemon=True),
        threading.Thread(target=drain, args=("down", con.stdout, len(down)), daemon=True),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    assert got["up"] == up
    assert got["down"] == down
    # Everything was exchanged; the client's input ends, so it closes (auto) and the
    # server sees the end of the stream: both exit 0.
    con.stdin.close()
    assert con.wait(TIMEOUT) == 0
    assert lst.stdout.read() == b""
    assert lst.wait(TIMEOUT) == 0


def test_send_only_and_receive_only(sockdir, tmp_path, procs):
    data = pattern(2_000_000)
    (tmp_path / "in").write_bytes(data)
    out = tmp_path / "out"
    with open(out, "wb") as f:
        lst = subprocess.Popen(
            VCHAN + ["listen", "--receive-only", "1", "7"],
            env=env_for(sockdir, 0),
            stdout=f,
            stderr=subprocess.PIPE,
        )
    procs.append(lst)
    with open(tmp_path / "in", "rb") as f:
        con = subprocess.Popen(
            VCHAN + ["connect", "--send-only", "0", "7"],
            env=env_for(sockdir, 1),
            stdin=f,
            stderr=subprocess.PIPE,
        )
    procs.append(con)
    assert finish(con) == (0, b"")
    assert finish(lst) == (0, b"")
    assert out.read_bytes() == data


def test_send_only_empty_input_ends_the_stream(sockdir, procs):
    lst = subprocess.Popen(
        VCHAN + ["listen", "1", "7"],
        env=env_for(sockdir, 0),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.append(lst)
    proc = run_cli(["connect", "--send-only", "0", "7"], env_for(sockdir, 1))
    assert proc.returncode == 0, proc.stderr
    out, err = lst.communicate(timeout=TIMEOUT)
    assert (lst.returncode, out, err) == (0, b"", b"")


def test_on_eof_close_with_empty_input(sockdir, procs):
    lst = subprocess.Popen(
        VCHAN + ["listen", "--on-eof", "close", "1", "7"],
        env=env_for(sockdir, 0),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    procs.append(lst)
    proc = run_cli(["connect", "--receive-only", "0", "7"], env_for(sockdir, 1))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert finish(lst) == (0, b"")


def test_on_eof_wait_reads_the_whole_reply(sockdir):
    """A request, then the reply: --on-eof=wait keeps reading after the input ended."""
    reply = pattern(500_000)

    def serve() -> None:
        with vchan.server(1, 7) as srv:
            srv.wait()
            request = b""
            while not request.endswith(b"\n"):
                request += srv.read(100)
            srv.write(request.upper() + reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    wait_until(lambda: sock_path(sockdir, 0, 1, 7).exists())
    proc = run_cli(
        ["connect", "--on-eof", "wait", "0", "7"], env_for(sockdir, 1), input=b"get it\n"
    )
    t.join(TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"GET IT\n" + reply


def test_listen_with_the_c_backend(sockdir, tmp_path, procs):
    reason = _build_clib()
    if reason is not None:
        pytest.skip(reason)
    data = pattern(1_000_000)
    out = tmp_path / "out"
    with open(out, "wb") as f:  # not a pipe nobody reads while the sender runs
        lst = subprocess.Popen(
            VCHAN + ["listen", "--backend", str(CLIB), "-r", "1", "7"],
            env=env_for(sockdir, 0),
            stdout=f,
            stderr=subprocess.PIPE,
        )
    procs.append(lst)
    proc = run_cli(
        ["connect", "-s", "0", "7"], env_for(sockdir, 1, VCHAN_BACKEND=str(CLIB)), input=data
    )
    assert proc.returncode == 0, proc.stderr
    assert finish(lst) == (0, b"")
    assert out.read_bytes() == data


# --------------------------------------------------------------------------- failures


def test_peer_leaving_before_the_input_was_delivered(sockdir, procs):
    """A server that takes a little and leaves: the sender exits 1 with one line."""

    def serve() -> None:
        with vchan.server(1, 7) as srv:
            srv.wait()
            srv.read(10)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    wait_until(lambda: sock_path(sockdir, 0, 1, 7).exists())
    con = subprocess.Popen(
        VCHAN + ["connect", "--send-only", "0", "7"],
        env=env_for(sockdir, 1),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.append(con)
    assert con.stdin is not None
    try:
        while con.poll() is None:
            con.stdin.write(b"x" * 65536)  # an input that does not end
    except BrokenPipeError:
        pass
    code, err = finish(con)
    assert code == 1
    assert "peer closed the channel" in one_line_error((code, err))
    t.join(TIMEOUT)


def test_closed_stdout(sockdir, procs):
    lst = subprocess.Popen(
        VCHAN + ["listen", "-r", "0", "7"],
        env=env_for(sockdir, 0),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.append(lst)
    assert lst.stdout is not None
    with vchan.client(0, 7, timeout=TIMEOUT) as cli:
        cli.write(b"x" * 100)
        assert lst.stdout.read(100) == b"x" * 100
        lst.stdout.close()  # the consumer goes away
        try:
            while lst.poll() is None:
                cli.write(b"y" * 65536)
        except vchan.Disconnected:
            pass
    code, err = finish(lst)
    assert code == 1
    assert "standard output closed" in one_line_error((code, err))


def test_errors_are_one_line(sockdir):
    env = env_for(sockdir)
    proc = run_cli(["connect", "--timeout", "0.1", "0", "7"], env)
    assert proc.returncode == 1
    assert one_line_error(proc) == (
        "vchan: no server appeared within 0.1 s (server domain 0, client domain 0, port 7)"
    )
    proc = run_cli(["listen", "--timeout", "0.1", "0", "7"], env)
    assert proc.returncode == 1
    assert "no client connected within 0.1 s" in one_line_error(proc)
    assert os.listdir(sockdir) == []  # the socket file was removed
    missing = os.path.join(sockdir, "missing")
    for cmd in (["connect", "0", "7"], ["listen", "0", "7"], ["ls"]):
        proc = run_cli(cmd, env_for(missing))
        assert proc.returncode == 1
        assert f"socket directory {missing} does not exist" in one_line_error(proc)
    proc = run_cli(["listen", "1", "7"], env_for(sockdir, VCHAN_DOMAIN="x1"))
    assert proc.returncode == 1
    assert "VCHAN_DOMAIN" in one_line_error(proc)
    proc = run_cli(["connect", "--backend", "nosuch", "0", "7"], env)
    assert proc.returncode == 1
    assert "cannot load libvchan backend 'nosuch'" in one_line_error(proc)
    proc = run_cli(["connect", "0", "7"], env_for(sockdir, VCHAN_BACKEND="/no/such.so"))
    assert proc.returncode == 1
    assert "/no/such.so" in one_line_error(proc)
    (Path(sockdir) / "vchan.0.1.7.sock").write_text("not a socket")
    proc = run_cli(["listen", "1", "7"], env)
    assert proc.returncode == 1
    assert "not a vchan socket" in one_line_error(proc)
    long_dir = os.path.join(sockdir, "d" * 100)
    os.mkdir(long_dir)
    proc = run_cli(["listen", "1", "7"], env_for(long_dir))
    assert proc.returncode == 1
    assert "socket path too long" in one_line_error(proc)


def test_server_already_listening(sockdir):
    with vchan.server(1, 7):
        proc = run_cli(["listen", "1", "7"], env_for(sockdir))
    assert proc.returncode == 1
    assert "a server is already listening" in one_line_error(proc)


@pytest.mark.parametrize("cmd", [["listen", "1", "7"], ["connect", "0", "7"]])
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_exits_quietly(sockdir, procs, cmd, sig, status):
    proc = subprocess.Popen(
        VCHAN + [*cmd, "--verbose"],
        env=env_for(sockdir),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    procs.append(proc)
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith(b"vchan: ")  # listening / connecting
    proc.send_signal(sig)
    code, err = finish(proc)
    assert code == status
    assert err == b""
    assert os.listdir(sockdir) == []  # a listener removed its socket file


# --------------------------------------------------------------------------------- ls


def test_ls(sockdir, monkeypatch):
    d = Path(sockdir)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(d / "vchan.0.4.100.sock"))
    stale.close()  # the file stays: a stale channel
    (d / "vchan.9.9.9.sock").write_text("")  # a regular file named like a channel
    (d / "unrelated.sock").write_text("")
    (d / "vchan.x.1.2.sock").write_text("")
    monkeypatch.setenv("VCHAN_DOMAIN", "2")
    with vchan.server(3, 12345):
        env = env_for(sockdir)
        proc = run_cli(["ls", "--json"], env)
        assert proc.returncode == 0, proc.stderr
        entries = json.loads(proc.stdout)
        table = run_cli(["ls"], env)
    me = pwd.getpwuid(os.getuid()).pw_name
    assert [
        (e["server_domain"], e["client_domain"], e["port"], e["state"], e["listening"])
        for e in entries
    ] == [
        (0, 4, 100, "stale", False),
        (2, 3, 12345, "listening", True),
        (9, 9, 9, "not-a-socket", False),
    ]
    assert {e["owner"] for e in entries} == {me}
    assert {e["uid"] for e in entries} == {os.getuid()}
    assert entries[1]["path"] == str(d / "vchan.2.3.12345.sock")
    lines = table.stdout.decode().splitlines()
    assert lines[0].split() == ["SERVER", "CLIENT", "PORT", "OWNER", "STATE", "PATH"]
    assert lines[2].split()[:5] == ["2", "3", "12345", me, "listening"]
    assert len(lines) == 4
    # The server is gone: its file went with it.
    proc = run_cli(["ls", "--json", "--dir", sockdir], env_for("/nonexistent"))
    assert [e["port"] for e in json.loads(proc.stdout)] == [100, 9]


def test_ls_empty(sockdir):
    proc = run_cli(["ls"], env_for(sockdir))
    assert proc.returncode == 0
    assert proc.stdout.decode() == f"no channels in {sockdir}\n"
    assert json.loads(run_cli(["ls", "--json"], env_for(sockdir)).stdout) == []


# ------------------------------------------------------------------------------- demo


@pytest.mark.parametrize("backend", ["python", "speedups", "c"])
def test_demo(sockdir, backend):
    args = ["demo", "--mib", "8", "--pings", "200", "--backend", backend]
    if backend == "c":
        reason = _build_clib()
        if reason is not None:
            pytest.skip(reason)
        args[-1] = str(CLIB)
    proc = run_cli(args, env_for(sockdir), timeout=TIMEOUT * 3)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "\r" not in out  # not a terminal: plain lines, no progress-bar updates
    assert "server -> client  8 MiB" in out
    assert "verified by the client: OK" in out
    assert "ping-pong         200 round trips" in out
    assert out.rstrip().endswith("every byte verified")
    assert os.listdir(sockdir) == []


def test_demo_progress_bar_on_a_terminal(sockdir):
    """On a terminal the bar is redrawn, but throttled (not once per block)."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            VCHAN + ["demo", "--mib", "64", "--pings", "10"],
            env=env_for(sockdir),
            stdout=follower,
            stderr=subprocess.PIPE,
        )
        os.close(follower)
        out = bytearray()
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            out += chunk
        code, err = finish(proc)
    finally:
        os.close(leader)
    assert code == 0, err
    assert b"[##############################]" in out or b"every byte verified" in out
    # 64 MiB is 1024 blocks each way: without throttling there would be ~2048 redraws.
    assert out.count(b"\r") < 200
    assert b"every byte verified" in out


def test_python_m_vchan_without_install(sockdir):
    """`python -m vchan` works from a checkout (PYTHONPATH=src), as `make demo` uses it."""
    src = Path(__file__).resolve().parent.parent / "src"
    env = dict(env_for(sockdir), PYTHONPATH=str(src))
    proc = subprocess.run(
        [sys.executable, "-m", "vchan", "--version"],
        env=env,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0
    assert shutil.which("sh")


def test_bench_without_a_source_tree_says_so(monkeypatch, capsys):
    """An installed package has no bench/: `vchan bench` says it needs the source tree."""
    from vchan import cli
    from vchan.cli import tools

    monkeypatch.setattr(tools, "_checkout", lambda: None)
    assert cli.main(["bench"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vchan: vchan bench needs the source tree"), err
