"""The compiled engine, vchan._speedups: what the extension adds to the C library.

The conformance and reliability suites hold it to the SPEC like the other implementations
(``speedups`` in VCHAN_TEST_IMPLS); this file tests what is its own: Python signal handlers
during a call that sleeps without the GIL, fork, close() from another thread while a call
sleeps, interpreter shutdown with open channels, the buffer protocol, the choice of the
engine, the parameters only Python has (``allow_any_uid=``, ``timeout=``), and that it
exports nothing but its init function.
"""

from __future__ import annotations

import array
import errno
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import vchan
from tests.conftest import REPO, SETTLE, TIMEOUT, bounded, run_bg, sock_path, wait_until
from vchan import _core, _speedups
from vchan._speedups import Channel

ENGINES = {"python": _core.Channel, "speedups": Channel}


def pair(port: int, ring: int = 65536, cls: Any = Channel) -> tuple[Any, Any]:
    """A connected (server, client) of the engine ``cls``; the server's event settled."""
    srv = cls.server(0, port, ring, ring)
    cli = cls.client(0, port, timeout=TIMEOUT)
    wait_until(lambda: srv.is_open() == vchan.State.CONNECTED)
    settle(srv)
    return srv, cli


def readable(ch: Any, timeout: float = 0) -> bool:
    p = select.poll()
    p.register(ch.fileno(), select.POLLIN)
    return bool(p.poll(int(timeout * 1000)))


def settle(ch: Any) -> None:
    while readable(ch):
        ch.wait()


@pytest.fixture
def port() -> Iterator[int]:
    yield random.randrange(1000, 30000)


# ----------------------------------------------------------------------------------- signals
#
# Python runs signal handlers in the main thread, between bytecodes. A call that sleeps in C
# without the GIL must let them run (the library's interrupt hook): a handler that raises
# ends the call with its exception (Ctrl-C is KeyboardInterrupt); one that returns lets the
# call go on, to its normal result, with no byte lost or repeated.


class Interrupted(Exception):
    pass


