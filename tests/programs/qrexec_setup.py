"""qrexec_setup: the connection set-up of qrexec's vchans, round after round (Python twin).

usage: python qrexec_setup.py server|client-async|client-blocking daemon|data \
           DOMAIN PORT ROUNDS SYNC

The same program as qrexec_setup.c, on :mod:`vchan.libvchan`; that file's comment describes
the two flavours, the start-order tokens, each step and the pauses that vary by round. Exit
status 0 when every round went as described; 1, with the reason on stderr, at the first
deviation.
"""

from __future__ import annotations

import select
import sys
import time
from typing import TYPE_CHECKING

import _progs as P
from _progs import die, die_errno, guard, now, scaled

import vchan.libvchan as lv

if TYPE_CHECKING:
    from vchan._engine import EngineChannel as Channel

T_HELLO_SERVER = 0x101
T_HELLO_CLIENT = 0x102
T_PEER_INFO = 0x103
T_PREFIX = 0x104
T_ACK = 0x105
PREFIX_LEN = 6000
RACE_DELAY = (0.0, 0.003, 0.015, 0.040)  # server's pause between its poll and wait(), by round
CLIENT_PAUSE = 0.1  # the client's pause after its hello, scaled, in rounds r % 4 == 1


def client_pauses(r: int) -> bool:
    return r % 4 == 1


t_limit = 10.0
daemon_flavour = False


def recv_exact(c: Channel, n: int, what: str) -> bytes:
    buf = bytearray(n)
    with guard(what, 2 * t_limit):
        r = lv.libvchan_recv(c, buf, n)
    if r != n:
        die_errno(f"{what}: recv({n}) returned {r}", lv.last_errno())
    return bytes(buf)


def send_exact(c: Channel, data: bytes, what: str) -> None:
    with guard(what, 2 * t_limit):
        r = lv.libvchan_send(c, data, len(data))
    if r != len(data):
        die_errno(f"{what}: send({len(data)}) returned {r}", lv.last_errno())


def send_hdr(c: Channel, typ: int, length: int, what: str) -> None:
    send_exact(c, P.HDR.pack(typ, length), what)


def expect_hdr(c: Channel, typ: int, length: int, what: str) -> None:
    got = P.HDR.unpack(recv_exact(c, 8, what))
    if got != (typ, length):
        die(f"{what}: got header (0x{got[0]:x}, {got[1]}), expected (0x{typ:x}, {length})")


def do_wait(c: Channel, what: str) -> tuple[int, float]:
    t0 = now()
    with guard(what, t_limit):
        r = lv.libvchan_wait(c)
    return r, now() - t0


def server(domain: int, port: int, rounds: int, sync: str) -> None:
    max_setup = max_poll = max_wait = 0.0
    for r in range(rounds):
        prefix = P.Stream(r + 1).fill(0, PREFIX_LEN)  # ready before the clock starts
        P.sync_take(sync, now() + t_limit)
        c = lv.libvchan_server_init(domain, port + r, 65536, 65536)
        if c is None:
            die_errno(f"round {r}: server_init({domain}, {port + r})", lv.last_errno())
        # the daemon's hello goes out before any client exists: a WAITING server buffers
        if daemon_flavour:
            send_hdr(c, T_HELLO_SERVER, r, "send of the hello before any client")
        P.sync_give(sync)

        # qrexec: one poll, one wait, then the channel is taken as connected
        p = select.poll()
        p.register(lv.libvchan_fd_for_select(c), select.POLLIN)
        if not P.poll_until(p, now() + t_limit):
            die(f"round {r}: no client connection showed on the select fd within {t_limit:.1f} s")
        # a server may be descheduled here: in 3 rounds of 4 the client's hello (sent as soon
        # as it is connected) then lands before the wait(), whatever the speeds
        time.sleep(RACE_DELAY[r % 4])
        if do_wait(c, "wait() for the client (the fd polled readable)")[0] < 0:
            die_errno(f"round {r}: wait() for the client", lv.last_errno())
        t_conn = now()
        state = lv.libvchan_is_open(c)
        if state != lv.VCHAN_CONNECTED:
            die(
                f"round {r}: one poll and one wait() returned, yet is_open() = {state}, not "
                "connected (a WAITING server's fd must be readable only once a client has "
                "connected, SPEC section 5)"
            )

        expect_hdr(c, T_HELLO_CLIENT, r, "blocking recv of the client's hello")
        send_hdr(c, T_PEER_INFO, r, "send of the peer info")
        space = lv.libvchan_buffer_space(c)
        if space < 8 + PREFIX_LEN:
            die(
                f"round {r}: buffer_space() = {space} right after connecting, less than "
                f"{8 + PREFIX_LEN}"
            )

        # qrexec-client's loop polls before it sends the prefix data
        t0 = now()
        ready = P.poll_until(p, now() + t_limit)
        took = now() - t0
        if not ready:
            die(
                f"round {r}: the poll before the prefix data timed out after {took:.1f} s (the "
                "client's hello must be an event of its own, not merged with the connection: "
                "SPEC section 5)"
            )
        max_poll = max(max_poll, took)
        if client_pauses(r) and took > scaled(CLIENT_PAUSE) / 2:
            die(
                f"round {r}: the poll before the prefix data returned only after {took:.3f} s, "
                "when the paused client read our peer info (the client's hello must be an event "
                "of its own, not merged with the connection: SPEC section 5)"
            )
        rc, took = do_wait(c, "wait() after the fd polled readable")
        if rc < 0:
            die_errno(f"round {r}: wait()", lv.last_errno())
        max_wait = max(max_wait, took)
        if took > scaled(1):
            die(f"round {r}: wait() took {took:.3f} s after the fd polled readable")

        send_hdr(c, T_PREFIX, PREFIX_LEN, "send of the prefix header")
        with guard("write of the prefix data", 2 * t_limit):
            n = lv.libvchan_write(c, prefix, PREFIX_LEN)
        if n != PREFIX_LEN:
            die_errno(f"round {r}: write of the prefix data returned {n}", lv.last_errno())
        took = now() - t_conn
        max_setup = max(max_setup, took)
        if took > scaled(2):
            die(
                f"round {r}: {took:.3f} s from connected to the prefix data sent (qrexec would "
                "have slept in its poll)"
            )
        expect_hdr(c, T_ACK, PREFIX_LEN, "blocking recv of the client's ack")
        lv.libvchan_close(c)
    flavour = "daemon" if daemon_flavour else "data"
    print(
        f"{P.name()} ({flavour}): ok {rounds} rounds; connected->prefix max "
        f"{max_setup * 1e3:.1f} ms, poll before the prefix max {max_poll * 1e3:.1f} ms, "
        f"wait() max {max_wait * 1e3:.1f} ms",
        file=sys.stderr,
    )


