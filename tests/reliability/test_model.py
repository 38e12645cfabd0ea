"""A stateful property test: random operation sequences from both ends against a model.

Hypothesis drives read, recv, write, send of random sizes, blocking switches, wait,
data_ready, buffer_space, is_open and close on the two ends of one channel (rings drawn at
random, sometimes with early writes on the WAITING server), and checks every return value
against the SPEC §4 table and every delivered byte against the stream that was accepted.

What a model can know exactly is checked exactly (counts of send/recv, sizes 0, EMSGSIZE,
-1 after the peer is gone, every delivered byte); what depends on the kernel is checked as
the SPEC's promises: a write or send of at most buffer_space() bytes completes at once, a
recv of at most data_ready() bytes succeeds, a blocking call is only made when the model
says it must return (and then it must, within a deadline), an arrival after the last
wait() makes the select fd readable, and in the end every accepted byte arrives.

Notification (§5) is modelled as Xen's request bits. A consumption event is owed only when
this end asked (``buffer_space()``, a non-blocking write returning less than asked, a
non-blocking send returning 0) and the peer then surely consumed after the request: the
peer may hold up to its read ring of our bytes in user space (a stash) that it took from
the kernel before the request; and the kernel frees space (the event, as with Xen's ring)
only when one of our skbs has been read to its end, an skb holding at most ``SKB_MAX``
bytes. So the model counts a consumption as certain once the peer has read more than read
ring + ``SKB_MAX`` bytes past the request. An owed event must keep the fd
readable until a ``wait()``; a ``wait()`` forgets any request (it may have fired unseen).
Once the fd has polled readable, the next ``wait()`` must return at once, whatever calls
were made in between. Unasked consumption must not wake us, but spurious readiness is
allowed if rare, so a model of random steps does not check that (test_notify.py does).

Examples and steps are bounded so one implementation takes ~10-20 s; derandomized under
CI (``CI`` set) or ``VCHAN_HYPOTHESIS_DERANDOMIZE=1``; ``VCHAN_HYPOTHESIS_EXAMPLES``
scales the number of examples.
"""

from __future__ import annotations

import errno
import itertools
import os
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import (
    TIMEOUT,
    VCHAN_CONNECTED,
    VCHAN_DISCONNECTED,
    bounded,
    bounded_err,
    fd_readable,
    run_bg,
    scaled,
    wait_until,
)
from tests.reliability import _stream

CLIENT_RING = 65536
# Linux's unix_stream_sendmsg() puts at most SKB_MAX_HEAD(0) + UNIX_SKB_FRAGS_SZ (< 4 KiB +
# 32 KiB) bytes in one skb; a read that stops inside an skb frees none of its space.
SKB_MAX = 4096 + 32768
MINS = [0, 1024, 2048, 4096, 5000, 65536]
PROMPT = scaled(1.0)
CALL_TIMEOUT = scaled(5.0)

_ports = itertools.count(1000)


def server_rings(read_min: int, write_min: int) -> tuple[int, int]:
    """SPEC §6 (Xen's rules), written out independently of the implementations."""

    def p2(n: int) -> int:
        r = 4096
        while r < n:
            r *= 2
        return r

    rd, wr = p2(read_min), p2(write_min)
    if read_min <= 1024 and write_min <= 2048:
        return 1024, 2048
    if read_min <= 2048 and write_min <= 1024:
        return 2048, 1024
    if read_min <= 2048:
        rd = 2048
    elif write_min <= 2048:
        wr = 2048
    return rd, wr


SIZES = st.one_of(
    st.integers(0, 8),
    st.integers(0, 5000),
    st.sampled_from([1023, 1024, 1025, 2047, 2048, 2049, 4096, 65535, 65536, 65537]),
    st.integers(0, 150_000),
)
END = st.sampled_from([0, 1])


