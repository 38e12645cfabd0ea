"""Faults: a signal every millisecond during transfers, in every thread.

A handler is installed without SA_RESTART (Python's default), so every blocking system
call in the library sees EINTR again and again: no call may fail, return early with 0 in
blocking mode, lose or duplicate a byte.
"""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest

from tests.conftest import connected_pair, run_bg, scaled
from tests.reliability import _stream

pytestmark = pytest.mark.serial  # signal storms: run on a quiet machine

TOTAL = 3 << 20
RING = 65536
MIN_SECONDS = 0.5


class Storm:
    """SIGALRM every millisecond to the process (itimer) and to each registered thread."""

    def __init__(self) -> None:
        self.count = 0  # handler runs: signals landing during one C call coalesce into one
        self.sent = 0  # signals sent to threads that are moving the stream
        self.targets: list[int] = []
        self._stop = threading.Event()
        self._old = signal.signal(signal.SIGALRM, self._handler)
        signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def _handler(self, signum, frame) -> None:
        self.count += 1

    def _tick(self) -> None:
        while not self._stop.wait(0.001):
            for tid in list(self.targets):
                try:
                    signal.pthread_kill(tid, signal.SIGALRM)
                    self.sent += 1
                except ProcessLookupError:
                    pass

    def join(self) -> None:
        self.targets.append(threading.get_ident())

    def stop(self) -> None:
        self._stop.set()
        self._ticker.join(10)
        assert not self._ticker.is_alive(), "the signal ticker did not stop"
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        # A SIGALRM may still be pending in some thread (sent just before the ticker
        # stopped): restoring SIG_DFL first would let it kill the whole test run ("Alarm
        # clock"). Setting SIG_IGN discards pending ones; nothing sends more by now.
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, self._old)


def _writer(api, h, storm: Storm, seed: int, call: str) -> int:
    storm.join()
    rng = random.Random(seed)
    sent = 0
    while sent < TOTAL:
        n = min(rng.randint(1, RING if call == "send" else 200_000), TOTAL - sent)
        data = _stream.chunk(seed, sent, n)
        fn = api.libvchan_send if call == "send" else api.libvchan_write
        k = fn(h, data, n)
        assert k == n, f"blocking {call} of {n} returned {k} (errno {api.last_errno()})"
        sent += k
    return sent


def _reader(api, h, storm: Storm, seed: int, call: str) -> int:
    storm.join()
    rng = random.Random(seed + 100)
    check = _stream.Checker(seed)
    buf = bytearray(RING)
    while check.count < TOTAL:
        n = min(rng.randint(1, RING), TOTAL - check.count)
        fn = api.libvchan_recv if call == "recv" else api.libvchan_read
        k = fn(h, buf, n)
        assert k > 0, f"blocking {call} of {n} returned {k} (errno {api.last_errno()})"
        assert call == "read" or k == n
        assert check.feed(memoryview(buf)[:k]), f"wrong byte at {check.bad}"
    return check.count


def _nonblocking_pump(api, src, dst, storm: Storm, seed: int) -> int:
    """One thread moves the stream src -> dst with non-blocking calls and wait().

    It runs for at least MIN_SECONDS (so many signals land), then delivers the rest.
    """
    storm.join()
    api.libvchan_set_blocking(src, False)
    api.libvchan_set_blocking(dst, False)
    rng = random.Random(seed)
    check = _stream.Checker(seed)
    sent = 0
    target = None
    buf = bytearray(RING)
    end = time.monotonic() + MIN_SECONDS
    while target is None or check.count < target:
        if target is None and time.monotonic() > end:
            target = sent
        progress = False
        if target is None:
            data = _stream.chunk(seed, sent, rng.randint(1, 30_000))
            k = api.libvchan_write(src, data, len(data))
            assert k >= 0, api.last_errno()
            sent += k
            progress = progress or k > 0
        want = rng.randint(1, len(buf))
        k = api.libvchan_read(dst, buf, want)
        assert k >= 0, api.last_errno()
        if k:
            assert check.feed(memoryview(buf)[:k]), f"wrong byte at {check.bad}"
            progress = True
        if not progress:
            assert api.libvchan_wait(dst) == 0
    return check.count


@pytest.mark.no_cover
def test_signal_storm_blocking_transfers_both_ways(api, sockdir):
    srv, cli = connected_pair(api, read_min=RING, write_min=RING)
    storm = Storm()
    try:
        bgs = [
            run_bg(_writer, api, srv, storm, 1, "write"),
            run_bg(_writer, api, cli, storm, 2, "send"),
            run_bg(_reader, api, srv, storm, 2, "recv"),
        ]
        t0 = time.monotonic()
        assert _reader(api, cli, storm, 1, "read") == TOTAL  # main thread: itimer signals
        for bg in bgs:
            assert bg.result(scaled(30)) == TOTAL
        elapsed = time.monotonic() - t0
    finally:
        storm.stop()
    assert storm.count >= min(200, int(elapsed * 500)), f"only {storm.count} signals"


def test_signal_storm_nonblocking_with_wait(api, sockdir):
    srv, cli = connected_pair(api, read_min=RING, write_min=RING)
    storm = Storm()
    try:
        bg = run_bg(_nonblocking_pump, api, cli, srv, storm, 4)
        assert _nonblocking_pump(api, srv, cli, storm, 3) > 0
        assert bg.result(scaled(30)) > 0
    finally:
        storm.stop()
    # Both pumps sleep in wait() (a C call) most of the time, so their handler runs are few;
    # what matters is how many signals hit them inside the library.
    assert storm.sent >= 100, f"only {storm.sent} signals sent to the pumps"


def test_signal_storm_during_connect_and_waiting(api, sockdir):
    """EINTR in client_init's wait for the server and in a WAITING server's wait()."""
    storm = Storm()
    try:

        def client():
            storm.join()
            return api.libvchan_client_init(0, 5)

        bg = run_bg(client)
        bg.assert_blocked(0.1)
        srv = api.libvchan_server_init(0, 5, 0, 0)
        assert srv is not None
        cli = bg.result()
        assert cli is not None, f"client_init failed under signals: {api.last_errno()}"
        assert api.libvchan_wait(srv) == 0
        assert api.libvchan_send(cli, b"ok", 2) == 2
        buf = bytearray(2)
        assert api.libvchan_recv(srv, buf, 2) == 2 and buf == b"ok"
    finally:
        storm.stop()
