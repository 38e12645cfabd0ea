"""SPEC §7 (errors and hostile input), and §2's SIGPIPE / EINTR rules."""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import sys
import tempfile
import threading
import time

import pytest

from tests.conftest import (
    TIMEOUT,
    VCHAN_CONNECTED,
    VCHAN_DISCONNECTED,
    bounded,
    connected_pair,
    pattern,
    read_all_until_eof,
    read_exact,
    run_bg,
    scaled,
    sock_path,
    wait_until,
)


class _OsOutput:
    """Capture what is written to fds 1 and 2 at the OS level."""

    def __enter__(self) -> _OsOutput:
        sys.stdout.flush()
        sys.stderr.flush()
        self.tmp = tempfile.TemporaryFile()
        self.saved = (os.dup(1), os.dup(2))
        os.dup2(self.tmp.fileno(), 1)
        os.dup2(self.tmp.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        self.tmp.seek(0)
        self.text = self.tmp.read()
        self.tmp.close()


def test_must_library_prints_nothing_on_errors(api, sockdir, monkeypatch):
    buf = bytearray(100000)
    with _OsOutput() as out:
        # bad environment and arguments
        monkeypatch.setenv("VCHAN_DOMAIN", "abc")
        assert api.libvchan_server_init(0, 1, 0, 0) is None
        assert api.libvchan_client_init(0, 1) is None
        monkeypatch.delenv("VCHAN_DOMAIN")
        assert api.libvchan_server_init(-1, 1, 0, 0) is None
        assert api.libvchan_server_init(0, 1, 1 << 21, 0) is None
        monkeypatch.setenv("VCHAN_SOCKET_DIR", os.path.join(sockdir, "x" * 120))
        assert api.libvchan_server_init(0, 1, 0, 0) is None
        assert api.libvchan_client_init(0, 1) is None
        monkeypatch.setenv("VCHAN_SOCKET_DIR", os.path.join(sockdir, "missing"))
        assert api.libvchan_server_init(0, 1, 0, 0) is None
        assert api.libvchan_client_init(0, 1) is None
        monkeypatch.setenv("VCHAN_SOCKET_DIR", sockdir)
        sock_path(sockdir, 0, 0, 2).write_bytes(b"file")
        assert api.libvchan_server_init(0, 2, 0, 0) is None
        # data calls that fail
        srv, cli = connected_pair(api)
        assert api.libvchan_recv(srv, buf, 2000) == -1
        assert api.libvchan_send(srv, buf, 3000) == -1
        api.libvchan_close(cli)
        wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_DISCONNECTED)
        assert api.libvchan_read(srv, buf, 10) == -1
        assert api.libvchan_recv(srv, buf, 10) == -1
        assert api.libvchan_write(srv, buf, 10) == -1
        assert api.libvchan_send(srv, buf, 10) == -1
        api.libvchan_close(srv)
    assert out.text == b"", f"library printed {out.text[:500]!r}"


def _restore(signum: int, old: object) -> None:
    """Put back a signal's disposition after a storm of it. Not SIG_DFL (terminate): a
    signal still on its way to another thread would kill the test process; SIG_IGN also
    drops any left pending."""
    signal.signal(signum, signal.SIG_IGN if old == signal.SIG_DFL else old)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _signal_handlers_ran() -> None:
    """Handshake: return once this process has run the handler of every signal raised so
    far. Python runs the handlers of all the signals that came together, in one pass, so
    when a marker signal's handler has run, a SIGPIPE raised before it has been handled."""
    seen: list[int] = []
    old = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_until(lambda: seen)
    finally:
        signal.signal(signal.SIGUSR2, old)


@pytest.fixture
def sigpipe_counter():
    hits: list[int] = []
    old = signal.signal(signal.SIGPIPE, lambda signum, frame: hits.append(signum))
    try:
        yield hits
    finally:
        signal.signal(signal.SIGPIPE, old)