def client(is_async: bool, domain: int, port: int, rounds: int, sync: str) -> None:
    server_first = sync.startswith("take:")
    listening = (
        "the server was already listening" if server_first else "the server started after us"
    )
    max_connect = 0.0
    for r in range(rounds):
        # server first: it listens (and has sent its hello) before we start
        P.sync_take(sync, now() + t_limit)
        t0 = now()
        if is_async:
            started = lv.libvchan_client_init_async(domain, port + r)
            if started is None:
                die_errno(f"round {r}: client_init_async({domain}, {port + r})", lv.last_errno())
            c, wfd = started
            P.sync_give(sync)
            # libqrexec's vchan_timeout.c: finish() only once the watch fd is readable
            p = select.poll()
            p.register(wfd, select.POLLIN | select.POLLHUP)
            while True:
                events = P.poll_until(p, t0 + t_limit)
                if not events:
                    die(
                        f"round {r}: the watch fd of client_init_async never polled readable "
                        f"within {t_limit:.1f} s ({listening}): qrexec's connection timeout"
                    )
                revents = events[0][1]
                if revents & (select.POLLERR | select.POLLNVAL):
                    die(f"round {r}: the watch fd polled revents 0x{revents:x}")
                if not revents & select.POLLIN:
                    die(f"round {r}: the watch fd polled revents 0x{revents:x}, no POLLIN")
                with guard("client_init_async_finish(ctrl, true)", t_limit):
                    n = lv.libvchan_client_init_async_finish(c, True)
                if n == 0:
                    break
                if n < 0:
                    die_errno(f"round {r}: client_init_async_finish", lv.last_errno())
        else:
            P.sync_give(sync)
            with guard("client_init", t_limit):
                got = lv.libvchan_client_init(domain, port + r)
            if got is None:
                die_errno(f"round {r}: client_init({domain}, {port + r})", lv.last_errno())
            c = got
        took = now() - t0
        max_connect = max(max_connect, took)
        # listening first: at once; else within 50 ms of the server (SPEC section 2), which
        # starts as soon as it reads the token
        limit = scaled(1) if server_first else scaled(2)
        if took > limit:
            die(f"round {r}: connecting took {took:.3f} s ({listening})")
        state = lv.libvchan_is_open(c)
        if state != lv.VCHAN_CONNECTED:
            die(f"round {r}: is_open() = {state} after connecting")

        if daemon_flavour:
            expect_hdr(c, T_HELLO_SERVER, r, "blocking recv of the server's hello")
        # at once: the server may not have run its wait() yet
        send_hdr(c, T_HELLO_CLIENT, r, "send of the client's hello")
        if client_pauses(r):
            time.sleep(scaled(CLIENT_PAUSE))
        expect_hdr(c, T_PEER_INFO, r, "blocking recv of the server's peer info")
        expect_hdr(c, T_PREFIX, PREFIX_LEN, "blocking recv of the prefix header")
        prefix = recv_exact(c, PREFIX_LEN, "blocking recv of the prefix data")
        bad = P.Stream(r + 1).mismatch(0, prefix)
        if bad >= 0:
            die(f"round {r}: prefix data differs at byte {bad}")
        send_hdr(c, T_ACK, PREFIX_LEN, "send of the ack")
        lv.libvchan_close(c)
    flavour = "daemon" if daemon_flavour else "data"
    print(
        f"{P.name()} ({flavour}): ok {rounds} rounds; connect max {max_connect * 1e3:.1f} ms",
        file=sys.stderr,
    )


def main(argv: list[str]) -> int:
    global t_limit, daemon_flavour
    P.start(f"qrexec_setup {argv[1] if len(argv) > 1 else ''}")
    if len(argv) != 7:
        print(
            "usage: qrexec_setup.py server|client-async|client-blocking daemon|data DOMAIN "
            "PORT ROUNDS SYNC",
            file=sys.stderr,
        )
        return 2
    if argv[2] not in ("daemon", "data"):
        die(f"unknown flavour {argv[2]} (daemon or data)")
    daemon_flavour = argv[2] == "daemon"
    domain = P.arg_int(argv[3], "domain", 0, 32751)
    port = P.arg_int(argv[4], "port", 0, 1 << 30)
    rounds = P.arg_int(argv[5], "rounds", 1, 100000)
    sync = argv[6]
    P.sync_check(sync)
    t_limit = P.test_timeout()
    if argv[1] == "server":
        server(domain, port, rounds, sync)
    elif argv[1] in ("client-async", "client-blocking"):
        client(argv[1] == "client-async", domain, port, rounds, sync)
    else:
        die(f"unknown role {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
