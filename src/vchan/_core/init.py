"""Channel set-up, like ``libvchan-socket/init.c``: the server's listen and accept, the
client's connect (with its inotify watch and back-off timer), and attaching the connection.

The channel itself is set up by ``_Channel.__init__`` (internal.py) and closed in handle.py.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import time
from typing import Self

from .. import _config, _linux
from .internal import (
    _EPOLL_IN,
    _EPOLL_INOUT,
    BACKOFF_FIRST_MS,
    BACKOFF_MAX_MS,
    BACKOFF_NOINOTIFY_MS,
    CONNECTED,
    DISCONNECTED,
    W_EXTRA,
    W_RINGS,
    _Channel,
)
from .util import _oserror


class Init(_Channel):
    """Set-up: the constructors, connect, accept (init.c)."""

    # ----------------------------------------------------------------------------- creation

    @classmethod
    def server(
        cls,
        domain: int,
        port: int,
        read_min: int,
        write_min: int,
        allow_any_uid: bool | None = None,
    ) -> Self:
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
        ch = cls(
            is_server=True,
            read_ring=read_ring,
            write_ring=write_ring,
            path=path,
            allow_any_uid=allow_any_uid,
        )
        ch._listener = listener
        ch._bound = (st.st_dev, st.st_ino)
        ch._ep.register(listener.fileno(), select.EPOLLIN)
        return ch

    @classmethod
    def client_start(
        cls, domain: int, port: int, allow_any_uid: bool | None = None, watch: bool = True
    ) -> Self:
        """Begin an asynchronous connection; :meth:`finish` completes it.

        ``watch``: the caller polls the watch fd before :meth:`finish` (qrexec does), so a
        connection made here at once makes it readable, as Xen's xenstore watch fires when
        it is registered: the connection is latched as an event for the next ``wait()``
        (SPEC §2). :meth:`client` (blocking) passes False."""
        _config.check_domain(domain)
        _config.check_port(port)
        path = _config.socket_path(domain, _config.local_domain(), port)
        directory = os.path.dirname(path) or "."
        if not stat.S_ISDIR(os.stat(directory).st_mode):  # missing: ENOENT at once
            raise _oserror(errno.ENOTDIR, f"not a directory: {directory}")
        ch = cls(
            is_server=False,
            read_ring=_config.CLIENT_RING,
            write_ring=_config.CLIENT_RING,
            path=path,
            allow_any_uid=allow_any_uid,
        )
        try:
            with ch._lock:
                if ch._connect_step():  # the common case: the server is there
                    if watch:
                        ch._latch_connection()
                    return ch
                # Not there yet: the back-off timer, and inotify on the directory. Then try
                # again: a server that appeared between the two attempts counts too.
                ch._backoff_ms = BACKOFF_FIRST_MS
                ch._timer = _linux.timerfd_create()
                ch._ep.register(ch._timer, select.EPOLLIN)
                try:
                    ch._inotify, ch._watch = _linux.inotify_watch_dir(directory)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                        raise
                    # No inotify (EMFILE: out of instances, ENOSPC: out of watches): the
                    # timer alone, with a shorter back-off (_connect_step).
                else:
                    ch._ep.register(ch._inotify, select.EPOLLIN)
                if ch._connect_step() and watch:
                    ch._latch_connection()
        except BaseException:
            ch.close()
            raise
        return ch

    @classmethod
    def client(
        cls, domain: int, port: int, timeout: float | None = None, allow_any_uid: bool | None = None
    ) -> Self:
        ch = cls.client_start(domain, port, allow_any_uid, watch=False)
        try:
            ch.finish(True, timeout)
        except BaseException:
            ch.close()
            raise
        return ch

    # ---------------------------------------------------------------------- client: connect

    def _connect_step(self) -> bool:
        """One non-blocking connection attempt (lock held). True once connected."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            if self._inotify >= 0:
                return False  # inotify tells us when it appears
            self._backoff_step()  # without inotify, poll on the timer
            return False
        except (ConnectionRefusedError, BlockingIOError, InterruptedError):
            # A stale file, a server between bind() and listen(), or a full backlog:
            # none of these produce an inotify event, so retry on a back-off timer.
            sock.close()
            self._backoff_step()
            return False
        except BaseException:
            sock.close()
            raise
        if not self._trusted(sock):
            sock.close()
            raise _oserror(errno.EACCES, "vchan server runs as an untrusted uid")
        if self._inotify >= 0:
            # The inotify instance only loses its watch: closed with the channel (closing
            # it now would wait for an SRCU grace period, see _linux.inotify_unwatch).
            self._ep.unregister(self._inotify)
            if self._watch >= 0:
                _linux.inotify_unwatch(self._inotify, self._watch)
            self._watch = -1
        if self._timer >= 0:
            self._ep.unregister(self._timer)
            os.close(self._timer)
            self._timer = -1
        self._attach(sock)
        return True

    def _backoff_step(self) -> None:
        """Arm the retry timer (if it exists yet) and double the back-off (lock held)."""
        if self._timer >= 0:
            _linux.timerfd_arm(self._timer, self._backoff_ms / 1000)
        self._backoff_ms = min(self._backoff_ms * 2, BACKOFF_MAX_MS)
        if self._inotify < 0:
            # without inotify the timer is all we have: keep it short
            self._backoff_ms = min(self._backoff_ms, BACKOFF_NOINOTIFY_MS)

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
                            self._backoff_ms = BACKOFF_FIRST_MS
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

    def _latch_connection(self) -> None:
        """Lock held: an async client connected at once: keep the fd readable until wait()."""
        self._conn_event = True
        self._latch_locked()

    def _drain_connect_events(self) -> bool:
        had_event = False
        for fd in (self._inotify, self._timer):
            if fd < 0:
                continue
            try:
                while os.read(fd, 4096):
                    had_event = had_event or fd == self._inotify
            except BlockingIOError:
                pass
        return had_event

    # ------------------------------------------------------------------------------- attach

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
        want = W_RINGS * self.write_ring + W_EXTRA
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 4 * want:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * want)
        except OSError:
            pass  # keep the default; fit(W) bounds what we promise
        self._w = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 4
        self._u_est = 0
        self._sock = sock
        self._state = CONNECTED
        # the wait() that reports a server's connection keeps the first bytes' event (§5)
        self._conn_event = self.is_server
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

    # ----------------------------------------------------------------------- server: accept

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
        if self._calls:
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