def test_must_never_raise_sigpipe(api, sockdir, sigpipe_counter):
    threads0 = _threads()
    # 1) our writes to a peer that closed
    srv, cli = connected_pair(api)
    api.libvchan_close(cli)
    for _ in range(3):
        api.libvchan_write(srv, b"x" * 1000, 1000)
        api.libvchan_send(srv, b"x" * 10, 10)
    # 2) a plain peer that vanishes while we write, before we notice
    srv2 = api.libvchan_server_init(0, 2, 65536, 65536)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(str(sock_path(sockdir, 0, 0, 2)))
    wait_until(lambda: api.libvchan_is_open(srv2) == VCHAN_CONNECTED)
    c.close()
    api.libvchan_set_blocking(srv2, False)
    for _ in range(20):
        api.libvchan_write(srv2, bytes(65536), 65536)
    # 3) bytes buffered in a WAITING server, whose client connects and disappears
    srv3 = api.libvchan_server_init(0, 3, 0, 65536)
    api.libvchan_set_blocking(srv3, False)
    assert api.libvchan_write(srv3, bytes(65536), 65536) > 0
    c3 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c3.connect(str(sock_path(sockdir, 0, 0, 3)))
    c3.close()
    wait_until(lambda: api.libvchan_is_open(srv3) == VCHAN_DISCONNECTED)
    # 4) close() with unsent bytes towards a peer that is gone
    api.libvchan_close(srv3)
    api.libvchan_close(srv2)
    # The writes that could have raised are done: ours above, and a helper thread's once
    # it has ended (they end when their bytes are delivered or the peer is gone).
    wait_until(lambda: _threads() <= threads0)
    _signal_handlers_ran()
    assert sigpipe_counter == []


def test_must_never_raise_sigpipe_with_default_disposition(api, sockdir):
    """In a child with SIGPIPE at SIG_DFL (as C programs have it), writes must not kill it."""
    path = str(sock_path(sockdir, 0, 0, 5))
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            impl = api.impl
            srv = impl.libvchan_server_init(0, 5, 0, 65536)
            impl.libvchan_set_blocking(srv, False)
            impl.libvchan_write(srv, bytes(30000), 30000)  # buffered while WAITING
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(path)
            impl.libvchan_is_open(srv)
            c.close()
            for _ in range(50):
                impl.libvchan_write(srv, bytes(1000), 1000)
                impl.libvchan_send(srv, b"x", 1)
            impl.libvchan_close(srv)
            # a helper thread's writes are done once it has ended (the peer is gone): a
            # SIGPIPE at SIG_DFL would have killed us by then
            end = time.monotonic() + TIMEOUT
            while len(os.listdir("/proc/self/task")) > 1:
                assert time.monotonic() < end, "a helper thread outlived its peer"
                time.sleep(0.001)
            code = 0
        except BaseException:
            import traceback

            with open(os.path.join(sockdir, "child-error"), "w") as f:
                traceback.print_exc(file=f)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    err = os.path.join(sockdir, "child-error")
    assert not os.path.exists(err), open(err).read()
    assert not os.WIFSIGNALED(status), f"child killed by signal {os.WTERMSIG(status)}"
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.serial  # timing or CPU share: run on a quiet machine
def test_must_eintr_never_surfaces(api, sockdir):
    """A signal every millisecond during blocking transfers causes no error and no loss."""
    srv, cli = connected_pair(api, read_min=65536, write_min=65536)
    data = pattern(8 << 20, seed=21)
    count = [0]

    def on_alarm(signum, frame) -> None:
        count[0] += 1

    def on_usr1(signum, frame) -> None:
        count[0] += 1

    old_alrm = signal.signal(signal.SIGALRM, on_alarm)
    old_usr1 = signal.signal(signal.SIGUSR1, on_usr1)
    old_timer = signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    t_set = time.monotonic()
    stop = threading.Event()
    try:
        wr = run_bg(api.libvchan_write, srv, data, len(data))
        ids = [wr.thread.ident]

        def pester() -> None:  # direct signals at the writer thread too
            while not stop.is_set():
                for tid in ids:
                    if tid is not None:
                        try:
                            signal.pthread_kill(tid, signal.SIGUSR1)
                        except ProcessLookupError:
                            pass
                time.sleep(0.001)

        p = threading.Thread(target=pester, daemon=True)
        p.start()
        got = bytearray()
        buf = bytearray(65536)
        rnd = random.Random(1)
        while len(got) < len(data):
            want = min(rnd.choice([65536, 1000, 30000]), len(data) - len(got))
            if want <= 65536 and rnd.random() < 0.3:
                n = api.libvchan_recv(cli, buf, want)  # blocking, waits for all
                assert n == want, f"recv returned {n} (EINTR surfaced?)"
            else:
                n = api.libvchan_read(cli, buf, want)
                assert n > 0, f"read returned {n} (EINTR surfaced?)"
            got += buf[:n]
        assert wr.result() == len(data)
        # blocking wait() and a blocking read that has to sleep through signals
        rd = run_bg(api.libvchan_read, cli, buf, 10)
        rd.assert_blocked(0.1)
        assert api.libvchan_send(srv, b"late", 4) == 4
        assert rd.result() in range(1, 5)
    finally:
        stop.set()
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        _restore(signal.SIGALRM, old_alrm)
        _restore(signal.SIGUSR1, old_usr1)
        if old_timer[0] > 0:  # give pytest-timeout's alarm back what is left of it
            left = max(0.001, old_timer[0] - (time.monotonic() - t_set))
            signal.setitimer(signal.ITIMER_REAL, left, old_timer[1])
    assert got == data
    assert count[0] > 10, "the signals did not fire: the test tested nothing"


