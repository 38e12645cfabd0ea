"""Faults: 2,000 open/close cycles of connected pairs leak nothing.

The cycles run in WORKERS threads at once: besides exercising the library from many
threads, this keeps the check within seconds, because on Linux closing an inotify instance
(which a client that had to wait creates) waits for an SRCU grace period, ~3-10 ms per
client, serial in one thread but overlapping across threads.

Checked after the cycles, each check exact for a single leaked object: open file descriptors
(every handle holds its epoll fd until it is freed, so a leaked handle leaks a descriptor),
threads (a pusher thread must end once its bytes are delivered or its channel closed),
socket files left in the directory, and, for the Python engine, live channel objects. Then
resident memory, for a leak of anything else: RSS_SLACK_KIB over CYCLES is a leak of about
half a kilobyte per cycle (as 4 MiB over the 10,000 cycles this test used to run), about
three times the growth measured with no leak. The C library's own leak check (LeakSanitizer)
runs in the sanitizer job; this one goes through the same api fixture as everything else.
"""

from __future__ import annotations

import gc
import os
import time

import pytest

from tests.conftest import VCHAN_CONNECTED, run_bg, scaled, wait_until
from tests.reliability._util import fds, rss_kib, threads, under_asan
from vchan._core import internal

CYCLES = int(os.environ.get("VCHAN_TEST_LEAK_CYCLES", "2000"))
WORKERS = 100
RSS_SLACK_KIB = max(1024, CYCLES // 2)  # 512 bytes a cycle, at least 1 MiB of noise

pytestmark = pytest.mark.serial  # counts of the whole process: run on a quiet machine


def _channels(api) -> int:
    """Python engine channels alive in this process (0 for other implementations)."""
    return len(internal._live) if api.name == "python" else 0


def _cycle(api, i: int, worker: int) -> None:
    lib = api.impl  # untracked: every handle is closed right here
    port = worker * 100 + i % 50
    srv = lib.libvchan_server_init(0, port, 0, 0)
    assert srv is not None, f"cycle {i}: server_init errno {lib.last_errno()}"
    if i % 10 == 0:
        # an early write on a WAITING server: the kind of call that starts a helper thread
        assert lib.libvchan_send(srv, b"early", 5) == 5
    cli = lib.libvchan_client_init(0, port)
    assert cli is not None, f"cycle {i}: client_init errno {lib.last_errno()}"
    assert lib.libvchan_is_open(srv) == VCHAN_CONNECTED
    buf = bytearray(8)
    if i % 10 == 0:
        assert lib.libvchan_recv(cli, buf, 5) == 5
    assert lib.libvchan_send(cli, b"ping", 4) == 4
    assert lib.libvchan_recv(srv, buf, 4) == 4
    if i % 3 == 0:
        lib.libvchan_close(srv)
        lib.libvchan_close(cli)
    else:
        lib.libvchan_close(cli)
        lib.libvchan_close(srv)


def _run_workers(cycle, api, per_worker: int) -> None:
    def work(k: int) -> None:
        for i in range(per_worker):
            cycle(api, i, k)

    bgs = [run_bg(work, k) for k in range(WORKERS)]
    for bg in bgs:
        bg.result(scaled(50))


def test_open_close_cycles_leak_nothing(api, sockdir):
    _run_workers(_cycle, api, 3)  # warm-up: per-thread malloc arenas, imports, caches
    gc.collect()
    fds0, threads0, rss0, live0 = fds(), threads(), rss_kib(), _channels(api)
    t0 = time.monotonic()
    _run_workers(_cycle, api, CYCLES // WORKERS)
    elapsed = time.monotonic() - t0
    wait_until(lambda: threads() <= threads0, scaled(5))  # helper threads end on their own
    gc.collect()
    assert _channels(api) <= live0, f"{_channels(api) - live0} channels still alive"
    assert fds() <= fds0, f"leaked fds: {sorted(fds() - fds0)}"
    assert os.listdir(sockdir) == [], f"socket files left: {os.listdir(sockdir)}"
    grown = rss_kib() - rss0
    if not under_asan():  # (ASan's quarantine keeps freed memory; LSan checks leaks there)
        assert grown < RSS_SLACK_KIB, f"RSS grew by {grown} KiB over {CYCLES} cycles"
    print(f"{api.name}: {CYCLES} cycles in {elapsed:.2f} s, RSS {grown:+d} KiB")


def _unconnected_cycle(api, i: int, worker: int) -> None:
    lib = api.impl
    srv = lib.libvchan_server_init(0, worker, 0, 0)
    assert srv is not None
    if i % 2:
        assert lib.libvchan_send(srv, b"x", 1) == 1  # held for a client that never comes
    lib.libvchan_close(srv)
    ret = lib.libvchan_client_init_async(0, 1000 + worker)  # no server there
    assert ret is not None
    assert lib.libvchan_client_init_async_finish(ret[0], False) == 1
    lib.libvchan_close(ret[0])


def test_waiting_servers_and_connecting_clients_leak_nothing(api, sockdir):
    """Channels closed before any connection: WAITING servers, clients still connecting."""
    _run_workers(_unconnected_cycle, api, 2)
    gc.collect()
    fds0, threads0, rss0, live0 = fds(), threads(), rss_kib(), _channels(api)
    _run_workers(_unconnected_cycle, api, CYCLES // WORKERS // 2)
    wait_until(lambda: threads() <= threads0, scaled(5))
    gc.collect()
    assert _channels(api) <= live0, f"{_channels(api) - live0} channels still alive"
    assert fds() <= fds0, f"leaked fds: {sorted(fds() - fds0)}"
    assert os.listdir(sockdir) == []
    grown = rss_kib() - rss0
    if not under_asan():
        assert grown < RSS_SLACK_KIB, f"RSS grew by {grown} KiB"
