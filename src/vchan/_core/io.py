"""The data path, like ``libvchan-socket/io.c``: read, recv (and its stash), data_ready,
buffer_space, write, send, and the overflow the pusher delivers.

The common path of every call is one send() or recv() system call (DESIGN.md). The connection
is blocking at the socket level: every call that must not wait passes MSG_DONTWAIT, so a
blocking read() or recv() that has to wait sleeps inside one recv().

Inlined on purpose. The hot paths (read, recv, send's _fast_send) inline three small things
a method call would cost measurably there (~30 ns a call, 2% of a read; the read path is one
recv() of ~1.4 us): ``_enter()``/``_leave()``; the truesize bound (``tsz()``, from the named
constants); and the consumption count, C's ``vchan__consumed()``, written as this one
pattern (notify.py's ``_count()`` is the same for the paths that are not hot)::

    c = self._consumed + n
    self._consumed = c
    if c > self._seen and not self._latched:
        self._latch()
"""

from __future__ import annotations

import errno
import select
import socket

from .. import _linux
from .internal import (
    _FIONREAD,
    _INT0,
    _POLL_GONE,
    CONNECTED,
    DISCONNECTED,
    TSZ_BASE,
    TSZ_SHIFT,
    TSZ_STEP,
    WAITING,
    InBuf,
    OutBuf,
    _Channel,
    _ioctl,
)
from .util import _oserror, fit, tsz

_SEND_FLAGS = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT
_DONTWAIT = socket.MSG_DONTWAIT
_WAITALL = socket.MSG_WAITALL
_FREE_CHUNK = 65536
_UNKNOWN_U = 1 << 62