@pytest.mark.serial  # timing or CPU share: run on a quiet machine
def test_must_eintr_never_surfaces_in_client_init_and_wait(api, sockdir):
    sent = [0]
    old_usr1 = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    stop = threading.Event()

    def pester(bg) -> None:  # SIGUSR1 at the thread blocked in the library, every ms
        while not stop.is_set() and bg.thread.is_alive():
            try:
                signal.pthread_kill(bg.thread.ident, signal.SIGUSR1)
            except ProcessLookupError:
                return
            sent[0] += 1
            time.sleep(0.001)

    try:
        cl = run_bg(api.libvchan_client_init, 0, 1)
        threading.Thread(target=pester, args=(cl,), daemon=True).start()
        cl.assert_blocked(0.1)
        srv = api.libvchan_server_init(0, 1, 0, 0)
        cli = cl.result()
        assert cli is not None, "client_init failed under signals"
        wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
        bounded(api.libvchan_wait, srv)  # the connect event
        w = run_bg(api.libvchan_wait, srv)
        threading.Thread(target=pester, args=(w,), daemon=True).start()
        w.assert_blocked(0.1)
        assert api.libvchan_send(cli, b"x", 1) == 1
        assert w.result() == 0
        # a blocking recv that sleeps through the signals
        buf = bytearray(4)
        r = run_bg(api.libvchan_recv, cli, buf, 4)
        threading.Thread(target=pester, args=(r,), daemon=True).start()
        r.assert_blocked(0.1)
        assert api.libvchan_send(srv, b"abcd", 4) == 4
        assert r.result() == 4 and buf == b"abcd"
    finally:
        stop.set()
        _restore(signal.SIGUSR1, old_usr1)
    assert sent[0] > 30, "the signals did not fire: the test tested nothing"


# ---------------------------------------------------------------------------- hostile peers


def _plain_client(sockdir, port: int = 1) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(str(sock_path(sockdir, 0, 0, port)))
    return c


@pytest.mark.spec("READ-DATA-BEFORE-GONE")
def test_must_survive_peer_reset_with_unread_data(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 65536, 65536)
    c = _plain_client(sockdir)
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
    api.libvchan_set_blocking(srv, False)
    while api.libvchan_write(srv, bytes(65536), 65536) > 0:
        pass
    c.sendall(b"tail")
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_DISCONNECTED, 2.0)
    assert read_all_until_eof(api, srv) == b"tail"
    assert api.libvchan_write(srv, b"x", 1) == -1
    assert api.libvchan_send(srv, b"x", 1) == -1
    t0 = time.monotonic()
    api.libvchan_close(srv)
    assert time.monotonic() - t0 < scaled(0.5)


