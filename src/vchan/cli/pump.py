"""``vchan listen`` and ``vchan connect``: open the channel, then copy both ways.

:class:`Pump` copies standard input to the vchan and the vchan to standard output at the
same time, driven by ``poll()`` on the three descriptors (never blocking on one while
another could make progress).
"""

from __future__ import annotations

import argparse
import os
import select
import stat
import sys
import time
from dataclasses import dataclass, field

from .. import _config
from ..channel import State, Vchan, client, server
from ..exceptions import ConnectTimeout, Disconnected, VchanError
from .errors import describe, die
from .parser import PROG

#: Largest chunk moved per system call.
CHUNK = 65536
#: At most this much received data waits for standard output before we stop reading.
OUT_MAX = 4 * CHUNK
#: A write of at most PIPE_BUF bytes to a pipe that polls writable does not block.
PIPE_BUF = select.PIPE_BUF


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


@dataclass
class Pump:
    """The select-driven copy between (stdin, stdout) and a connected vchan.

    Each turn of :meth:`run`: move input into the vchan as far as ``buffer_space()`` allows,
    take what the vchan holds (while there is room for it), stop if the peer left or the
    input ended, else sleep in ``poll()`` until a descriptor can make progress.
    """

    vc: Vchan
    send: bool
    receive: bool
    on_eof: str
    stdin: int = 0
    stdout: int = 1
    _inbuf: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _outbuf: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _in_eof: bool = field(default=False, init=False)
    _took_input: bool = field(default=False, init=False)
    _peer_gone: bool = field(default=False, init=False)

    def run(self) -> int:
        self.vc.set_blocking(False)
        vfd = self.vc.fileno()
        self._in_eof = not self.send
        # Never block on stdout while the vchan or stdin could make progress: regular files
        # never block; anything else gets at most PIPE_BUF bytes per POLLOUT.
        out_chunk = CHUNK if _is_regular(self.stdout) else PIPE_BUF
        poller = select.poll()
        while True:
            self._to_vchan()
            self._from_vchan()
            if self._peer_gone:
                self._end_with_peer()
                return 0
            if self._input_done():
                self.vc.close()  # accepted bytes still reach the peer: it sees end of stream
                self._flush(self._outbuf)
                return 0
            self._poll(poller, vfd, out_chunk)

    def _to_vchan(self) -> None:
        """stdin -> vchan, as far as buffer_space() allows."""
        inbuf = self._inbuf
        if not inbuf or self._peer_gone:
            return
        try:
            space = self.vc.buffer_space()
            if space:
                del inbuf[: self.vc.write(inbuf[:space])]
        except BlockingIOError:
            pass
        except Disconnected:
            self._peer_gone = True

    def _from_vchan(self) -> None:
        """vchan -> outbuf, while there is room for it (or only watch for the peer leaving)."""
        if not self.receive:
            if not self._peer_gone and self.vc.state == State.DISCONNECTED:
                self._peer_gone = True
            return
        while len(self._outbuf) < OUT_MAX and not self._peer_gone:
            try:
                data = self.vc.read(CHUNK)
            except BlockingIOError:
                return
            if not data:
                self._peer_gone = True
                return
            self._outbuf += data

    def _end_with_peer(self) -> None:
        """The peer left: deliver what it sent; fail if it did not take all our input."""
        self._flush(self._outbuf)
        if self._inbuf:
            die(
                f"the peer closed the channel; {len(self._inbuf)} bytes of input were not delivered"
            )
        if self.send and not self.receive and not self._in_eof:
            die("the peer closed the channel before the end of input")

    def _input_done(self) -> bool:
        """Whether the end of input (all of it in the vchan) closes the channel now."""
        if not (self._in_eof and not self._inbuf and self.send):
            return False
        return (
            self.on_eof == "close"
            or not self.receive
            or (self.on_eof == "auto" and self._took_input)
        )

    def _watch(self, poller: select.poll, vfd: int) -> bool:
        """Register what can make progress (always the vchan); whether stdin is wanted."""
        want_in = not self._in_eof and len(self._inbuf) < CHUNK
        for fd in (vfd, self.stdin, self.stdout):
            try:
                poller.unregister(fd)
            except KeyError:
                pass
        poller.register(vfd, select.POLLIN)
        if want_in:
            poller.register(self.stdin, select.POLLIN)
        if self._outbuf:
            poller.register(self.stdout, select.POLLOUT)
        return want_in

    def _poll(self, poller: select.poll, vfd: int, out_chunk: int) -> None:
        """Sleep until a descriptor can make progress, then make it."""
        want_in = self._watch(poller, vfd)
        for fd, _events in poller.poll():
            if fd == vfd:
                self.vc.wait()
            elif fd == self.stdin and want_in:
                data = os.read(self.stdin, CHUNK)
                if data:
                    self._inbuf += data
                    self._took_input = True
                else:
                    self._in_eof = True
            elif fd == self.stdout and self._outbuf:
                del self._outbuf[: os.write(self.stdout, self._outbuf[:out_chunk])]

    def _flush(self, outbuf: bytearray) -> None:
        """Write the rest of the received data (blocking is fine: nothing else to do)."""
        view = memoryview(outbuf)
        try:
            while view:
                view = view[os.write(self.stdout, view) :]
        finally:
            view.release()
        outbuf.clear()


def _wait_for_client(vc: Vchan, timeout: float | None, what: str) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    poller = select.poll()
    poller.register(vc.fileno(), select.POLLIN)
    while vc.state == State.WAITING:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            die(f"no client connected within {timeout:g} s ({what})")
        if poller.poll(None if left is None else max(1, int(left * 1000))):
            if vc.state != State.WAITING:
                vc.wait()  # the "client connected" event
                return


def cmd_copy(args: argparse.Namespace) -> int:
    local = _config.local_domain()
    send = not args.receive_only
    receive = not args.send_only
    if args.command == "listen":
        what = f"server domain {local}, client domain {args.domain}, port {args.port}"
        try:
            vc = server(args.domain, args.port, args.read_min, args.write_min, backend=args.backend)
        except (VchanError, OSError) as exc:
            die(f"cannot listen: {describe(exc, what)}")
        with vc:
            if args.verbose:
                print(f"{PROG}: listening ({what})", file=sys.stderr, flush=True)
            _wait_for_client(vc, args.timeout, what)
            if args.verbose:
                print(f"{PROG}: connected", file=sys.stderr, flush=True)
            return Pump(vc, send, receive, args.on_eof).run()
    what = f"server domain {args.domain}, client domain {local}, port {args.port}"
    if args.verbose:
        print(f"{PROG}: connecting ({what})", file=sys.stderr, flush=True)
    try:
        vc = client(args.domain, args.port, timeout=args.timeout, backend=args.backend)
    except ConnectTimeout:
        die(f"no server appeared within {args.timeout:g} s ({what})")
    except (VchanError, OSError) as exc:
        die(f"cannot connect: {describe(exc, what)}")
    with vc:
        if args.verbose:
            print(f"{PROG}: connected", file=sys.stderr, flush=True)
        return Pump(vc, send, receive, args.on_eof).run()