class ChannelMachine(RuleBasedStateMachine):
    api = None  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.h: list = [None, None]
        self.fd = [-1, -1]
        self.closed = [False, False]
        self.blocking = [True, True]
        self.sent = [0, 0]  # bytes accepted from end e (stream seed e)
        self.got = [0, 0]  # bytes of end e's stream delivered to the other end
        self.read_ring = [0, CLIENT_RING]
        self.write_ring = [0, CLIENT_RING]
        self.space: list[int | None] = [None, None]  # last buffer_space(e), still promised
        self.ready: list[int | None] = [None, None]  # last data_ready(e), still valid
        self.seen: list[int | None] = [None, None]  # arrivals at e known at its last wait()
        # §5 requests: e asked to be told of consumption; it is certain once the peer has
        # read e's stream past this offset (got[e] at the request + the peer's read ring,
        # which it may have taken from the kernel before, + one skb it must finish).
        self.request: list[int | None] = [None, None]
        self.owed = [False, False]  # a requested consumption happened; wait() not yet called
        self.polled = [False, False]  # the fd polled readable since e's last wait()

    # ------------------------------------------------------------------------- helpers

    def avail(self, e: int) -> int:
        """Bytes accepted by the other end and not yet read by e."""
        o = 1 - e
        return self.sent[o] - self.got[o]

    def deliver(self, e: int, data: bytes | bytearray | memoryview) -> None:
        """e read ``data``: it must be the next bytes of the other end's stream."""
        o = 1 - e
        assert len(data) <= self.avail(e), "read more than was ever written"
        want = _stream.chunk(o, self.got[o], len(data))
        assert bytes(data) == want, f"wrong bytes at offset {self.got[o]} of stream {o}"
        self.got[o] += len(data)
        self.consumed(o)

    def alive(self, e: int) -> bool:
        return not self.closed[e]

    def gone(self, e: int) -> bool:
        """Whether e's peer has closed (e then sees DISCONNECTED: checked at close)."""
        return self.closed[1 - e]

    def touch(self, e: int) -> None:
        self.space[e] = None
        self.ready[e] = None

    def ask(self, e: int) -> None:
        """e requested a consumption event (buffer_space() or a short write)."""
        if self.request[e] is None and not self.gone(e):
            self.request[e] = self.got[e] + self.read_ring[1 - e] + SKB_MAX

    def consumed(self, e: int) -> None:
        """The peer read more of e's stream: a pending request may now surely have fired."""
        req = self.request[e]
        if req is not None and self.got[e] > req:
            self.request[e] = None
            self.owed[e] = True

    # ------------------------------------------------------------------------ set-up

    @initialize(
        read_min=st.sampled_from(MINS), write_min=st.sampled_from(MINS), early=st.integers(0, 3000)
    )
    def connect(self, read_min: int, write_min: int, early: int) -> None:
        api = self.api
        self.read_ring[0], self.write_ring[0] = server_rings(read_min, write_min)
        port = next(_ports)
        srv = api.libvchan_server_init(0, port, read_min, write_min)
        assert srv is not None, api.last_errno()
        self.h[0] = srv
        early = min(early, self.write_ring[0])
        if early:  # a WAITING server buffers writes up to its ring (SPEC §4)
            assert api.libvchan_buffer_space(srv) == self.write_ring[0]
            self.ask(0)
            data = _stream.chunk(0, 0, early)
            assert api.libvchan_send(srv, data, early) == early
            self.sent[0] = early
        cli = bounded(api.libvchan_client_init, 0, port)
        assert cli is not None
        self.h[1] = cli
        wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
        self.fd = [api.libvchan_fd_for_select(srv), api.libvchan_fd_for_select(cli)]

    # ------------------------------------------------------------------------- writes

    @precondition(lambda self: not all(self.closed))
    @rule(e=END)
    def buffer_space(self, e: int) -> None:
        if self.closed[e]:
            return
        bs = self.api.libvchan_buffer_space(self.h[e])
        assert 0 <= bs <= self.write_ring[e], f"buffer_space {bs} > ring {self.write_ring[e]}"
        if self.gone(e):
            return
        self.space[e] = bs
        self.ask(e)

    @precondition(lambda self: not all(self.closed))
    @rule(e=END, size=SIZES, send=st.booleans())
    def write_or_send(self, e: int, size: int, send: bool) -> None:
        if self.closed[e]:
            return
        api = self.api
        data = _stream.chunk(e, self.sent[e], size)
        fn = api.libvchan_send if send else api.libvchan_write
        space = self.space[e]
        self.touch(e)
        if size == 0:
            assert fn(self.h[e], data, 0) == 0
            return
        if self.gone(e):
            assert fn(self.h[e], data, size) == -1, "write to a gone peer must fail"
            return
        if self.blocking[e]:
            if send and size > self.write_ring[e]:
                n, err = bounded_err(api, fn, self.h[e], data, size, timeout=CALL_TIMEOUT)
                assert (n, err) == (-1, errno.EMSGSIZE), (n, err)
                return
            if space is None or size > space:
                return  # it could wait for a reader that is this very thread
            n = bounded(fn, self.h[e], data, size, timeout=CALL_TIMEOUT)
            assert n == size, f"blocking {'send' if send else 'write'} of a promised {size}: {n}"
        else:
            n = fn(self.h[e], data, size)
            if send:
                assert n in (0, size), f"send returned {n} of {size}"
            else:
                assert 0 <= n <= size
            if space is not None and size <= space:
                assert n == size, f"buffer_space promised {space}, {size} got {n}"
            elif space is not None and not send:
                assert n >= space, f"write of {size} took {n} < promised {space}"
            assert n <= self.write_ring[e], f"non-blocking write took {n} > write ring"
            if n < size:
                self.ask(e)  # a short write requests the consumption event (§5)
        self.sent[e] += n

    @precondition(lambda self: not any(self.closed))
    @rule(e=END, size=st.integers(1, 300_000))
    def blocking_write_while_peer_drains(self, e: int, size: int) -> None:
        """A blocking write larger than any buffer, with the other end reading meanwhile."""
        api = self.api
        o = 1 - e
        self.touch(e)
        self.touch(o)
        was = self.blocking[e]
        api.libvchan_set_blocking(self.h[e], True)
        api.libvchan_set_blocking(self.h[o], False)
        data = _stream.chunk(e, self.sent[e], size)
        bg = run_bg(api.libvchan_write, self.h[e], data, size)
        buf = bytearray(self.read_ring[o])
        end = time.monotonic() + CALL_TIMEOUT
        while not bg.done():
            n = api.libvchan_read(self.h[o], buf, len(buf))
            assert n >= 0
            if n:  # self.sent[e] is only counted once the write returns
                want = _stream.chunk(e, self.got[e], n)
                assert bytes(buf[:n]) == want, "wrong bytes during a blocking write"
                self.got[e] += n
                self.consumed(e)
            else:
                time.sleep(0.0002)
            assert time.monotonic() < end, "blocking write never finished"
        assert bg.result() == size
        self.sent[e] += size
        assert self.got[e] <= self.sent[e]
        api.libvchan_set_blocking(self.h[e], was)
        api.libvchan_set_blocking(self.h[o], self.blocking[o])

    # -------------------------------------------------------------------------- reads

    @precondition(lambda self: not all(self.closed))
    @rule(e=END)
    def data_ready(self, e: int) -> None:
        if self.closed[e]:
            return
        dr = self.api.libvchan_data_ready(self.h[e])
        assert 0 <= dr <= min(self.read_ring[e], self.avail(e)), (dr, self.avail(e))
        if self.gone(e):
            assert dr == min(self.read_ring[e], self.avail(e)), "bytes after a close vanish"
        self.ready[e] = dr

    @precondition(lambda self: not all(self.closed))
    @rule(e=END, size=SIZES)
    def read(self, e: int, size: int) -> None:
        if self.closed[e]:
            return
        api = self.api
        ready = self.ready[e]
        self.touch(e)
        buf = bytearray(max(size, 1))
        if size == 0:
            assert api.libvchan_read(self.h[e], buf, 0) == 0
            return
        if self.gone(e) and self.avail(e) == 0:
            assert api.libvchan_read(self.h[e], buf, size) == -1, "read after the end"
            return
        if self.blocking[e]:
            if self.avail(e) == 0:
                return  # would wait for this very thread
            n = bounded(api.libvchan_read, self.h[e], buf, size, timeout=CALL_TIMEOUT)
            assert n >= 1, f"blocking read returned {n} with {self.avail(e)} bytes sent"
        else:
            n = api.libvchan_read(self.h[e], buf, size)
            assert n >= 0, f"read returned {n} with {self.avail(e)} bytes on their way"
            if ready:
                assert n >= 1, f"data_ready said {ready}, read returned 0"
            if self.gone(e):
                assert n >= 1, "bytes sent before the close must be readable"
        assert n <= min(size, self.read_ring[e]), f"read {n} > min({size}, ring)"
        self.deliver(e, buf[:n])

    @precondition(lambda self: not all(self.closed))
    @rule(e=END, size=SIZES)
    def recv(self, e: int, size: int) -> None:
        if self.closed[e]:
            return
        api = self.api
        ready = self.ready[e]
        self.touch(e)
        buf = bytearray(max(size, 1))
        if size == 0:
            assert api.libvchan_recv(self.h[e], buf, 0) == 0
            return
        if self.gone(e):
            n = api.libvchan_recv(self.h[e], buf, size)
            if size <= self.avail(e) and size <= self.read_ring[e]:
                assert n == size, f"recv {size} of {self.avail(e)} left after close: {n}"
            elif size > self.avail(e):
                assert n == -1, "recv of more than is left after the peer closed"
        elif self.blocking[e]:
            if size > self.read_ring[e] and size > self.avail(e):
                n, err = bounded_err(
                    api, api.libvchan_recv, self.h[e], buf, size, timeout=CALL_TIMEOUT
                )
                assert n == -1, f"blocking recv above the ring returned {n}"
                return
            if size > self.avail(e) or size > self.read_ring[e]:
                return  # would wait for this very thread
            n = bounded(api.libvchan_recv, self.h[e], buf, size, timeout=CALL_TIMEOUT)
            assert n == size
        else:
            n = api.libvchan_recv(self.h[e], buf, size)
            assert n in (0, size), f"recv returned {n} of {size}"
            if ready is not None and size <= ready:
                assert n == size, f"data_ready said {ready}, recv {size} returned {n}"
        if n > 0:
            self.deliver(e, buf[:n])

    # -------------------------------------------------------------- blocking, wait, state

    @precondition(lambda self: not all(self.closed))
    @rule(e=END, flag=st.booleans())
    def set_blocking(self, e: int, flag: bool) -> None:
        if self.closed[e]:
            return
        self.api.libvchan_set_blocking(self.h[e], flag)
        self.blocking[e] = flag

    @precondition(lambda self: not all(self.closed))
    @rule(e=END)
    def poll(self, e: int) -> None:
        """poll() the fd; if readable, the next wait() must return at once."""
        if not self.closed[e] and fd_readable(self.fd[e]):
            self.polled[e] = True

    @precondition(lambda self: not all(self.closed))
    @rule(e=END)
    def wait(self, e: int) -> None:
        """wait() when the fd is (or has polled) readable; then remember what had arrived."""
        if self.closed[e]:
            return
        if not self.polled[e] and not fd_readable(self.fd[e]):
            return
        # Only wait() clears readiness: after the fd polled readable, whatever calls were
        # made since, this wait() does not block.
        assert bounded(self.api.libvchan_wait, self.h[e], timeout=CALL_TIMEOUT) == 0
        self.polled[e] = False
        self.owed[e] = False
        self.request[e] = None  # it may have fired (and been cleared) without our knowing
        dr = self.api.libvchan_data_ready(self.h[e])
        self.seen[e] = None if dr >= self.read_ring[e] else self.got[1 - e] + dr
        self.touch(e)

    @precondition(lambda self: not all(self.closed))
    @rule(e=END)
    def requested_consumption_makes_fd_readable(self, e: int) -> None:
        """The peer surely consumed after e asked: e's fd is readable until its wait()."""
        if self.closed[e] or not self.owed[e]:
            return
        assert fd_readable(self.fd[e], PROMPT), "asked for consumption, consumed, not woken"

    @precondition(lambda self: not all(self.closed))
    @rule(e=END)
    def arrival_makes_fd_readable(self, e: int) -> None:
        """Bytes that arrived since the last wait() must have made the fd readable."""
        if self.closed[e] or self.seen[e] is None:
            return
        dr = self.api.libvchan_data_ready(self.h[e])
        if self.got[1 - e] + dr > self.seen[e]:
            assert fd_readable(self.fd[e]), "an arrival after wait() left the fd unreadable"

    @precondition(lambda self: not all(self.closed))
    @rule(e=END)
    def close(self, e: int) -> None:
        if self.closed[e]:
            return
        api = self.api
        t0 = time.monotonic()
        api.libvchan_close(self.h[e])
        assert time.monotonic() - t0 < PROMPT, "close() blocked"
        self.closed[e] = True
        o = 1 - e
        if not self.closed[o]:
            wait_until(lambda: api.libvchan_is_open(self.h[o]) == VCHAN_DISCONNECTED, PROMPT)
            self.touch(o)
            self.seen[o] = None

    @rule()
    def pause(self) -> None:
        """Let helper threads run (and keep a rule valid once both ends are closed)."""
        time.sleep(0.001)

    @invariant()
    def states(self) -> None:
        if self.h[0] is None:
            return
        for e in (0, 1):
            if self.closed[e]:
                continue
            want = VCHAN_DISCONNECTED if self.gone(e) else VCHAN_CONNECTED
            assert self.api.libvchan_is_open(self.h[e]) == want

    def teardown(self) -> None:
        """Every accepted byte arrives: drain what is open, then close."""
        api = self.api
        try:
            if self.h[0] is None:
                return
            buf = bytearray(CLIENT_RING)
            for e in (0, 1):
                if self.closed[e]:
                    continue
                api.libvchan_set_blocking(self.h[e], False)
                end = time.monotonic() + TIMEOUT
                while self.avail(e) > 0:
                    n = api.libvchan_read(self.h[e], buf, len(buf))
                    assert n >= 0, f"read -1 with {self.avail(e)} bytes not delivered"
                    if n:
                        self.deliver(e, buf[:n])
                    else:
                        time.sleep(0.0005)
                    assert time.monotonic() < end, f"{self.avail(e)} bytes never arrived"
                if self.gone(e):
                    assert api.libvchan_read(self.h[e], buf, 1) == -1
        finally:
            for e in (0, 1):
                if self.h[e] is not None and not self.closed[e]:
                    api.libvchan_close(self.h[e])
                    self.closed[e] = True


def _settings() -> settings:
    derandomize = (
        bool(os.environ.get("CI")) or os.environ.get("VCHAN_HYPOTHESIS_DERANDOMIZE") == "1"
    )
    return settings(
        max_examples=int(os.environ.get("VCHAN_HYPOTHESIS_EXAMPLES", "40")),
        stateful_step_count=40,
        deadline=None,
        derandomize=derandomize,
        database=None if derandomize else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        print_blob=True,
    )


@pytest.mark.spec(
    "SPACE-HONEST", "NOTIFY-NO-MISSED-EVENT", "NOTIFY-WAIT-AFTER-POLL", "READ-DATA-BEFORE-GONE"
)
def test_random_operation_sequences_match_the_model(api, sockdir):
    machine = type(f"ChannelMachine_{api.name}", (ChannelMachine,), {"api": api})
    run_state_machine_as_test(machine, settings=_settings())