def test_must_not_hang_with_peer_that_never_reads(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    c = _plain_client(sockdir)
    try:
        wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
        api.libvchan_set_blocking(srv, False)
        for _ in range(10000):
            n = api.libvchan_write(srv, bytes(2048), 2048)
            assert n >= 0
            if n == 0:
                break
        assert api.libvchan_write(srv, b"x", 1) == 0
        assert api.libvchan_send(srv, b"x", 1) == 0
        assert api.libvchan_buffer_space(srv) == 0
        t0 = time.monotonic()
        api.libvchan_close(srv)
        assert time.monotonic() - t0 < scaled(0.5)
    finally:
        c.close()


def test_must_not_hang_with_peer_that_connects_and_never_writes(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    c = _plain_client(sockdir)
    try:
        wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
        api.libvchan_set_blocking(srv, False)
        buf = bytearray(10)
        assert bounded(api.libvchan_read, srv, buf, 10, timeout=1) == 0
        assert bounded(api.libvchan_recv, srv, buf, 10, timeout=1) == 0
        assert api.libvchan_data_ready(srv) == 0
        api.libvchan_set_blocking(srv, True)
        rd = run_bg(api.libvchan_recv, srv, buf, 10)
        rd.assert_blocked()
        c.close()
        assert rd.result() == -1
    finally:
        c.close()


@pytest.mark.spec("READ-DATA-BEFORE-GONE")
def test_must_not_lose_bytes_from_plain_peer_with_any_chunking(api, sockdir):
    srv = api.libvchan_server_init(0, 1, 0, 0)
    c = _plain_client(sockdir)
    data = pattern(500000, seed=5)
    rnd = random.Random(5)

    def feed() -> None:
        off = 0
        while off < len(data):
            k = rnd.choice([1, 2, 13, 511, 1024, 4096, 65536, 100000])
            c.sendall(data[off : off + k])
            off += k
        c.close()

    f = run_bg(feed)
    out = bytearray()
    buf = bytearray(5000)
    rnd2 = random.Random(6)
    deadline = time.monotonic() + TIMEOUT
    while True:
        k = rnd2.choice([1, 7, 1000, 1024, 5000])
        n = api.libvchan_read(srv, buf, k)
        if n < 0:
            break
        out += buf[:n]
        assert time.monotonic() < deadline
    f.result()
    assert out == data


def test_must_survive_peer_vanishing_while_bytes_buffered(api, sockdir):
    """Bytes buffered while WAITING; the client connects and vanishes; writes go on.

    Every call must keep to the table (-1 once the peer is known gone), never raise.
    """
    for port in range(1, 6):
        srv = api.libvchan_server_init(0, port, 0, 65536)
        api.libvchan_set_blocking(srv, False)
        assert api.libvchan_write(srv, bytes(65536), 65536) == 65536
        c = _plain_client(sockdir, port)
        c.close()
        results = set()
        for _ in range(200):
            results.add(api.libvchan_write(srv, bytes(1000), 1000))
            results.add(api.libvchan_send(srv, b"x", 1))
            if api.libvchan_is_open(srv) == VCHAN_DISCONNECTED:
                break
        wait_until(lambda h=srv: api.libvchan_is_open(h) == VCHAN_DISCONNECTED, 2.0)
        assert api.libvchan_write(srv, b"x", 1) == -1
        assert all(r >= -1 for r in results)
        api.libvchan_close(srv)


def test_must_not_crash_on_garbage_and_binary_bytes(api, sockdir):
    """The wire has no framing: any bytes, including NULs and 0xff runs, pass through."""
    srv, cli = connected_pair(api)
    junk = bytes(range(256)) * 8 + b"\x00" * 1000 + b"\xff" * 1000
    assert api.libvchan_write(cli, junk, len(junk)) == len(junk)
    assert read_exact(api, srv, len(junk)) == junk
