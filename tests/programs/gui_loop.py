"""gui_loop: the GUI protocol's loop, the vchan fd and an unrelated fd in one poll (Python twin).

usage: python gui_loop.py server|client DOMAIN PORT MESSAGES

The same program as gui_loop.c, on :mod:`vchan.libvchan`; that file's comment describes the
messages, the events on the program's own pipe and what is checked. Exit status 0 with a
summary on stderr; 1 with the reason on stderr at any deviation.
"""

from __future__ import annotations

import os
import select
import sys
from typing import TYPE_CHECKING

import _progs as P
from _progs import die, die_errno, guard, now, scaled

import vchan.libvchan as lv

if TYPE_CHECKING:
    from vchan._engine import EngineChannel as Channel

MAX_BODY = 4000
WINDOW = 4
RING = 65536
ACC = 2 * RING

t_limit = 10.0


def body_len(seed: int, i: int) -> int:
    return P.mix64(seed ^ i) % (MAX_BODY + 1)


def write_all(c: Channel, data: bytes, what: str) -> None:
    with guard(what, 2 * t_limit):
        w = lv.libvchan_write(c, data, len(data))
    if w != len(data):
        die_errno(f"{what}: write({len(data)}) returned {w}", lv.last_errno())


def run(is_server: bool, domain: int, port: int, messages: int) -> int:
    my_seed, peer_seed = (1, 2) if is_server else (2, 1)
    tx, rx = P.Stream(my_seed), P.Stream(peer_seed)
    tx_off = rx_off = 0
    sent = received = queued = noise = 0
    wakeups = empty = pipe_wakeups = 0
    max_wait = 0.0
    acc = bytearray()
    buf = bytearray(RING)
    prd, pwr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    if is_server:
        got = lv.libvchan_server_init(domain, port, RING, RING)
        if got is None:
            die_errno(f"server_init({domain}, {port})", lv.last_errno())
    else:
        with guard("client_init", 2 * t_limit):
            got = lv.libvchan_client_init(domain, port)
        if got is None:
            die_errno(f"client_init({domain}, {port})", lv.last_errno())
        for _ in range(min(WINDOW, messages)):
            os.write(pwr, b"m")
            queued += 1
    c: Channel = got
    vfd = lv.libvchan_fd_for_select(c)
    t0 = now()
    p = select.poll()
    p.register(vfd, select.POLLIN)
    p.register(prd, select.POLLIN)

    while not (sent == messages and received == messages):
        events = dict(P.poll_until(p, now() + t_limit))
        if not events:
            die(
                f"nothing happened for {t_limit:.1f} s: sent {sent}, received {received} of "
                f"{messages}, is_open {lv.libvchan_is_open(c)}, data_ready "
                f"{lv.libvchan_data_ready(c)} (an event lost?)"
            )
        vev = events.get(vfd, 0)
        if vev & (select.POLLERR | select.POLLNVAL):
            die(f"the vchan fd polled revents 0x{vev:x}")

        # the other fd: our own events
        if events.get(prd, 0) & select.POLLIN:
            try:
                ev = os.read(prd, 64)
            except BlockingIOError:
                ev = b""
            pipe_wakeups += 1
            for e in ev:
                if e == ord("n"):
                    noise += 1
                    continue
                if sent >= messages:
                    die(f"asked to send message {sent} of {messages}")
                length = body_len(my_seed, sent)
                write_all(c, P.HDR.pack(sent, length), "write of a header")
                if length:
                    write_all(c, tx.fill(tx_off, length), "write of a body")
                tx_off += length
                sent += 1

        # the vchan fd: wait(), then whatever data_ready() reports
        if vev & select.POLLIN:
            t = now()
            with guard("wait() after the vchan fd polled readable", t_limit):
                if lv.libvchan_wait(c) < 0:
                    die_errno("wait()", lv.last_errno())
            took = now() - t
            max_wait = max(max_wait, took)
            if took > scaled(1):
                die(f"wait() took {took:.3f} s after the fd polled readable")
            wakeups += 1
            any_data = False
            while (ready := lv.libvchan_data_ready(c)) > 0:
                want = min(ready, ACC - len(acc), len(buf))
                if not want:
                    die(f"{len(acc)} bytes without a complete message")
                with guard("read of what data_ready() reported", t_limit):
                    r = lv.libvchan_read(c, buf, want)
                if r <= 0:
                    die_errno(
                        f"read({want}) after data_ready() = {ready} returned {r}", lv.last_errno()
                    )
                acc += buf[:r]
                any_data = True
                off = 0
                # every complete message
                while len(acc) - off >= 8:
                    seq, length = P.HDR.unpack_from(acc, off)
                    if seq != received:
                        die(f"message {received} arrived with sequence number {seq}")
                    if length != body_len(peer_seed, received):
                        die(
                            f"message {received}: length {length}, expected "
                            f"{body_len(peer_seed, received)}"
                        )
                    if len(acc) - off - 8 < length:
                        break
                    bad = rx.mismatch(rx_off, memoryview(acc)[off + 8 : off + 8 + length])
                    if bad >= 0:
                        die(f"message {received}: body byte {bad} differs")
                    rx_off += length
                    off += 8 + length
                    received += 1
                    if received > messages:
                        die(f"more than {messages} messages")
                    if queued < messages:
                        queued += 1
                        os.write(pwr, b"m")
                    if received % 7 == 0:
                        os.write(pwr, b"n")
                del acc[:off]
            if not any_data:
                empty += 1
            state = lv.libvchan_is_open(c)
            gone = state != lv.VCHAN_CONNECTED and not lv.libvchan_data_ready(c)
            if gone and received < messages:
                die(f"the peer went after {received} of {messages} messages (is_open {state})")

    if is_server:
        # the client closes now: the fd must say so
        end = now() + t_limit
        q = select.poll()
        q.register(vfd, select.POLLIN)
        while lv.libvchan_is_open(c) != lv.VCHAN_DISCONNECTED:
            if not P.poll_until(q, end):
                die(f"the client's close never showed on the fd (is_open {lv.libvchan_is_open(c)})")
            with guard("wait() after the vchan fd polled readable", t_limit):
                if lv.libvchan_wait(c) < 0:
                    die_errno("wait()", lv.last_errno())
            if lv.libvchan_data_ready(c):
                die(f"{lv.libvchan_data_ready(c)} bytes after the last message")
    lv.libvchan_close(c)
    print(
        f"{P.name()}: ok, {messages} messages each way in {now() - t0:.2f} s; {wakeups} vchan "
        f"wake-ups ({empty} with no data), {pipe_wakeups} pipe wake-ups ({noise} noise "
        f"events), wait() max {max_wait * 1e3:.2f} ms",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str]) -> int:
    global t_limit
    P.start(f"gui_loop {argv[1] if len(argv) > 1 else ''}")
    if len(argv) != 5 or argv[1] not in ("server", "client"):
        print("usage: gui_loop.py server|client DOMAIN PORT MESSAGES", file=sys.stderr)
        return 2
    t_limit = P.test_timeout()
    return run(
        argv[1] == "server",
        P.arg_int(argv[2], "domain", 0, 32751),
        P.arg_int(argv[3], "port", 0, 1 << 30),
        P.arg_int(argv[4], "messages", 1, 1 << 30),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
