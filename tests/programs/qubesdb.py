"""qubesdb: a daemon that re-inits its server whenever its peer goes, and a writer (Python twin).

usage: python qubesdb.py daemon DOMAIN PORT RECORD_FILE
       python qubesdb.py writer DOMAIN PORT GEN COUNT

The same program as qubesdb.c, on :mod:`vchan.libvchan`; that file's comment describes the
records, the acknowledgements and what is checked. Exit status 0 with a summary on stderr;
1 with the reason on stderr at any deviation.
"""

from __future__ import annotations

import os
import re
import select
import sys
from typing import TYPE_CHECKING

import _progs as P
from _progs import die, die_errno, guard, now, scaled

import vchan.libvchan as lv

if TYPE_CHECKING:
    from vchan._engine import EngineChannel as Channel

LINE_MAX_LEN = 64
ACC = 8192
KEY = re.compile(r"key-(\d+)-(\d+)")
QUIT = re.compile(r"quit-(\d+)")

t_limit = 10.0


def drain(c: Channel, acc: bytearray) -> None:
    """Read what data_ready() reports into ``acc``."""
    buf = bytearray(ACC)
    while (n := lv.libvchan_data_ready(c)) > 0:
        room = ACC - len(acc)
        if not room:
            die(f"{len(acc)} bytes without a newline")
        n = min(n, room)
        with guard("read of what data_ready() reported", t_limit):
            r = lv.libvchan_read(c, buf, n)
        if r <= 0:
            die_errno(f"read({n}) after data_ready() = {n} returned {r}", lv.last_errno())
        acc += buf[:r]


def take_line(acc: bytearray) -> str | None:
    """The first complete line (without its newline), removed from ``acc``; None if none."""
    i = acc.find(b"\n")
    if i < 0:
        return None
    if i > LINE_MAX_LEN:
        die(f"a line of {i} bytes: {bytes(acc[:20])!r}...")
    line = acc[:i].decode(errors="replace")
    del acc[: i + 1]
    return line


def send_str(c: Channel, s: str) -> int:
    data = s.encode()
    with guard("send of a line", 2 * t_limit):
        return int(lv.libvchan_send(c, data, len(data)))


def daemon_main(domain: int, port: int, record: str) -> int:
    last_gen = -1
    keys = dropped = 0
    max_reinit = 0.0
    rec = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    session = 0
    while True:
        t0 = now()
        c = lv.libvchan_server_init(domain, port, 4096, 4096)
        took = now() - t0
        if c is None:
            die_errno(f"session {session}: server_init({domain}, {port}) again", lv.last_errno())
        max_reinit = max(max_reinit, took)
        acc = bytearray()
        gen = -1
        nxt = 0
        quit_ = False
        p = select.poll()
        p.register(lv.libvchan_fd_for_select(c), select.POLLIN)
        while True:
            # a new writer starts at once, the old one writes without a pause
            if not P.poll_until(p, now() + 2 * t_limit):
                die(
                    f"session {session}: nothing happened for {2 * t_limit:.1f} s (is_open "
                    f"{lv.libvchan_is_open(c)})"
                )
            with guard("wait() after the fd polled readable", t_limit):
                if lv.libvchan_wait(c) < 0:
                    die_errno(f"session {session}: wait()", lv.last_errno())
            state = lv.libvchan_is_open(c)
            if state == lv.VCHAN_WAITING:
                continue
            drain(c, acc)  # bytes that came before a disconnect stay readable
            while (line := take_line(acc)) is not None:
                m = QUIT.fullmatch(line)
                if m:
                    if int(m.group(1)) != gen:
                        die(f"session {session}: {line} from writer {gen}")
                    if send_str(c, "bye\n") != 4:
                        die_errno(f"session {session}: send of bye", lv.last_errno())
                    quit_ = True
                    break
                m = KEY.fullmatch(line)
                if not m:
                    die(f'session {session}: not a record: "{line}"')
                g, n = int(m.group(1)), int(m.group(2))
                if gen < 0:
                    if g <= last_gen:
                        die(
                            f'session {session}: first record "{line}" is from writer {g}, '
                            f"not newer than the last session's {last_gen} (a byte of an "
                            "old session?)"
                        )
                    gen = g
                if g != gen or n != nxt:
                    die(f'session {session}: record "{line}", expected key-{gen}-{nxt}')
                nxt += 1
                keys += 1
                # recorded before it is acknowledged
                os.write(rec, f"{line}\n".encode())
                ack = f"ack-{g}-{n}\n"
                if send_str(c, ack) != len(ack):
                    if lv.libvchan_is_open(c) != lv.VCHAN_DISCONNECTED:
                        die_errno(f'session {session}: send of "{ack}"', lv.last_errno())
                    break  # the writer is gone: its loss
            if quit_:
                break
            if state == lv.VCHAN_DISCONNECTED and not lv.libvchan_data_ready(c):
                break  # the peer went: close, and serve again
        dropped += len(acc)
        lv.libvchan_close(c)
        if quit_:
            print(
                f"{P.name()}: ok, {session + 1} sessions, {keys} keys recorded, {dropped} bytes "
                f"of half-written records dropped, server_init again max "
                f"{max_reinit * 1e3:.1f} ms",
                file=sys.stderr,
            )
            return 0
        if gen >= 0:
            last_gen = gen
        session += 1


