"""The libvchan engine in pure Python: one :class:`Channel` per vchan end.

Theory of operation (the long form is docs/DESIGN.md; the C library follows the same plan):

* A channel holds a non-blocking ``AF_UNIX`` stream socket and an epoll fd, the *select fd*.
  Only :meth:`Channel.wait` clears readiness. The socket is registered edge-triggered for
  ``EPOLLIN | EPOLLRDHUP``: after ``wait()`` nothing is reported until the kernel signals
  something new (no spinning), and the peer's reads (an ``EPOLLOUT``-keyed wake-up) never
  wake us unasked (SPEC §5: a select-driven message wakes its receiver once, its sender not).
* ``EPOLLOUT`` is added to the mask (``EPOLL_CTL_MOD``) only while a consumption request is
  *armed* or an event is *latched*. ``buffer_space()`` and a write that falls short call
  :meth:`Channel._arm` (Xen's ``VCHAN_NOTIFY_READ``, one-shot): the MOD queues the item at
  once (the socket is writable), ``epoll_wait(0)`` harvests that edge (latching if it also
  carried an event ``wait()`` has not seen), and only then does the caller measure or retry,
  so a consumption is either in what it returns or makes the fd readable. ``wait()`` ends the
  request when it harvests exactly ``EPOLLOUT``, and then takes ``EPOLLOUT`` out again.
* Latch: epoll drops a ready item whose events no longer hold, so a ``read()`` that drains
  the data which made the fd readable would make ``wait()`` block. ``consumed`` counts bytes
  taken from the kernel queue and ``wait()`` records ``seen = consumed + FIONREAD`` just
  before its harvest; a read that makes ``consumed > seen`` (and an accept or a refused
  untrusted peer outside ``wait()``) sets ``latched`` and MODs ``EPOLLOUT`` in, which keeps
  the item queued (the socket is writable: the *writable invariant* below) until ``wait()``,
  which does not block when latched. The common path: ``wait()`` is one ``FIONREAD`` and
  one ``epoll_wait(0)``; a read adds an integer add and compare; a write nothing.
* The kernel polls a Unix socket writable, and wakes us when the peer frees space, only while
  the send-buffer memory in use (``SIOCOUTQ``, U) is at most a quarter of ``SO_SNDBUF`` (W).
  Writes that need not wait therefore never push U above W (the writable invariant, which
  both a latched event and a requested consumption event rely on); a non-blocking
  ``write()`` takes at most the write ring; ``buffer_space()`` reports what
  fits below W (capped at the ring), and is a promise: bytes it promised that the kernel will
  not take right now go to a user-space *overflow* that a *pusher* thread delivers. The
  thread only exists while the overflow holds bytes (or a WAITING server holds early writes).
* Blocking calls wait with ``poll()`` on the socket itself, never on the select fd.
* A blocking ``recv(n)`` that has to wait drains the kernel queue into a *stash* (so poll
  sleeps rather than spins) and, should the peer go, leaves those bytes readable.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import stat
import struct
import threading
import time
import weakref
from typing import Final

from .. import _config, _linux

DISCONNECTED: Final = 0
CONNECTED: Final = 1
WAITING: Final = 2

_EPOLL_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_EPOLL_INOUT = _EPOLL_IN | select.EPOLLOUT
_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_EP_GONE = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_POLL_GONE = _linux.POLLRDHUP | select.POLLHUP | select.POLLERR
_SEND_FLAGS = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT
_DONTWAIT = socket.MSG_DONTWAIT
_WAITALL = socket.MSG_WAITALL
_FIONREAD = _linux.FIONREAD
_ioctl = fcntl.ioctl
_unpack_int = struct.Struct("i").unpack
_ZERO_INT = b"\0\0\0\0"
_BACKOFF_FIRST = 0.001
_BACKOFF_MAX = 0.1
_FREE_CHUNK = 65536
_UNKNOWN_U = 1 << 62


def tsz(n: int) -> int:
    """Upper bound of the send-buffer memory (skb truesize) one write of ``n`` bytes costs."""
    return n + 2560 + 1024 * (n >> 15)


def fit(room: int) -> int:
    """Largest payload ``n`` with ``tsz(n) <= room``."""
    room -= 2560
    return max(0, room - (room >> 5))


def _oserror(code: int, message: str | None = None) -> OSError:
    return OSError(code, message or os.strerror(code))


_live: weakref.WeakSet[Channel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for ch in list(_live):
        try:
            ch._forked()
        except Exception:  # noqa: BLE001 - every channel must still be marked inherited
            ch._inherited = True


os.register_at_fork(after_in_child=_after_fork_in_child)


class Channel:
    """One end of a vchan. Methods raise :class:`OSError` (with an errno) on failure."""

    is_server: bool
    read_ring: int
    write_ring: int

    def __init__(self, *, is_server: bool, read_ring: int, write_ring: int, path: str,
                 allow_any_uid: bool | None) -> None:
        self.is_server = is_server
        self.read_ring = read_ring
        self.write_ring = write_ring
        self.path = path
        self._allow_any = _config.allow_any_uid() if allow_any_uid is None else allow_any_uid
        self._state: int = WAITING
        self._closed = False
        self._inherited = False
        self._blocking = True
        self._lock = threading.Lock()
        self._ep = select.epoll()
        self._sock: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] | None = None
        self._inotify = -1
        self._watch = -1
        self._timer = -1
        self._backoff = _BACKOFF_FIRST
        self._w = 0
        self._u_est = 0
        self._promised = 0
        self._overflow = bytearray()
        self._stash = bytearray()
        self._pusher: threading.Thread | None = None
        self._handoff = False
        self._busy = 0
        self._retired: list[socket.socket] = []
        # Notification (SPEC §5, docs/DESIGN.md "Notification"): bytes taken from the kernel
        # queue; consumed + FIONREAD measured before wait()'s last harvest; a consumption
        # request is outstanding; a call other than wait() took an event wait() has not
        # seen; EPOLLOUT is in sock's epoll mask.
        self._consumed = 0
        self._seen = 0
        self._armed = False
        self._rearm = False
        self._latched = False
        self._mask_out = False
        _live.add(self)

    # ----------------------------------------------------------------------------- creation

    @classmethod
    def server(cls, domain: int, port: int, read_min: int, write_min: int,
               allow_any_uid: bool | None = None) -> Channel:
        _config.check_domain(domain)
        _config.check_port(port)
        read_ring, write_ring = _config.server_rings(read_min, write_min)
        path = _config.socket_path(_config.local_domain(), domain, port)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            with _linux.directory_lock(os.path.dirname(path) or "."):
                _claim_path(path)
                listener.bind(path)
                try:
                    st = os.lstat(path)
                    listener.listen(0)
                except BaseException:
                    os.unlink(path)
                    raise
        except BaseException:
            listener.close()
            raise
        ch = cls(is_server=True, read_ring=read_ring, write_ring=write_ring, path=path,
                 allow_any_uid=allow_any_uid)
        ch._listener = listener
        ch._bound = (st.st_dev, st.st_ino)
        ch._ep.register(listener.fileno(), select.EPOLLIN)
        return ch

    @classmethod
    def client_start(cls, domain: int, port: int, allow_any_uid: bool | None = None) -> Channel:
        """Begin an asynchronous connection; :meth:`finish` completes it."""
        _config.check_domain(domain)
        _config.check_port(port)
        path = _config.socket_path(domain, _config.local_domain(), port)
        directory = os.path.dirname(path) or "."
        ch = cls(is_server=False, read_ring=_config.CLIENT_RING,
                 write_ring=_config.CLIENT_RING, path=path, allow_any_uid=allow_any_uid)
        try:
            with ch._lock:
                if ch._connect_step():  # the common case: the server is there
                    return ch
                # Watch the directory (this fails at once if it is missing), then try again:
                # a server that appeared between the first attempt and the watch counts too.
                ch._inotify, ch._watch = _linux.inotify_watch_dir(directory)
                ch._timer = _linux.timerfd_create()
                ch._ep.register(ch._inotify, select.EPOLLIN)
                ch._ep.register(ch._timer, select.EPOLLIN)
                ch._connect_step()
        except BaseException:
            ch.close()
            raise
        return ch

    @classmethod
    def client(cls, domain: int, port: int, timeout: float | None = None,
               allow_any_uid: bool | None = None) -> Channel:
        ch = cls.client_start(domain, port, allow_any_uid)
        try:
            ch.finish(True, timeout)
        except BaseException:
            ch.close()
            raise
        return ch

    def _connect_step(self) -> bool:
        """One non-blocking connection attempt (lock held). True once connected."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            return False  # inotify tells us when it appears
        except (ConnectionRefusedError, BlockingIOError, InterruptedError):
            # A stale file, a server between bind() and listen(), or a full backlog:
            # none of these produce an inotify event, so retry on a back-off timer.
            sock.close()
            if self._timer >= 0:
                _linux.timerfd_arm(self._timer, self._backoff)
                self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
            return False
        except BaseException:
            sock.close()
            raise
        if not self._trusted(sock):
            sock.close()
            raise _oserror(errno.EACCES, "vchan server runs as an untrusted uid")
        if self._timer >= 0:
            self._ep.unregister(self._inotify)
            _linux.inotify_unwatch(self._inotify, self._watch)  # closed with the channel
            self._ep.unregister(self._timer)
            os.close(self._timer)
            self._timer = -1
        self._attach(sock)
        return True

    def finish(self, blocking: bool, timeout: float | None = None) -> int:
        """Drive an asynchronous client connection: 0 connected, 1 not yet (non-blocking)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._enter()
        try:
            while True:
                with self._lock:
                    self._check_open()
                    if self._sock is not None:
                        return 0
                    try:
                        if self._drain_connect_events():
                            self._backoff = _BACKOFF_FIRST
                        if self._connect_step():
                            return 0
                    except OSError:
                        self._state = DISCONNECTED
                        raise
                if not blocking:
                    return 1
                wait_for = -1.0
                if deadline is not None:
                    wait_for = deadline - time.monotonic()
                    if wait_for <= 0:
                        raise _oserror(errno.ETIMEDOUT, "timed out waiting for the vchan server")
                self._ep.poll(wait_for)
        finally:
            self._leave()

    def _drain_connect_events(self) -> bool:
        had_event = False
        for fd in (self._inotify, self._timer):
            try:
                while os.read(fd, 4096):
                    had_event = had_event or fd == self._inotify
            except BlockingIOError:
                pass
        return had_event

    def _trusted(self, sock: socket.socket) -> bool:
        if self._allow_any:
            return True
        uid = _linux.peer_uid(sock)
        return uid == 0 or uid == os.geteuid()

    def _attach(self, sock: socket.socket, in_wait: bool = False) -> None:
        """Make ``sock`` the channel's connection (lock held).

        A server that accepts outside :meth:`wait` latches the client-connected event: the
        registration with ``EPOLLOUT`` queues the item at once (the fresh socket is writable)
        and it stays queued until ``wait()``. Inside ``wait()`` its step 3 harvests it. A
        client has no connected event; if it asked for consumption before it was connected,
        the request is applied here (and the registration's own edge harvested, as arm()
        does)."""
        # Blocking at the socket level: a blocking read/recv is then one recv() that sleeps in
        # the kernel, like a plain socket; every other call passes MSG_DONTWAIT.
        sock.setblocking(True)
        want = 4 * self.write_ring + 65536
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 4 * want:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * want)
        except OSError:
            pass  # keep the default; fit(W) bounds what we promise
        self._w = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 4
        self._u_est = 0
        self._sock = sock
        self._state = CONNECTED
        fd = sock.fileno()
        if self.is_server and not in_wait:
            self._latched = True
            self._mask_out = True
            self._ep.register(fd, _EPOLL_INOUT)
        elif self._armed:
            self._mask_out = True
            self._ep.register(fd, _EPOLL_INOUT)
            if not in_wait:
                self._harvest(fd)
        else:
            self._mask_out = False
            self._ep.register(fd, _EPOLL_IN)

    def _try_accept(self, in_wait: bool = False) -> bool:
        """A WAITING server takes its client if one is there (lock held).

        Outside :meth:`wait`, both outcomes keep the event for ``wait()``: an accepted
        client is latched by :meth:`_attach`; a refused (or vanished) peer sets ``latched``,
        so a ``wait()`` after the fd polled readable returns at once, still WAITING."""
        listener = self._listener
        if listener is None:
            return self._sock is not None
        p = select.poll()
        p.register(listener.fileno(), select.POLLIN)
        if not p.poll(0):
            return False
        # Shut the listener before accepting, so no second client can enter the backlog
        # between this accept and the close: it gets ECONNREFUSED and waits for a new
        # server. (listen(fd, 0): the pending connection fills the backlog, so nobody slips
        # in between poll and shutdown either; accept still dequeues it.)
        try:
            listener.shutdown(socket.SHUT_RD)
            conn: socket.socket | None = listener.accept()[0]
        except OSError:
            conn = None  # it vanished
        if conn is not None and self._trusted(conn):
            self._stop_listening()
            self._attach(conn, in_wait)
            return True
        # Outside wait() this keeps the event; inside, it makes a wait() that did not
        # sleep return (the caller saw the fd readable), still WAITING.
        self._latched = True
        # Refused (another uid) or gone: advertise again before the refused peer sees EOF.
        self._relisten(listener)
        if conn is not None:
            conn.close()
        return False

    def _relisten(self, listener: socket.socket) -> None:
        """Listen again at our path under the same descriptor number (lock held)."""
        fd = listener.fileno()
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):
            pass
        try:
            with _linux.directory_lock(os.path.dirname(self.path) or "."):
                self._unlink_if_ours()
                _claim_path(self.path)
                fresh = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                try:
                    fresh.bind(self.path)
                    st = os.lstat(self.path)
                    fresh.listen(0)
                    os.dup2(fresh.fileno(), fd, inheritable=False)
                finally:
                    fresh.close()
            self._bound = (st.st_dev, st.st_ino)
            self._ep.register(fd, select.EPOLLIN)
        except OSError:
            # The path was taken meanwhile: this server can never be reached.
            self._stop_listening()
            self._state = DISCONNECTED

    def _stop_listening(self) -> None:
        """Stop advertising (lock held): the first client is the only one (SPEC §2)."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            self._ep.unregister(listener.fileno())
        except (OSError, ValueError):
            pass
        self._unlink_if_ours()
        # A thread inside a call may be about to poll this fd: shut it down so any such poll
        # returns at once, and close it only when nobody is inside a call (no fd reuse race).
        try:
            listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._busy:
            self._retired.append(listener)
        else:
            listener.close()

    def _unlink_if_ours(self) -> None:
        bound, self._bound = self._bound, None
        if bound is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == bound and stat.S_ISSOCK(st.st_mode):
                os.unlink(self.path)
        except OSError:
            pass

    # ------------------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise _oserror(errno.EBADF, "vchan is closed")

    def _enter(self) -> None:
        with self._lock:
            self._check_open()
            self._busy += 1

    def _leave(self) -> None:
        with self._lock:
            self._busy -= 1
            self._idle_cleanup()

    def _idle_cleanup(self) -> None:
        """Lock held: once no call is in progress, close what was retired (or everything)."""
        if self._busy:
            return
        while self._retired:
            self._retired.pop().close()
        if self._closed:
            self._release_fds()

    def _poll(self, fd: int, events: int, timeout: float | None = None) -> int:
        """Wait on one fd outside the lock; EBADF if the channel was closed meanwhile."""
        p = select.poll()
        p.register(fd, events)
        ready = p.poll(None if timeout is None else timeout * 1000)
        if self._closed:
            raise _oserror(errno.EBADF, "vchan closed while waiting")
        return ready[0][1] if ready else 0

    def _gone(self) -> OSError:
        self._state = DISCONNECTED
        self._overflow = bytearray()  # never resize: views may be alive
        return _oserror(errno.EPIPE, "vchan peer disconnected")

    def _pending(self) -> bool:
        """Whether a client-side connection is still being made (async init)."""
        return self._sock is None and not self.is_server

    def _settle(self) -> int:
        """Common prologue: the state after taking a waiting client if there is one."""
        if self._state == WAITING and self.is_server:
            with self._lock:
                self._check_open()
                self._try_accept()
        return self._state

    def _wait_connected(self) -> None:
        """Blocking data calls on a channel that is not connected yet wait until it is."""
        if self._pending():
            self.finish(True)
            return
        self._enter()
        try:
            while self._state == WAITING:
                self._await_client()
        finally:
            self._leave()

    # ------------------------------------------------------------------------------ reading

    def read(self, buf: memoryview, size: int) -> int:
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
            raise self._gone()  # a client whose connection attempt failed
        if self._blocking:
            lock = self._lock  # _enter() and _leave(), inlined
            with lock:
                if self._closed:
                    raise _oserror(errno.EBADF, "vchan is closed")
                self._busy += 1
            try:
                n = sock.recv_into(buf, size)
            except ConnectionResetError:
                n = 0
            except OSError:
                self._check_open()
                raise
            finally:
                with lock:
                    self._busy -= 1
                    if not self._busy and (self._retired or self._closed):
                        self._idle_cleanup()
            if n > 0:
                c = self._consumed + n
                self._consumed = c
                if c > self._seen and not self._latched:
                    self._latch()
                return n
            self._check_open()  # close() from another thread wakes us with EOF
            raise self._gone()
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
        raise self._gone()

    def recv(self, buf: memoryview, size: int) -> int:
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
            raise self._gone()  # a client whose connection attempt failed
        stash = self._stash
        if not stash and size <= self.read_ring:
            if self._blocking:
                # One recv() that sleeps in the kernel until all `size` bytes are there; it
                # returns fewer only if the peer left (or a signal or close() came).
                # _enter() and _leave(), inlined: this is every blocking recv's path.
                lock = self._lock
                with lock:
                    if self._closed:
                        raise _oserror(errno.EBADF, "vchan is closed")
                    self._busy += 1
                try:
                    n = sock.recv_into(buf, size, _WAITALL)
                except (BlockingIOError, InterruptedError):
                    n = -1
                except ConnectionResetError:
                    n = 0
                finally:
                    with lock:
                        self._busy -= 1
                        if not self._busy and (self._retired or self._closed):
                            self._idle_cleanup()
                if n == size:
                    c = self._consumed + n
                    self._consumed = c
                    if c > self._seen and not self._latched:
                        self._latch()
                    return n
                self._check_open()
            else:
                try:  # common case: everything is already queued
                    n = sock.recv_into(buf, size, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    n = -1
                except ConnectionResetError:
                    raise self._gone() from None
            if n == size:
                c = self._consumed + n
                self._consumed = c
                if c > self._seen and not self._latched:
                    self._latch()
                return n
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
        queued = len(self._stash)
        try:
            queued += _unpack_int(_ioctl(sock.fileno(), _FIONREAD, _ZERO_INT))[0]
        except OSError:
            self._check_open()
        return min(self.read_ring, queued)

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

    def write(self, data: memoryview, size: int) -> int:
        if size == 0:
            self._check_open()
            return 0
        asked = size
        if size > self.write_ring and not self._blocking:
            size = self.write_ring  # §4: non-blocking, what fits, at most the write ring
        data = data[:size]
        if self._fast_send(data, size):
            if size < asked:  # capped at the ring: short, a request (§5)
                with self._lock:
                    self._arm()
            return size
        while True:
            with self._lock:
                if self._ready_to_write():
                    taken = self._take(data, self._promised)
                    self._promised = max(0, self._promised - taken)
                    if taken < asked:
                        # A short write requests a consumption event, then retries its
                        # bounded push once: a consumption since the first try shows here.
                        self._arm()
                        if (not self._blocking and taken < size
                                and self._state != DISCONNECTED):
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
        self._write_waiting(data[taken:])
        return size

    def send(self, data: memoryview, size: int) -> int:
        if size == 0:
            self._check_open()
            return 0
        if len(data) != size:
            data = data[:size]
        if size <= self.write_ring and self._fast_send(data, size):
            return size
        while True:
            with self._lock:
                if self._ready_to_write():
                    break
            if not self._blocking:
                return 0
            self._wait_connected()
        with self._lock:
            for retry in (False, True):
                if (self._state == CONNECTED and not self._overflow and size <= self.write_ring
                        and self._u_est + tsz(size) <= self._w):
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

    def _fast_send(self, data: memoryview, size: int) -> bool:
        """The common case in one step: connected, nothing queued, and room below W."""
        with self._lock:
            if self._state != CONNECTED or self._overflow or self._closed:
                return False
            u = self._u_est + size + 2560 + 1024 * (size >> 15)  # tsz(size), inlined
            if u > self._w:
                return False
            sock = self._sock
            assert sock is not None
            try:
                k = sock.send(data, _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                k = 0
            except (BrokenPipeError, ConnectionResetError):
                raise self._gone() from None
            self._u_est = u
            if k < size:
                # Unexpected (the bound says it fits), but the bytes were as good as
                # promised: queue them behind for the pusher.
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
        extra = min(len(data) - taken, allowance - taken,
                    self.write_ring - len(self._overflow))
        if extra > 0:
            self._overflow += data[taken:taken + extra]
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
        self._enter()
        try:
            while pos < len(rest):
                if self._state == WAITING:
                    self._await_client()
                    continue
                sock = self._sock
                assert sock is not None
                revents = self._poll(sock.fileno(), select.POLLOUT | _linux.POLLRDHUP)
                with self._lock:
                    self._check_open()
                    if revents & _POLL_GONE or self._state == DISCONNECTED:
                        raise self._gone()
                    self._flush_overflow(bounded=False)
                    if not self._overflow:
                        pos += self._send(rest[pos:])
                    self._u_est = _UNKNOWN_U
            # Restore the writable invariant before handing control back.
            sock = self._sock
            assert sock is not None
            self._poll(sock.fileno(), select.POLLOUT | _linux.POLLRDHUP)
            with self._lock:
                if self._u_est == _UNKNOWN_U:
                    self._u_est = self._w
        finally:
            self._leave()

    def _await_client(self) -> None:
        """A WAITING server waits for its client (caller is inside _enter/_leave)."""
        with self._lock:
            listener = self._listener
            fd = -1 if listener is None else listener.fileno()
        if fd >= 0:
            self._poll(fd, select.POLLIN)
        with self._lock:
            self._check_open()
            self._try_accept()

    # ------------------------------------------------------------------------------- pusher

    def _start_pusher(self) -> None:
        if self._pusher is None:
            self._busy += 1
            self._pusher = threading.Thread(target=self._pusher_main, name="vchan-pusher",
                                            daemon=True)
            self._pusher.start()

    def _pusher_main(self) -> None:
        # Waiting for POLLOUT would spin: right after a bounded push the socket is writable
        # (U <= W) yet fit(W - U) is 0. A private edge-triggered epoll wakes only when the
        # peer really consumed something (or hung up).
        pep: select.epoll | None = None
        try:
            while True:
                with self._lock:
                    if (not self._overflow or self._state == DISCONNECTED
                            or (self._closed and not self._handoff) or self._inherited):
                        return
                    # Both stay open while we are busy (see _stop_listening).
                    listener, sock = self._listener, self._sock
                if sock is None:
                    if listener is None:
                        return
                    self._plain_poll(listener.fileno(), select.POLLIN)
                    with self._lock:
                        if not self._closed:
                            self._try_accept()
                    continue
                if pep is None:
                    pep = select.epoll()
                    # Reports at once if writable now, else at the next consumption.
                    pep.register(sock.fileno(), select.EPOLLOUT | select.EPOLLET)
                events = pep.poll()
                revents = events[0][1] if events else 0
                with self._lock:
                    if revents & (select.EPOLLHUP | select.EPOLLERR):
                        self._gone()
                        return
                    try:
                        self._flush_overflow(bounded=True)
                    except OSError:
                        return
        finally:
            if pep is not None:
                pep.close()
            with self._lock:
                self._pusher = None
                self._busy -= 1
                self._idle_cleanup()

    def _plain_poll(self, fd: int, events: int) -> int:
        p = select.poll()
        p.register(fd, events)
        ready = p.poll()
        return ready[0][1] if ready else 0

    # ------------------------------------------------------------------------ notification

    def _latch(self) -> None:
        """A read consumed bytes wait() has not seen (consumed > seen): keep the event."""
        with self._lock:
            if not self._latched and not self._closed:
                self._latch_locked()

    def _latch_locked(self) -> None:
        """Lock held: keep the fd readable until wait(). EPOLL_CTL_MOD re-polls the item and,
        EPOLLOUT holding (the writable invariant), queues it; re-done even if EPOLLOUT is
        already in the mask, since the item may just have been harvested."""
        self._latched = True
        sock = self._sock
        if sock is None:
            return  # a refused peer on a WAITING server: wait() just does not block
        try:
            self._ep.modify(sock.fileno(), _EPOLL_INOUT)
        except (OSError, ValueError):
            return
        self._mask_out = True

    def _arm(self) -> None:
        """Lock held: request one consumption event (Xen's VCHAN_NOTIFY_READ). The caller
        measures (or retries its push) after this, so a consumption between the MOD and the
        harvest shows in what it returns."""
        if self._armed:
            # The request may have fired (fd readable, no wait() yet): this newer one must
            # survive the wait() that clears the older. Not readable: one consumption
            # answers both.
            if self._ep_readable():
                self._rearm = True
            return
        self._armed = True
        sock = self._sock
        if sock is None or self._mask_out:
            return  # not connected yet (_attach applies it), or EPOLLOUT already in the mask
        fd = sock.fileno()
        try:
            self._ep.modify(fd, _EPOLL_INOUT)
        except (OSError, ValueError):
            return
        self._mask_out = True
        self._harvest(fd)

    def _ep_readable(self) -> bool:
        p = select.poll()
        p.register(self._ep.fileno(), select.POLLIN)
        return bool(p.poll(0))

    def _harvest(self, fd: int) -> None:
        """Lock held: take the immediate edge of a registration that just added EPOLLOUT;
        latch if it carried an event wait() has not seen (hang-up, or unseen data)."""
        for rfd, ev in self._ep.poll(0):
            if rfd != fd:
                continue
            if ev & _EP_GONE:
                self._latch_locked()
            elif ev & _EPOLLIN:
                try:
                    queued = _unpack_int(_ioctl(fd, _FIONREAD, _ZERO_INT))[0]
                except OSError:
                    queued = 1 << 62
                if self._consumed + queued > self._seen:
                    self._latch_locked()

    def _count(self, n: int) -> None:
        """``n`` bytes were taken from the kernel queue (outside the hot paths)."""
        c = self._consumed + n
        self._consumed = c
        if c > self._seen and not self._latched:
            self._latch()

    def fileno(self) -> int:
        self._check_open()
        return self._ep.fileno()

    def wait(self) -> int:
        lock = self._lock  # _enter() and _leave() inlined: this is every event loop's path
        with lock:
            if self._closed:
                raise _oserror(errno.EBADF, "vchan is closed")
            self._busy += 1
            tail = self._latched  # step 1: a latched event never blocks
            self._latched = False
            sock = self._sock
            armed = self._armed  # only a request made before the harvest can end in it
        fd = -1
        events: list[tuple[int, int]] = []
        try:
            if tail:
                pass
            elif sock is not None:
                # Step 2. Load consumed before the ioctl: a concurrent read can only make
                # seen smaller (a spurious event later), never larger (a missed one).
                fd = sock.fileno()
                try:
                    self._seen = self._consumed + _unpack_int(
                        _ioctl(fd, _FIONREAD, _ZERO_INT))[0]
                    events = self._ep.poll(0)
                    if not events:
                        events = self._ep.poll(-1)
                        tail = True
                except (OSError, ValueError):
                    pass  # closed under us: reported below
            else:
                tail = self._wait_unconnected()
        finally:
            with lock:
                self._busy -= 1
                closed = self._closed
                rearm, self._rearm = self._rearm, False
                if armed and self._armed and not rearm:
                    for rfd, ev in events:
                        # Exactly EPOLLOUT: the requested consumption. With EPOLLIN too it
                        # cannot tell: stay armed (at worst one spurious event later).
                        if rfd == fd and ev == _EPOLLOUT:
                            self._armed = False
                if self._mask_out and not self._armed:
                    tail = True
                if not self._busy and (self._retired or closed):
                    self._idle_cleanup()
        if closed:
            raise _oserror(errno.EBADF, "vchan is closed")
        if tail:
            self._wait_tail()  # step 3 (it re-checks closed under the lock)
        return 0

    def _wait_unconnected(self) -> bool:
        """wait() on a WAITING server or a connecting client; True if step 3 must run."""
        lock = self._lock
        blocked = False
        while True:
            try:
                if not self._ep.poll(0):
                    blocked = True
                    self._ep.poll(-1)
            except ValueError:
                pass  # the epoll object was closed under us
            with lock:
                if self._closed:
                    raise _oserror(errno.EBADF, "vchan is closed")
                if self._pending():
                    return False
                if self._state != WAITING:
                    # Another call took the client meanwhile (and latched it): that is the
                    # event this wait() reports, so it clears it.
                    self._latched = False
                    return True
                self._latched = False
                if self._try_accept(in_wait=True):
                    return True  # the fresh registration is drained by step 3
                if self._state != WAITING:
                    return False  # the path was lost: DISCONNECTED
                if self._latched:
                    # A refused peer. The fd was readable when wait() was called: the
                    # caller saw that event, return (SPEC §5). If wait() slept, sleep on:
                    # qrexec takes a return for "connected".
                    self._latched = False
                    if not blocked:
                        return False

    def _wait_tail(self) -> None:
        """Step 3 of wait(): drop EPOLLOUT unless a request or a latch needs it, re-measure
        seen and harvest what is queued, so the fd is not left readable by our own doing."""
        with self._lock:
            sock = self._sock
            if sock is None or self._closed:
                return
            fd = sock.fileno()
            ep = self._ep
            try:
                if self._mask_out and not self._armed and not self._latched:
                    ep.modify(fd, _EPOLL_IN)
                    self._mask_out = False
                self._seen = self._consumed + _unpack_int(_ioctl(fd, _FIONREAD, _ZERO_INT))[0]
                if not self._latched:  # a concurrent latch keeps its readiness
                    ep.poll(0)
            except (OSError, ValueError):
                pass

    def is_open(self) -> int:
        self._check_open()
        state = self._settle()
        if state == CONNECTED and self._peer_gone():
            self._state = DISCONNECTED
            with self._lock:
                self._overflow = bytearray()  # never resize: views may be alive
        return self._state

    def _peer_gone(self) -> bool:
        sock = self._sock
        if sock is None:
            return False
        p = select.poll()
        p.register(sock.fileno(), _POLL_GONE)
        return bool(p.poll(0))

    def set_blocking(self, blocking: bool) -> None:
        self._check_open()
        self._blocking = bool(blocking)

    @property
    def blocking(self) -> bool:
        return self._blocking

    @property
    def closed(self) -> bool:
        return self._closed

    # -------------------------------------------------------------------------------- close

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._inherited:
                self._overflow = bytearray()  # never resize: views may be alive
                self._busy = 0
                self._release_fds()
                return
            if self._state == WAITING and self.is_server and self._overflow:
                # A client already in the backlog is connected as far as it knows: take it,
                # so the early bytes reach it (below) rather than vanish with the listener.
                self._try_accept()
            # Wake any thread blocked on our sockets; they see _closed and return EBADF.
            for s in (self._sock, self._listener):
                if s is not None:
                    try:
                        s.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass
            if self._timer >= 0:
                _linux.timerfd_arm(self._timer, 1e-9)
            if self.is_server:
                self._unlink_if_ours()
            if self._overflow and self._state == CONNECTED and self._sock is not None:
                # Notification no longer matters, so the kernel may take the rest beyond W
                # (it has room up to 4 W): usually no thread has to outlive close().
                try:
                    self._flush_overflow(bounded=False)
                except OSError:
                    self._overflow = bytearray()  # never resize: views may be alive
            if self._overflow and self._state == CONNECTED and self._sock is not None:
                self._handoff = True  # the pusher delivers the rest, then closes the socket
                self._start_pusher()
            if self._busy == 0:
                self._release_fds()

    def _release_fds(self) -> None:
        """Close every descriptor (lock held, nobody inside a call)."""
        for s in (self._sock, self._listener, *self._retired):
            if s is not None:
                s.close()
        self._sock = self._listener = None
        self._retired.clear()
        for fd in (self._inotify, self._timer):
            if fd >= 0:
                os.close(fd)
        self._inotify = self._timer = -1
        self._ep.close()
        self._overflow = bytearray()  # never resize: views may be alive
        self._stash = bytearray()

    def _forked(self) -> None:
        """In a child after fork(): the parent owns the channel; never disturb it."""
        self._inherited = True
        self._lock = threading.Lock()
        self._pusher = None
        self._busy = 0
        self._overflow = bytearray()  # never resize: views may be alive

    @property
    def state(self) -> int:
        return self._state


def _claim_path(path: str) -> None:
    """Make ``path`` free for bind(): replace a stale socket, refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        kind = "symlink" if stat.S_ISLNK(st.st_mode) else "non-socket file"
        raise _oserror(errno.EEXIST, f"a {kind} is in the way at {path}; not touching it")
    if _linux.listening_at(path, or_binding=True):
        raise _oserror(errno.EADDRINUSE, f"a vchan server is already listening at {path}")
    os.unlink(path)