class IO(_Channel):
    """The data path (io.c)."""

    # ------------------------------------------------------------------------------ reading

    def read(self, buf: OutBuf, size: int) -> int:
        if size == 0:
            self._check_open()
            return 0
        while self._settle() == WAITING:
            if not self._blocking:
                return 0
            self._wait_connected()
        size = min(size, self.read_ring)
        if self._stash:
            n = min(size, len(self._stash))
            buf[:n] = self._stash[:n]
            del self._stash[:n]
            return n
        sock = self._sock
        if sock is None:
            self._check_open()  # closed (EBADF, as every call), else
            raise self._gone()  # a client whose connection attempt failed
        if self._blocking:
            calls = self._calls  # _enter() and _leave(), inlined
            calls.append(None)
            try:
                if self._closed:
                    raise _oserror(errno.EBADF, "vchan is closed")
                n = sock.recv_into(buf, size)
            except ConnectionResetError:
                n = 0
            except OSError:
                self._check_open()
                raise
            finally:
                calls.pop()
                if self._closed or self._retired:
                    self._leave_cleanup()
        else:
            try:
                n = sock.recv_into(buf, size, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return 0
            except ConnectionResetError:
                raise self._gone() from None
            except OSError as exc:
                self._check_open()
                raise exc
        if n > 0:
            c = self._consumed + n  # a consumed byte wait() has not seen latches (§5)
            self._consumed = c
            if c > self._seen and not self._latched:
                self._latch()
            return n
        if self._blocking:
            self._check_open()  # close() from another thread wakes us with EOF
        raise self._gone()

    def recv(self, buf: OutBuf, size: int) -> int:
        if size == 0:
            self._check_open()
            return 0
        if self._state == WAITING:
            while self._settle() == WAITING:
                if not self._blocking:
                    return 0
                self._wait_connected()
        sock = self._sock
        if sock is None:
            self._check_open()  # closed (EBADF, as every call), else
            raise self._gone()  # a client whose connection attempt failed
        stash = self._stash
        if not stash and size <= self.read_ring:
            if self._blocking:
                # One recv() that sleeps in the kernel until all `size` bytes are there; it
                # returns fewer only if the peer left (or a signal or close() came).
                # _enter() and _leave(), inlined: this is every blocking recv's path.
                calls = self._calls
                calls.append(None)
                try:
                    if self._closed:
                        raise _oserror(errno.EBADF, "vchan is closed")
                    n = sock.recv_into(buf, size, _WAITALL)
                except (BlockingIOError, InterruptedError):
                    n = -1
                except ConnectionResetError:
                    n = 0
                finally:
                    calls.pop()
                    if self._closed or self._retired:
                        self._leave_cleanup()
            else:
                try:  # common case: everything is already queued
                    n = sock.recv_into(buf, size, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    n = -1
                except ConnectionResetError:
                    raise self._gone() from None
            if n == size:
                c = self._consumed + n  # a consumed byte wait() has not seen latches (§5)
                self._consumed = c
                if c > self._seen and not self._latched:
                    self._latch()
                return n
            if self._blocking:
                self._check_open()  # close() from another thread makes it return short
            if n > 0:
                self._count(n)
                stash += buf[:n]
            elif n == 0:
                raise self._gone()
        final = False
        while True:
            eof = False
            want = min(size, self.read_ring) - len(stash)
            if want > 0:
                chunk = bytearray(want)
                try:
                    n = sock.recv_into(chunk, want, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    n = -1
                except ConnectionResetError:
                    n = 0
                if n > 0:
                    self._count(n)
                    stash += memoryview(chunk)[:n]
                eof = n == 0
            if len(stash) >= size:
                buf[:size] = stash[:size]
                del stash[:size]
                return size
            if eof or final:
                raise self._gone()
            if (not self._blocking or size > self.read_ring) and self._peer_gone():
                # As in Xen, a gone peer is reported before "not now" (0); but only after
                # one more pull, for bytes that arrived just before the peer left.
                final = True
                continue
            if not self._blocking:
                return 0
            if size > self.read_ring:
                raise _oserror(errno.EMSGSIZE, f"recv of {size} bytes exceeds the read ring")
            self._sock_wait(select.POLLIN | _linux.POLLRDHUP)

    def _sock_wait(self, events: int) -> int:
        sock = self._sock
        assert sock is not None
        self._enter()
        try:
            return self._poll(sock.fileno(), events)
        finally:
            self._leave()

    def data_ready(self) -> int:
        if self._closed:
            raise _oserror(errno.EBADF, "vchan is closed")
        if self._state == WAITING and self._settle() == WAITING:
            return 0
        sock = self._sock
        if sock is None:
            return 0
        buf = _INT0.__copy__()  # _queued(), inlined
        try:
            _ioctl(sock.fileno(), _FIONREAD, buf, True)
        except OSError:
            self._check_open()
        queued = buf[0] + len(self._stash)
        ring = self.read_ring
        return queued if queued < ring else ring

    # ------------------------------------------------------------------------------ writing

    def buffer_space(self) -> int:
        self._check_open()
        state = self._settle()
        with self._lock:
            if state == WAITING:
                self._arm()  # not connected yet: _attach applies the request
                space = 0 if self._pending() else self.write_ring - len(self._overflow)
            elif state == DISCONNECTED:
                space = 0
            else:
                self._arm()  # as Xen's buffer_space() requests VCHAN_NOTIFY_READ; then measure
                space = self._measure_space()
            self._promised = space
            return space

    def _measure_space(self) -> int:
        sock = self._sock
        assert sock is not None
        try:
            self._u_est = _linux.ioctl_int(sock, _linux.SIOCOUTQ)
        except OSError:
            return 0
        room = min(self.write_ring, fit(self._w - self._u_est))
        return max(0, room - len(self._overflow))

    def _ready_to_write(self) -> bool:
        """Lock held: EBADF if closed, EPIPE if the peer is gone (checked first, as Xen's
        send does); a WAITING server takes its client if one is there. False only while a
        client's own connection is still being made."""
        self._check_open()
        if self._state == DISCONNECTED:
            raise _oserror(errno.EPIPE, "vchan peer disconnected")
        if self._state == WAITING and not self._pending():
            self._try_accept()
        return not self._pending()

    def write(self, data: InBuf, size: int) -> int:
        if size == 0:
            self._check_open()
            return 0
        asked = size
        if size > self.write_ring and not self._blocking:
            size = self.write_ring  # §4: non-blocking, what fits, at most the write ring
        if len(data) != size:
            data = memoryview(data)[:size]
        if self._fast_send(data, size):
            if size < asked:  # capped at the ring: short, a request (§5)
                with self._lock:
                    self._arm()
            return size
        data = memoryview(data)  # slices below must not copy
        if (
            self._blocking
            and self._state == CONNECTED
            and not self._overflow
            and not self._promised
        ):
            # Blocking, nothing queued, no promise to keep: one send of it whole if it fits
            # below W by a fresh SIOCOUTQ, else the waiting regime, which sends it whole too
            # (no bounded partial send first), as the C library does.
            with self._lock:
                sock = self._sock
                if sock is not None:
                    try:
                        self._u_est = _linux.ioctl_int(sock, _linux.SIOCOUTQ)
                    except OSError:
                        pass
            if self._fast_send(data, size):
                return size
            self._write_waiting(data)
            return size
        while True:
            with self._lock:
                if self._ready_to_write():
                    taken = self._take(data, self._promised)
                    self._promised = max(0, self._promised - taken)
                    if taken < asked and not self._blocking:
                        # A short write requests a consumption event, then retries its
                        # bounded push once: a consumption since the first try shows here.
                        # (A blocking one asks when it has to wait: _write_waiting.)
                        self._arm()
                        if taken < size and self._state != DISCONNECTED:
                            more = self._take(data[taken:], self._promised)
                            self._promised = max(0, self._promised - more)
                            taken += more
                    break
            if not self._blocking:
                with self._lock:
                    self._arm()  # a client still connecting: _attach applies it
                return 0
            self._wait_connected()
        if taken == size or not self._blocking:
            return taken
        self._write_waiting(memoryview(data)[taken:])
        return size

    def send(self, data: InBuf, size: int) -> int:
        if size == 0:
            self._check_open()
            return 0
        if len(data) != size:
            data = memoryview(data)[:size]
        if size <= self.write_ring and self._fast_send(data, size):
            return size
        data = memoryview(data)  # slices below must not copy
        while True:
            with self._lock:
                if self._ready_to_write():
                    break
            if not self._blocking:
                return 0
            self._wait_connected()
        with self._lock:
            for retry in (False, True):
                if (
                    self._state == CONNECTED
                    and not self._overflow
                    and size <= self.write_ring
                    and self._u_est + tsz(size) <= self._w
                ):
                    space = size  # certain without asking the kernel
                elif self._state == WAITING:
                    space = self.write_ring - len(self._overflow)
                else:
                    space = max(self._measure_space(), self._promised)
                if size <= space:
                    taken = self._take(data, space)
                    self._promised = max(0, self._promised - taken)
                    assert taken == size
                    return size
                # Short of space: request a consumption event; a non-blocking send then
                # measures once more (a consumption since the first measure shows here).
                self._arm()
                if retry or self._blocking or size > self.write_ring:
                    break
        if not self._blocking:
            return 0
        if size > self.write_ring:
            raise _oserror(errno.EMSGSIZE, f"send of {size} bytes exceeds the write ring")
        self._write_waiting(data)
        return size

    def _fast_send(self, data: InBuf, size: int) -> bool:
        """The common case in one step: connected, nothing queued, and room below W.

        No lock (it would cost a plain socket's send again): the GIL makes each load and
        store atomic, the call registers in ``_calls`` like any other, and what a concurrent
        writer can do is bounded: it can make ``_u_est`` low by one write (an estimate, which
        is re-measured whenever it says a write might not fit) or have its bytes queued in
        the overflow after ours (concurrent calls have no order)."""
        if self._state != CONNECTED or self._overflow:
            return False
        u = self._u_est + size + TSZ_BASE + TSZ_STEP * (size >> TSZ_SHIFT)  # tsz(), inlined
        if u > self._w:
            return False
        calls = self._calls
        calls.append(None)
        try:
            if self._closed:
                return False  # the slow path reports it
            sock = self._sock
            assert sock is not None
            k = sock.send(data, _SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            k = 0
        except (BrokenPipeError, ConnectionResetError):
            raise self._gone() from None
        finally:
            calls.pop()
            if self._closed or self._retired:
                self._leave_cleanup()
        self._u_est = u
        if k < size:
            # Unexpected (the bound says it fits), but the bytes were as good as promised:
            # queue them behind for the pusher.
            with self._lock:
                self._overflow += data[k:]
                self._start_pusher()
        if self._promised:
            self._promised = max(0, self._promised - size)
        return True

    def _take(self, data: memoryview, allowance: int) -> int:
        """Accept what can be accepted without waiting (lock held)."""
        if self._state == WAITING:
            taken = min(len(data), self.write_ring - len(self._overflow))
            self._overflow += data[:taken]
            if taken:
                self._start_pusher()
            return taken
        if self._overflow:
            self._flush_overflow(bounded=True)
        taken = 0
        if not self._overflow:
            taken = self._push(data)
        extra = min(len(data) - taken, allowance - taken, self.write_ring - len(self._overflow))
        if extra > 0:
            self._overflow += data[taken : taken + extra]
            taken += extra
            self._start_pusher()
        return taken

    def _push(self, data: memoryview) -> int:
        """Send without letting U exceed W (lock held)."""
        n = len(data)
        if self._u_est + tsz(n) > self._w:
            sock = self._sock
            assert sock is not None
            self._u_est = _linux.ioctl_int(sock, _linux.SIOCOUTQ)
            n = min(n, fit(self._w - self._u_est))
            if n <= 0:
                return 0
        return self._send(data[:n])

    def _send(self, data: memoryview) -> int:
        sock = self._sock
        assert sock is not None
        try:
            k = sock.send(data, _SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            return 0
        except (BrokenPipeError, ConnectionResetError):
            raise self._gone() from None
        self._u_est += tsz(k)
        return k

    def _flush_overflow(self, bounded: bool) -> None:
        overflow = self._overflow
        while overflow:
            view = memoryview(overflow)
            try:
                k = self._push(view) if bounded else self._send(view[:_FREE_CHUNK])
            finally:
                view.release()
            if k == 0:
                return
            del overflow[:k]

    def _write_waiting(self, rest: memoryview) -> None:
        """The blocking remainder of a write: wait for the kernel like a plain socket."""
        pos = 0
        revents = 0
        self._enter()
        try:
            while pos < len(rest):
                if self._state == WAITING:
                    with self._lock:
                        self._arm()  # a write that has to wait asks for the consumption event
                    self._await_client()
                    continue
                sock = self._sock
                assert sock is not None
                with self._lock:
                    # Send first, wait after: the kernel takes bytes up to SO_SNDBUF.
                    self._check_open()
                    if revents & _POLL_GONE or self._state == DISCONNECTED:
                        raise self._gone()
                    self._flush_overflow(bounded=False)
                    if not self._overflow:
                        pos += self._send(rest[pos:])
                    self._u_est = _UNKNOWN_U
                    if pos == len(rest):
                        break
                    self._arm()  # a write that has to wait asks for the consumption event
                revents = self._poll(sock.fileno(), select.POLLOUT | _linux.POLLRDHUP)
            # Restore the writable invariant before handing control back (waiting for it is
            # waiting for the peer: a request, as in the loop).
            sock = self._sock
            assert sock is not None
            events = select.POLLOUT | _linux.POLLRDHUP
            if not self._poll(sock.fileno(), events, 0):
                with self._lock:
                    self._arm()
                self._poll(sock.fileno(), events)
            with self._lock:
                if self._u_est == _UNKNOWN_U:
                    self._u_est = self._w
        finally:
            self._leave()