class Interrupter:
    """SIGUSR1 to the main thread every ``interval`` s from a helper thread, after ``delay``
    (by then the main thread sleeps in the call under test)."""

    def __init__(self, raising: bool, delay: float = SETTLE, interval: float = 0.02) -> None:
        self.raising = raising
        self.count = 0
        self._main = threading.get_ident()
        self._delay = delay
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _handler(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.raising:
            # Once: a signal still in flight must not raise again after the call ended.
            self.raising = False
            self._stop.set()
            raise Interrupted

    def _run(self) -> None:
        if self._stop.wait(self._delay):
            return
        while not self._stop.is_set():
            signal.pthread_kill(self._main, signal.SIGUSR1)
            self._stop.wait(self._interval)

    def __enter__(self) -> Interrupter:
        self._old = signal.signal(signal.SIGUSR1, self._handler)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        signal.signal(signal.SIGUSR1, self._old)


@dataclass
class Blocked:
    """A call that sleeps until ``unblock()``; ``check(result)`` after it returned; after
    an interrupted call, ``recover()`` shows the channel kept its bytes."""

    call: Callable[[], Any]
    unblock: Callable[[], Any]
    check: Callable[[Any], None]
    recover: Callable[[], None] = lambda: None
    closing: list[Any] = field(default_factory=list)


def _recv(port: int, partial: bool) -> Blocked:
    srv, cli = pair(port)
    buf = bytearray(10)
    head = b"012" if partial else b""
    if head:
        assert cli.send(head, len(head)) == len(head)
        wait_until(lambda: srv.data_ready() == 3)

    def check(n: Any) -> None:
        assert n == 10 and buf == b"0123456789"

    def recover() -> None:
        cli.send(b"0123456789"[len(head) :], 10 - len(head))
        check(srv.recv(buf, 10))  # the bytes taken before the signal were kept, in order

    return Blocked(
        lambda: srv.recv(buf, 10),
        lambda: cli.send(b"0123456789"[len(head) :], 10 - len(head)),
        check,
        recover,
        [srv, cli],
    )


def _read(port: int) -> Blocked:
    srv, cli = pair(port)
    buf = bytearray(10)

    def check(n: Any) -> None:
        assert n == 5 and buf[:5] == b"hello"

    def recover() -> None:
        cli.send(b"hello", 5)
        check(srv.read(buf, 10))

    return Blocked(
        lambda: srv.read(buf, 10), lambda: cli.send(b"hello", 5), check, recover, [srv, cli]
    )


def _wait(port: int) -> Blocked:
    srv, cli = pair(port)

    def recover() -> None:
        cli.send(b"x", 1)
        assert bounded(srv.wait) == 0
        assert srv.data_ready() == 1

    return Blocked(srv.wait, lambda: cli.send(b"x", 1), lambda r: None, recover, [srv, cli])


def _write(port: int) -> Blocked:
    srv, cli = pair(port)
    total = 8 << 20
    data = bytes(range(256)) * (total // 256)
    got = bytearray()

    def drain() -> None:
        buf = bytearray(65536)
        while len(got) < total:
            n = cli.read(buf, len(buf))
            got.extend(buf[:n])

    def check(n: Any) -> None:
        wait_until(lambda: len(got) == total)
        assert n == total and got == data

    return Blocked(lambda: srv.write(data, total), drain, check, closing=[srv, cli])


def _accept(port: int) -> Blocked:
    srv = Channel.server(0, port, 0, 0)
    buf = bytearray(2)
    clients: list[Any] = []

    def connect() -> None:
        clients.append(Channel.client(0, port, timeout=TIMEOUT))
        clients[0].send(b"hi", 2)

    def check(n: Any) -> None:
        assert n == 2 and buf == b"hi"
        for c in clients:
            c.close()

    def recover() -> None:
        assert srv.is_open() == vchan.State.WAITING
        connect()
        check(bounded(srv.recv, buf, 2))

    return Blocked(lambda: srv.recv(buf, 2), connect, check, recover, [srv])


def _connect(port: int, timeout: float | None) -> Blocked:
    servers: list[Any] = []

    def check(cli: Any) -> None:
        assert cli.is_open() == vchan.State.CONNECTED
        cli.close()

    return Blocked(
        lambda: Channel.client(0, port, timeout=timeout),
        lambda: servers.append(Channel.server(0, port, 0, 0)),
        check,
        closing=servers,
    )


BLOCKING_CALLS: dict[str, Callable[[int], Blocked]] = {
    "recv": lambda port: _recv(port, partial=False),
    "recv-after-partial-data": lambda port: _recv(port, partial=True),
    "read": _read,
    "wait": _wait,
    "write-beyond-the-kernel": _write,
    "recv-on-a-waiting-server": _accept,
    "client-waiting-for-server": lambda port: _connect(port, None),
    "client-waiting-with-timeout": lambda port: _connect(port, TIMEOUT * 3),
}


@pytest.mark.parametrize("name", BLOCKING_CALLS)
def test_raising_signal_handler_ends_a_blocking_call(sockdir, port, name):
    """The KeyboardInterrupt case: the handler's exception comes out of the call."""
    blocked = BLOCKING_CALLS[name](port)
    try:
        t0 = time.monotonic()
        with Interrupter(raising=True) as intr, pytest.raises(Interrupted):
            blocked.call()
        assert intr.count >= 1
        assert time.monotonic() - t0 < TIMEOUT
        blocked.recover()
    finally:
        for ch in blocked.closing:
            ch.close()


@pytest.mark.parametrize("name", BLOCKING_CALLS)
def test_returning_signal_handler_lets_the_call_complete(sockdir, port, name):
    """Handlers run while the call sleeps (three of them before the call can complete),
    and the call then completes normally."""
    blocked = BLOCKING_CALLS[name](port)
    try:
        with Interrupter(raising=False) as intr:

            def unblock_after_three_handlers() -> None:
                wait_until(lambda: intr.count >= 3)
                blocked.unblock()

            helper = run_bg(unblock_after_three_handlers)
            result = blocked.call()
            helper.result()
        blocked.check(result)
    finally:
        for ch in blocked.closing:
            ch.close()


def test_signal_handler_may_close_the_channel(sockdir, port):
    """A handler that closes the channel its call sleeps on: the call ends with EBADF."""
    srv, cli = pair(port)
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: srv.close())
    try:
        main = threading.get_ident()
        timer = threading.Timer(SETTLE, signal.pthread_kill, (main, signal.SIGUSR1))
        timer.start()
        with pytest.raises(OSError) as info:
            srv.recv(bytearray(4), 4)
        assert info.value.errno == errno.EBADF
        timer.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
        cli.close()


def test_ctrl_c_interrupts_a_blocking_recv_in_a_program(sockdir, port):
    """SIGINT to a program blocked in Vchan.recv() raises KeyboardInterrupt there."""
    script = textwrap.dedent(f"""
        import sys, vchan
        assert vchan.ENGINE == "speedups"
        srv = vchan.server(0, {port})
        cli = vchan.client(0, {port}, timeout=10)
        print("blocking", flush=True)
        try:
            srv.recv(10)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            cli.send(b"ok")
            print(srv.recv(2).decode(), flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(sockdir),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"blocking\n"
        time.sleep(SETTLE)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out == b"KeyboardInterrupt\nok\n", err.decode()


def test_signal_to_another_thread_does_not_disturb_its_call(sockdir, port):
    """A thread other than the main one runs no handler: its call just goes on."""
    srv, cli = pair(port)
    got: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        buf = bytearray(3)
        bg = run_bg(srv.recv, buf, 3)
        bg.assert_blocked()
        for _ in range(20):
            signal.pthread_kill(bg.thread.ident, signal.SIGUSR1)
            time.sleep(0.005)
        bg.assert_blocked(0.05)
        cli.send(b"abc", 3)
        assert bg.result() == 3 and buf == b"abc"
    finally:
        signal.signal(signal.SIGUSR1, old)
        srv.close()
        cli.close()


# -------------------------------------------------------------- close from another thread


# (client() returns no channel to close before it connected: see the next test)
@pytest.mark.parametrize("name", [n for n in BLOCKING_CALLS if not n.startswith("client")])
def test_close_from_another_thread_wakes_the_call_with_ebadf(sockdir, port, name):
    blocked = BLOCKING_CALLS[name](port)
    ch = blocked.closing[0]
    try:
        bg = run_bg(blocked.call)
        bg.assert_blocked()
        ch.close()
        with pytest.raises(OSError) as info:
            bg.result()
        assert info.value.errno == errno.EBADF
        assert ch.closed
        with pytest.raises(OSError) as info:
            ch.data_ready()
        assert info.value.errno == errno.EBADF
    finally:
        for c in blocked.closing:
            c.close()


@pytest.mark.parametrize("timeout", [None, TIMEOUT * 3])
def test_close_wakes_a_blocked_finish(sockdir, port, timeout):
    ch = Channel.client_start(0, port)
    bg = run_bg(ch.finish, True, timeout)
    bg.assert_blocked()
    ch.close()
    with pytest.raises(OSError) as info:
        bg.result()
    assert info.value.errno == errno.EBADF


def _loop(call: Callable[[], Any]) -> None:
    while True:
        call()


def test_close_races_with_calls(sockdir, port):
    """close() at random moments of calls in four threads: EBADF or a normal result, never
    a crash or a hang (the handle outlives the calls; the sanitizer run checks memory)."""
    for i in range(40):
        srv, cli = pair(port + i % 7)
        buf = bytearray(1000)
        bgs = [
            run_bg(_loop, lambda s=srv, b=buf: s.read(b, 1000)),
            run_bg(_loop, lambda c=cli: c.write(b"x" * 5000, 5000)),
            run_bg(_loop, lambda s=srv: (s.data_ready(), s.buffer_space(), s.is_open())),
            run_bg(_loop, cli.wait),
        ]
        time.sleep(random.random() * 0.01)
        (srv if i % 2 else cli).close()
        (cli if i % 2 else srv).close()
        for bg in bgs:
            bg.thread.join(TIMEOUT)
            assert bg.done()
            assert isinstance(bg.exc, (OSError, ValueError)), bg.exc


# ------------------------------------------------------------------------------------- fork


def _child(fn: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_fork_child_closing_its_copy_leaves_the_parent_alone(sockdir, port):
    srv, cli = pair(port)
    cli.send(b"before", 6)

    def child() -> None:
        srv.close()
        cli.close()

    assert _child(child) == 0
    assert srv.is_open() == cli.is_open() == vchan.State.CONNECTED
    buf = bytearray(6)
    assert srv.recv(buf, 6) == 6 and buf == b"before"
    srv.send(b"after", 5)
    assert bounded(cli.recv, buf, 5) == 5 and buf[:5] == b"after"
    srv.close()
    cli.close()


def test_fork_child_closing_a_waiting_server_keeps_it_listening(sockdir, port):
    srv = Channel.server(0, port, 0, 0)
    path = sock_path(sockdir, 0, 0, port)
    assert _child(srv.close) == 0
    assert path.exists(), "the child unlinked the parent's socket"
    cli = Channel.client(0, port, timeout=TIMEOUT)
    wait_until(lambda: srv.is_open() == vchan.State.CONNECTED)
    cli.close()
    srv.close()


def test_fork_child_exiting_with_open_channels_leaves_the_parent_alone(sockdir, port):
    """The child's interpreter shuts down with the inherited channels open (they are
    deallocated, so closed, in the child): the parent's channel is undisturbed."""
    script = textwrap.dedent(f"""
        import os, sys, vchan
        srv = vchan.server(0, {port})
        cli = vchan.client(0, {port}, timeout=10)
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # interpreter shutdown in the child, channels still open
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        cli.send(b"still here")
        assert srv.recv(10) == b"still here"
        assert srv.is_open() and cli.is_open()
        print("ok")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        env=_child_env(sockdir),
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"ok\n"


# ------------------------------------------------------------------- interpreter shutdown


def _child_env(sockdir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VCHAN_BACKEND", "VCHAN_DOMAIN")}
    env["VCHAN_SOCKET_DIR"] = sockdir
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


SHUTDOWN_SCRIPT = """
import os, sys, threading, time
from tests import _speedups
_speedups.preload()
from vchan._speedups import Channel
PORT = {port}
# a connected pair whose overflow holds bytes (the pusher is running)
srv = Channel.server(0, PORT, 65536, 65536)
cli = Channel.client(0, PORT, timeout=10)
srv.set_blocking(False)
while srv.buffer_space() and srv.write(b"x" * 65536, 65536):
    pass
# a WAITING server, a client still connecting, a closed channel
waiting = Channel.server(0, PORT + 1, 0, 0)
pending = Channel.client_start(0, PORT + 2)
closed = Channel.server(0, PORT + 3, 0, 0)
closed.close()
# daemon threads asleep in calls without the GIL
a, b = Channel.server(0, PORT + 4, 0, 0), None
b = Channel.client(0, PORT + 4, timeout=10)
threading.Thread(target=a.recv, args=(bytearray(10), 10), daemon=True).start()
threading.Thread(target=b.wait, daemon=True).start()
threading.Thread(target=waiting.read, args=(bytearray(1), 1), daemon=True).start()
threading.Thread(target=pending.finish, args=(True,), daemon=True).start()
threading.Thread(target=Channel.client, args=(0, PORT + 5), daemon=True).start()
# a reference cycle holding a channel, left to the garbage collector at exit
cycle = [Channel.server(0, PORT + 6, 0, 0)]
cycle.append(cycle)
time.sleep(0.2)
print("exiting", flush=True)
{how}
"""


@pytest.mark.parametrize(
    "how", ["", "sys.exit(0)", "raise SystemExit(0)", "threading.Thread(target=cli.close).start()"]
)
def test_interpreter_shutdown_with_open_channels(sockdir, port, how):
    """Exit with channels in every state and daemon threads asleep in calls: exit status
    0, nothing on stderr (no crash, no fatal error, no hang)."""
    script = SHUTDOWN_SCRIPT.format(port=port, how=how)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        cwd=REPO,
        env=_child_env(sockdir),
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"exiting\n"
    assert proc.stderr == b""


# ---------------------------------------------------------------------- buffer protocol


def test_memoryview_slices_in_and_out(sockdir, port):
    srv, cli = pair(port)
    try:
        src = bytearray(b"....payload....")
        assert cli.send(memoryview(src)[4:11], 7) == 7
        dst = bytearray(b"ABCDEFGHIJ")
        assert srv.recv(memoryview(dst)[2:9], 7) == 7
        assert dst == b"ABpayloadJ"  # exactly the slice, nothing around it
        # any contiguous buffer, any item size: sizes count bytes
        ints = array.array("i", [1, 2, 3])
        assert cli.write(ints, ints.itemsize * 3) == 12
        out = array.array("i", [0, 0, 0])
        assert srv.recv(out, 12) == 12 and out.tolist() == [1, 2, 3]
        assert cli.send(memoryview(b"xyz").toreadonly(), 3) == 3  # read-only is fine to send
        assert srv.read(memoryview(dst), 10) == 3 and dst[:3] == b"xyz"
        # a size smaller than the buffer uses its start only
        assert cli.send(b"123456", 2) == 2
        assert srv.recv(dst, 2) == 2 and dst[:3] == b"12z"
    finally:
        srv.close()
        cli.close()


def test_non_contiguous_buffers_are_refused_clearly(sockdir, port):
    srv, cli = pair(port)
    try:
        for call, buf in (
            (cli.send, memoryview(b"abcdef")[::2]),
            (cli.write, memoryview(bytearray(6))[::2]),
            (srv.recv, memoryview(bytearray(6))[::2]),
            (srv.read, memoryview(bytearray(6))[::2]),
        ):
            with pytest.raises(TypeError, match="contiguous"):
                call(buf, 3)
        assert srv.data_ready() == 0  # nothing was sent
    finally:
        srv.close()
        cli.close()


def test_read_only_buffers_are_refused_by_reads(sockdir, port):
    srv, cli = pair(port)
    try:
        cli.send(b"abc", 3)
        wait_until(lambda: srv.data_ready() == 3)
        for buf in (b"xyz", memoryview(bytearray(3)).toreadonly(), memoryview(b"xyz")):
            for call in (srv.recv, srv.read):
                with pytest.raises(TypeError, match="writable"):
                    call(buf, 3)
        assert srv.data_ready() == 3  # nothing was consumed
        with pytest.raises(TypeError):
            srv.recv(42, 3)  # not a buffer at all
        with pytest.raises(TypeError):
            cli.send("text", 4)
    finally:
        srv.close()
        cli.close()


def test_sizes_outside_the_buffer_are_refused(sockdir, port):
    srv, cli = pair(port)
    try:
        for call in (srv.recv, srv.read, cli.send, cli.write):
            with pytest.raises(ValueError):
                call(bytearray(4), 5)
            with pytest.raises(ValueError):
                call(bytearray(4), -1)
            assert call(bytearray(4), 0) == 0
        with pytest.raises(TypeError):
            srv.recv(bytearray(4), "4")
    finally:
        srv.close()
        cli.close()


def test_buffer_stays_exported_while_a_call_sleeps(sockdir, port):
    """A bytearray a blocked recv fills cannot be resized meanwhile (BufferError), so the
    call never writes into freed memory."""
    srv, cli = pair(port)
    try:
        buf = bytearray(4)
        bg = run_bg(srv.recv, buf, 4)
        bg.assert_blocked()
        with pytest.raises(BufferError):
            buf.extend(b"more")
        cli.send(b"data", 4)
        assert bg.result() == 4 and buf == b"data"
        buf.extend(b"more")  # released after the call
    finally:
        srv.close()
        cli.close()


def test_vchan_over_speedups_takes_any_buffer(sockdir, port):
    with (
        vchan.server(0, port, backend="speedups") as srv,
        vchan.client(0, port, timeout=TIMEOUT, backend="speedups") as cli,
    ):
        assert isinstance(srv._endpoint(), Channel)
        cli.write(memoryview(b"--hello--")[2:7])
        view = memoryview(bytearray(9))
        assert srv.readinto(view[2:7]) == 5 and bytes(view) == b"\0\0hello\0\0"
        cli.send(array.array("h", [7, 8]))
        assert srv.recv(4) == array.array("h", [7, 8]).tobytes()


def _hot_calls_transcript(port: int, backend: str) -> list[object]:
    """Every outcome of the Vchan methods the compiled engine binds (channel._HOT): values,
    and exceptions as (type, message, cause, suppressed context)."""
    out: list[object] = []

    def do(call: Callable[[], object]) -> None:
        try:
            out.append(call())
        except TypeError:  # the engines word a wrong buffer type each their own way
            out.append(TypeError)
        except Exception as exc:
            out.append((type(exc), str(exc), exc.__cause__, exc.__suppress_context__))

    srv = vchan.server(0, port, 4096, 4096, backend=backend)
    cli = vchan.client(0, port, timeout=TIMEOUT, backend=backend)
    if backend == "speedups":
        assert vars(srv)["recv"] == srv._endpoint().api_recv  # bound over the methods
    else:
        assert "recv" not in vars(srv)
    buf = bytearray(8)
    do(lambda: cli.send(b"hello"))
    do(lambda: cli.write(memoryview(b"--abc--")[2:5]))
    do(srv.wait)
    do(srv.data_ready)
    do(lambda: srv.recv(2))
    do(lambda: srv.readinto(buf))
    do(lambda: bytes(buf))
    do(lambda: srv.recv(0))
    do(lambda: srv.readinto(bytearray()))
    do(lambda: srv.write(b""))
    do(lambda: srv.send(b""))
    do(lambda: srv.recv(-1))
    do(lambda: srv.recv(5000))  # more than the read ring: MessageTooLong
    do(lambda: srv.send(bytes(5000)))
    do(lambda: srv.readinto(b"read-only"))
    srv.set_blocking(False)
    do(lambda: srv.recv(1))
    do(lambda: srv.readinto(buf))
    do(lambda: srv.send(bytes(4096)))
    do(lambda: srv.send(b"x"))  # the ring is full
    do(lambda: srv.write(b"x"))
    cli.close()
    wait_until(lambda: srv.state == vchan.State.DISCONNECTED)
    do(lambda: srv.readinto(buf))  # the end of the stream: 0
    do(lambda: srv.recv(1))
    do(lambda: srv.send(b"x"))
    do(lambda: srv.write(b"x"))
    do(srv.data_ready)
    srv.close()
    for call in (srv.wait, srv.data_ready, lambda: srv.recv(1), lambda: srv.readinto(buf)):
        do(call)
    do(lambda: srv.send(b"x"))
    do(lambda: srv.write(b"x"))
    do(lambda: srv.recv(0))
    return out


def test_bound_hot_methods_behave_as_the_pythonic_api(sockdir, port):
    pure = _hot_calls_transcript(port, "python")
    compiled = _hot_calls_transcript(port + 1, "speedups")
    for i, (a, b) in enumerate(zip(pure, compiled, strict=True)):
        assert a == b, (i, a, b)


def test_a_vchan_subclass_keeps_its_own_methods(sockdir, port):
    class Counting(vchan.Vchan):
        calls = 0

        def recv(self, size: int) -> bytes:
            Counting.calls += 1
            return super().recv(size)

    srv = vchan.server(0, port, backend="speedups")
    try:
        ch = Counting(srv._endpoint())
        assert "recv" not in vars(ch)
        ch.set_blocking(False)
        with pytest.raises(BlockingIOError):
            ch.recv(1)
        assert Counting.calls == 1
    finally:
        srv.close()


# -------------------------------------------------------------- engine surface and choice


@pytest.mark.parametrize("engine", ENGINES)
def test_same_errors_as_the_pure_engine(sockdir, port, engine):
    cls = ENGINES[engine]
    with pytest.raises(OSError) as info:
        cls.server(-1, port, 0, 0)
    assert info.value.errno == errno.EINVAL and "domain -1 out of range" in str(info.value)
    with pytest.raises(OSError) as info:
        cls.server(0, port, 1 << 21, 0)
    assert info.value.errno == errno.EINVAL and "read_min" in str(info.value)
    with pytest.raises(OSError) as info:
        cls.client(0, port, timeout=0.05)
    assert info.value.errno == errno.ETIMEDOUT
    srv = cls.server(0, port, 0, 0)
    assert (srv.read_ring, srv.write_ring, srv.is_server) == (1024, 2048, True)
    assert srv.state == vchan.State.WAITING and srv.blocking and not srv.closed
    with pytest.raises(OSError) as info:
        cls.server(0, port, 0, 0)
    assert info.value.errno == errno.EADDRINUSE and str(sock_path(sockdir, 0, 0, port)) in str(
        info.value
    )
    cli = cls.client(0, port, timeout=TIMEOUT)
    wait_until(lambda: srv.is_open() == vchan.State.CONNECTED)
    cli.close()
    wait_until(lambda: srv.is_open() == vchan.State.DISCONNECTED)
    with pytest.raises(BrokenPipeError):
        srv.send(b"x", 1)
    with pytest.raises(BrokenPipeError):
        srv.read(bytearray(1), 1)
    srv.close()
    srv.close()  # twice is harmless
    assert srv.closed
    for call in (
        srv.wait,
        srv.fileno,
        srv.is_open,
        srv.data_ready,
        srv.buffer_space,
        lambda: srv.set_blocking(False),
        lambda: srv.read(bytearray(1), 1),
        lambda: srv.recv(bytearray(1), 1),
        lambda: srv.write(b"x", 1),
        lambda: srv.send(b"x", 1),
        lambda: srv.finish(True),
    ):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF, call


@pytest.mark.parametrize("engine", ENGINES)
def test_emsgsize_messages(sockdir, port, engine):
    srv, cli = pair(port, 4096, ENGINES[engine])
    try:
        with pytest.raises(OSError, match="recv of 5000 bytes exceeds the read ring") as info:
            srv.recv(bytearray(5000), 5000)
        assert info.value.errno == errno.EMSGSIZE
        with pytest.raises(OSError, match="send of 5000 bytes exceeds the write ring"):
            srv.send(bytes(5000), 5000)
    finally:
        srv.close()
        cli.close()


def _engine_of(env: dict[str, str], code: str = "") -> list[str]:
    script = (
        "import sys, vchan\nprint(vchan.ENGINE)\nprint('vchan._speedups' in sys.modules)\n" + code
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env=env, timeout=TIMEOUT, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().split()


@pytest.mark.parametrize(
    ("extra", "engine", "imported"),
    [
        ({}, "speedups", "True"),
        ({"VCHAN_PURE_PYTHON": "1"}, "python", "False"),
        ({"VCHAN_PURE_PYTHON": "0"}, "speedups", "True"),
        ({"VCHAN_BACKEND": "python"}, "python", "False"),
        ({"VCHAN_BACKEND": "speedups"}, "speedups", "True"),
    ],
)
def test_engine_choice(sockdir, extra, engine, imported):
    env = _child_env(sockdir)
    env.pop("VCHAN_PURE_PYTHON", None)
    env.update(extra)
    code = (
        "import vchan.libvchan as lv\n"
        "h = lv.libvchan_server_init(0, 1, 0, 0)\n"
        "print(type(h).__module__)\n"
    )
    module = {"speedups": "vchan._speedups", "python": "vchan._core"}[engine]
    assert _engine_of(env, code) == [engine, imported, module]


def test_explicit_speedups_wins_over_the_environment(sockdir):
    env = dict(_child_env(sockdir), VCHAN_PURE_PYTHON="1")
    code = "ch = vchan.server(0, 1, backend='speedups')\nprint(type(ch._endpoint()).__module__)\n"
    assert _engine_of(env, code) == ["python", "False", "vchan._speedups"]


def test_missing_extension_means_the_pure_engine(sockdir, tmp_path):
    """Where the extension was not built, vchan runs on the pure engine, and asking for
    it by name is a clear error."""
    hide = tmp_path / "hide"
    hide.mkdir()
    # a vchan package without the extension: a copy of the sources, no .so
    pkg = hide / "vchan"
    pkg.mkdir()
    for p in (REPO / "src" / "vchan").rglob("*.py"):
        dest = pkg / p.relative_to(REPO / "src" / "vchan")
        dest.parent.mkdir(exist_ok=True)
        dest.write_bytes(p.read_bytes())
    env = dict(_child_env(sockdir), PYTHONPATH=str(hide))
    env.pop("VCHAN_PURE_PYTHON", None)
    code = (
        f"print(vchan.__file__.startswith({str(hide)!r}))\n"
        "try:\n    vchan.server(0, 1, backend='speedups')\n"
        "except vchan.InvalidArgument as e:\n    print('speedups' in str(e))\n"
    )
    assert _engine_of(env, code) == ["python", "False", "True", "True"]


def test_the_build_under_test():
    """The suite runs the extension it means to: $VCHAN_TEST_SPEEDUPS (the sanitizer
    build) if set, else the in-place build of the current sources (tests/_speedups.py)."""
    from tests import _speedups as build

    forced = os.environ.get(build.ENV)
    assert _speedups.__file__ == (forced or str(build.SO))
    if not forced:
        assert not build.stale()


def test_extension_exports_only_its_init_function():
    out = subprocess.run(
        ["nm", "-D", "--defined-only", _speedups.__file__],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert [line.split()[-1] for line in out.splitlines()] == ["PyInit__speedups"]


# --------------------------------------------------------- parameters only Python has


def _nobody_or_skip() -> Any:
    from tests.reliability.test_security import _nobody

    return _nobody()


def _exited(pid: int, call: Callable[[], Any]) -> list[int] | None:
    """Make ``call``, then ``[exit code]`` of the child ``pid`` if it ended (else None)."""
    call()
    got, status = os.waitpid(pid, os.WNOHANG)
    return [os.waitstatus_to_exitcode(status)] if got else None


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("env", "arg", "accepted"),
    [(None, True, True), ("1", False, False), ("1", None, True), (None, None, False)],
)
def test_allow_any_uid_argument_server(sockdir, port, engine, env, arg, accepted, monkeypatch):
    from tests.reliability.test_security import _as_nobody, _intruder, _reap, _signalled

    nobody = _nobody_or_skip()
    if env is None:
        monkeypatch.delenv("VCHAN_ALLOW_ANY_UID", raising=False)
    else:
        monkeypatch.setenv("VCHAN_ALLOW_ANY_UID", env)
    os.chmod(sockdir, 0o777)
    old = os.umask(0)
    try:
        srv = ENGINES[engine].server(0, port, 0, 0, allow_any_uid=arg)
    finally:
        os.umask(old)
    path = str(sock_path(sockdir, 0, 0, port))
    try:
        pid, ready = _as_nobody(_intruder(path, b"guest", b"welcome"), nobody)
        try:
            assert _signalled(ready)
            if accepted:
                wait_until(lambda: srv.is_open() == vchan.State.CONNECTED)
                buf = bytearray(5)
                assert bounded(srv.recv, buf, 5) == 5 and buf == b"guest"
                srv.send(b"welcome", 7)
                code = _reap(pid)
            else:  # every call tries the accept: is_open() refuses the intruder
                code = wait_until(lambda: _exited(pid, srv.is_open))[0]
        finally:
            os.close(ready)
        assert code == (10 if accepted else 0), f"child code {code}"
        if not accepted:
            assert srv.is_open() == vchan.State.WAITING
    finally:
        srv.close()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("env", "arg", "accepted"), [(None, True, True), ("1", False, False)])
def test_allow_any_uid_argument_client(sockdir, port, engine, env, arg, accepted, monkeypatch):
    from tests.reliability.test_security import _as_nobody, _impostor, _reap, _signalled

    nobody = _nobody_or_skip()
    if env is None:
        monkeypatch.delenv("VCHAN_ALLOW_ANY_UID", raising=False)
    else:
        monkeypatch.setenv("VCHAN_ALLOW_ANY_UID", env)
    os.chmod(sockdir, 0o777)
    pid, ready = _as_nobody(_impostor(str(sock_path(sockdir, 0, 0, port))), nobody)
    try:
        assert _signalled(ready)
        if accepted:
            cli = ENGINES[engine].client(0, port, timeout=TIMEOUT, allow_any_uid=arg)
            buf = bytearray(4)
            assert bounded(cli.recv, buf, 4) == 4 and buf == b"fake"
            cli.close()
        else:
            with pytest.raises(PermissionError, match="untrusted uid"):
                ENGINES[engine].client(0, port, timeout=TIMEOUT, allow_any_uid=arg)
        assert _reap(pid) == 0
    finally:
        os.close(ready)
