"""qrexec_data: qrexec's data loop, stdin to the remote end and back, both ways (Python twin).

usage: python qrexec_data.py server|client local|remote DOMAIN PORT
       python qrexec_data.py gen SEED SIZE
       python qrexec_data.py verify SEED SIZE

The same program as qrexec_data.c, on :mod:`vchan.libvchan`; that file's comment describes
the messages and the loop. Exit status 0 with a summary on stderr; 1 with the reason on
stderr at any deviation.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
from typing import TYPE_CHECKING

import _progs as P
from _progs import die, die_errno, guard, now

import vchan.libvchan as lv

if TYPE_CHECKING:
    from vchan._engine import EngineChannel as Channel

T_DATA = 0x190
T_EXIT = 0x193
BUF = 65536
HDR = 8

t_limit = 10.0


def recv_into(c: Channel, view: memoryview, what: str) -> None:
    n = len(view)
    with guard(what, 2 * t_limit):
        r = lv.libvchan_recv(c, view, n)
    if r != n:
        die_errno(f"{what}: recv({n}) returned {r}", lv.last_errno())


def send_hdr(c: Channel, typ: int, length: int, what: str) -> None:
    with guard(what, 2 * t_limit):
        r = lv.libvchan_send(c, P.HDR.pack(typ, length), HDR)
    if r != HDR:
        die_errno(f"{what}: send({HDR}) returned {r}", lv.last_errno())


def gen(seed: int, size: int) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    s = P.Stream(seed)
    off = 0
    while off < size:
        chunk = memoryview(s.fill(off, min(BUF, size - off)))
        while chunk:
            try:
                w = os.write(1, chunk)
            except OSError as exc:
                die_errno("gen: write to stdout", exc.errno or errno.EIO)
            chunk = chunk[w:]
        off += min(BUF, size - off)
    return 0


def verify(seed: int, size: int) -> int:
    s = P.Stream(seed)
    got = 0
    while True:
        data = os.read(0, BUF)
        if not data:
            break
        if got + len(data) > size:
            die(f"verify: more than the {size} bytes expected")
        bad = s.mismatch(got, data)
        if bad >= 0:
            die(f"verify: byte {got + bad} differs from stream {seed}")
        got += len(data)
    if got != size:
        die(f"verify: EOF after {got} of {size} bytes")
    print(f"{P.name()}: ok, {size} bytes of stream {seed}", file=sys.stderr)
    return 0


def connect_end(is_server: bool, domain: int, port: int) -> Channel:
    if is_server:
        c = lv.libvchan_server_init(domain, port, BUF, BUF)
        if c is None:
            die_errno(f"server_init({domain}, {port})", lv.last_errno())
        # as qrexec waits for its data client: poll the select fd, then wait()
        p = select.poll()
        p.register(lv.libvchan_fd_for_select(c), select.POLLIN)
        while lv.libvchan_is_open(c) == lv.VCHAN_WAITING:
            if not P.poll_until(p, now() + 2 * t_limit):
                die(f"no client within {2 * t_limit:.1f} s")
            with guard("wait() for the client", t_limit):
                if lv.libvchan_wait(c) < 0:
                    die_errno("wait() for the client", lv.last_errno())
        ch: Channel = c
    else:
        with guard("client_init", 2 * t_limit):
            got = lv.libvchan_client_init(domain, port)
        if got is None:
            die_errno(f"client_init({domain}, {port})", lv.last_errno())
        ch = got
    state = lv.libvchan_is_open(ch)
    if state != lv.VCHAN_CONNECTED:
        die(f"is_open() = {state} after connecting")
    return ch


def endpoint(is_server: bool, remote: bool, domain: int, port: int) -> int:
    c = connect_end(is_server, domain, port)
    vfd = lv.libvchan_fd_for_select(c)
    outbuf = bytearray(BUF)
    outview = memoryview(outbuf)
    hdrbuf = bytearray(HDR)
    out_off = out_len = 0
    in_eof = peer_eof = exit_got = out_closed = False
    sent = received = turns = zero_timeouts = 0
    t0 = now()
    os.set_blocking(1, False)
    POLLIN, POLLOUT = select.POLLIN, select.POLLOUT
    in_events = POLLIN | select.POLLHUP | select.POLLERR
    out_events = POLLOUT | select.POLLERR | select.POLLHUP

    def summary() -> None:
        print(
            f"{P.name()}: ok, sent {sent}, received {received} bytes in {now() - t0:.2f} s, "
            f"{turns} turns, {zero_timeouts} zero-timeout polls",
            file=sys.stderr,
        )

    def flush_out() -> None:
        nonlocal out_off, out_len
        try:
            w = os.write(1, outview[out_off : out_off + out_len])
        except BlockingIOError:
            return
        except OSError as exc:
            die_errno("write to stdout", exc.errno or errno.EIO)
        out_off += w
        out_len -= w

    while True:
        if remote and in_eof and peer_eof and out_closed:
            # the service is done: the exit code, close, exit at once
            send_hdr(c, T_EXIT, 4, "send of the EXIT header")
            with guard("write of the exit code", 2 * t_limit):
                w = lv.libvchan_write(c, b"\0\0\0\0", 4)
            if w != 4:
                die_errno(f"write of the exit code returned {w}", lv.last_errno())
            lv.libvchan_close(c)
            summary()
            return 0
        if not lv.libvchan_is_open(c) and not lv.libvchan_data_ready(c):
            break  # qrexec's end test
        turns += 1
        space = lv.libvchan_buffer_space(c)  # qrexec asks every turn
        p = select.poll()
        if not in_eof and space > HDR:
            p.register(0, POLLIN)
        if out_len:
            p.register(1, POLLOUT)
        p.register(vfd, POLLIN)
        timeout = -1
        if not out_len and lv.libvchan_data_ready(c) > 0:
            timeout = 0
            zero_timeouts += 1
        events = dict(p.poll(int(t_limit * 1000) if timeout < 0 else 0))
        if not events and timeout < 0:
            die(
                f"nothing happened for {t_limit:.1f} s: sent {sent}, received {received}, "
                f"buffer_space {space}, data_ready {lv.libvchan_data_ready(c)}, is_open "
                f"{lv.libvchan_is_open(c)}, stdin {'at EOF' if in_eof else 'open'}, peer EOF "
                f"{'got' if peer_eof else 'no'}, output pending {out_len}"
            )
        vev = events.get(vfd, 0)
        if vev & POLLIN:
            with guard("wait() after the vchan fd polled readable", t_limit):
                if lv.libvchan_wait(c) < 0:
                    die_errno("wait()", lv.last_errno())
        if vev & (select.POLLERR | select.POLLNVAL):
            die(f"the vchan fd polled revents 0x{vev:x}")

        # pending output -> stdout
        if out_len and events.get(1, 0) & out_events:
            flush_out()

        # vchan -> stdout, while nothing is pending there
        while not out_len and lv.libvchan_data_ready(c) > 0:
            recv_into(c, memoryview(hdrbuf), "blocking recv of a header")
            typ, length = P.HDR.unpack(hdrbuf)
            if exit_got:
                die(f"a message (0x{typ:x}) after EXIT")
            if typ == T_EXIT:
                if remote:
                    die("the local end sent EXIT")
                if length != 4:
                    die(f"EXIT message of length {length}")
                recv_into(c, memoryview(bytearray(4)), "blocking recv of the exit code")
                if not peer_eof:
                    die("EXIT before the remote's EOF")
                exit_got = True
                continue
            if typ != T_DATA:
                die(f"unknown message type 0x{typ:x} (after {received} bytes)")
            if peer_eof:
                die("DATA after the peer's EOF")
            if length > BUF - HDR:
                die(f"DATA message of {length} bytes, more than buffer_space() could promise")
            if length == 0:
                peer_eof = True
                os.close(1)
                out_closed = True
                continue
            recv_into(c, outview[:length], "blocking recv of a payload")
            received += length
            out_off, out_len = 0, length
            flush_out()

        # stdin -> vchan, at most what buffer_space() promises
        if events.get(0, 0) & in_events:
            space = lv.libvchan_buffer_space(c)
            if space > HDR:
                data = os.read(0, min(space - HDR, BUF))
                if not data:
                    in_eof = True
                    send_hdr(c, T_DATA, 0, "send of our EOF")
                else:
                    send_hdr(c, T_DATA, len(data), "send of a DATA header")
                    with guard("write of a payload", 2 * t_limit):
                        w = lv.libvchan_write(c, data, len(data))
                    if w != len(data):
                        die_errno(
                            f"write of {len(data)} payload bytes returned {w}", lv.last_errno()
                        )
                    sent += len(data)
    # the peer closed and everything it sent has been read
    if remote:
        die(
            f"the local end closed first (sent {sent}, received {received} bytes, peer EOF "
            f"{'got' if peer_eof else 'no'})"
        )
    if not in_eof:
        die(f"the remote end closed before our input was all sent ({sent} bytes sent)")
    if not peer_eof or not exit_got:
        die(
            f"the channel ended without the remote's {'EXIT' if peer_eof else 'EOF'} "
            f"(received {received} bytes)"
        )
    lv.libvchan_close(c)
    summary()
    return 0


def main(argv: list[str]) -> int:
    global t_limit
    role = (
        " ".join(argv[1:3])
        if len(argv) > 2 and argv[1] in ("server", "client")
        else (argv[1] if len(argv) > 1 else "")
    )
    P.start(f"qrexec_data {role}")
    t_limit = P.test_timeout()
    if len(argv) == 4 and argv[1] in ("gen", "verify"):
        seed = P.arg_int(argv[2], "seed", 0, (1 << 63) - 1)
        size = P.arg_int(argv[3], "size", 0, (1 << 63) - 1)
        return gen(seed, size) if argv[1] == "gen" else verify(seed, size)
    if len(argv) == 5 and argv[1] in ("server", "client") and argv[2] in ("local", "remote"):
        return endpoint(
            argv[1] == "server",
            argv[2] == "remote",
            P.arg_int(argv[3], "domain", 0, 32751),
            P.arg_int(argv[4], "port", 0, 1 << 30),
        )
    print(
        "usage: qrexec_data.py server|client local|remote DOMAIN PORT\n"
        "       qrexec_data.py gen|verify SEED SIZE",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