def writer_main(domain: int, port: int, gen: int, count: int) -> int:
    t0 = now()
    with guard("client_init", 2 * t_limit):
        got = lv.libvchan_client_init(domain, port)
    took = now() - t0
    if got is None:
        die_errno(f"client_init({domain}, {port})", lv.last_errno())
    c: Channel = got
    if took > scaled(1):
        die(f"client_init took {took:.3f} s (the daemon re-inits as soon as its peer goes)")
    state = lv.libvchan_is_open(c)
    if state != lv.VCHAN_CONNECTED:
        die(f"is_open() = {state} after client_init")
    p = select.poll()
    p.register(lv.libvchan_fd_for_select(c), select.POLLIN)
    acc = bytearray()
    n = 0
    while True:
        quitting = bool(count) and n == count
        if quitting:
            line, want = f"quit-{gen}\n", "bye"
        else:
            line, want = f"key-{gen}-{n}\n", f"ack-{gen}-{n}"
        if send_str(c, line) != len(line):
            die_errno(f"send of {line.strip()}", lv.last_errno())
        while True:
            got_line = take_line(acc)
            if got_line is not None:
                if got_line != want:
                    die(f'got "{got_line}", expected "{want}"')
                break
            if not P.poll_until(p, now() + t_limit):
                die(f'no "{want}" within {t_limit:.1f} s')
            with guard("wait() after the fd polled readable", t_limit):
                if lv.libvchan_wait(c) < 0:
                    die_errno("wait()", lv.last_errno())
            drain(c, acc)
            if not lv.libvchan_is_open(c) and not lv.libvchan_data_ready(c) and b"\n" not in acc:
                die(f'the daemon went away while we waited for "{want}"')
        if quitting:
            break
        # acknowledged: tell the driver (one write, atomic on a pipe)
        os.write(1, line.encode())
        if not count and now() - t0 > 4 * t_limit:
            die(f"not killed within {4 * t_limit:.1f} s")
        n += 1
    lv.libvchan_close(c)
    print(
        f"{P.name()}: ok, {count} keys acknowledged, connected in {took * 1e3:.1f} ms",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str]) -> int:
    global t_limit
    P.start(f"qubesdb {argv[1] if len(argv) > 1 else ''}")
    t_limit = P.test_timeout()
    if len(argv) == 5 and argv[1] == "daemon":
        return daemon_main(
            P.arg_int(argv[2], "domain", 0, 32751),
            P.arg_int(argv[3], "port", 0, 1 << 30),
            argv[4],
        )
    if len(argv) == 6 and argv[1] == "writer":
        return writer_main(
            P.arg_int(argv[2], "domain", 0, 32751),
            P.arg_int(argv[3], "port", 0, 1 << 30),
            P.arg_int(argv[4], "generation", 0, 1 << 30),
            P.arg_int(argv[5], "count", 0, 1 << 30),
        )
    print(
        "usage: qubesdb.py daemon DOMAIN PORT RECORD_FILE\n"
        "       qubesdb.py writer DOMAIN PORT GEN COUNT",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
