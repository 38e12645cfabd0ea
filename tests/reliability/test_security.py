"""Local security: what is at the socket path, who may connect, the socket file's mode.

* A symlink at the socket path is neither followed nor removed; a regular file (or a FIFO,
  or a directory) is left untouched and init fails with EEXIST.
* A peer of another uid is refused by default (server: the connection is closed and the
  server keeps WAITING and advertising; client: EACCES) and accepted when
  ``VCHAN_ALLOW_ANY_UID=1`` is set. Tested with a peer process running as ``nobody``.
* The socket file's mode is ``0777 & ~umask``, as ``bind()`` makes it (the reference's
  behaviour): the process umask, and the directory's permissions, decide who may
  *connect*; SO_PEERCRED decides who is *accepted*.
"""

from __future__ import annotations

import errno
import os
import pwd
import select
import signal
import socket
import stat
import time

import pytest

from tests.conftest import (
    TIMEOUT,
    VCHAN_CONNECTED,
    VCHAN_WAITING,
    bounded,
    bounded_err,
    fd_readable,
    run_bg,
    scaled,
    sock_path,
    wait_until,
)

# ------------------------------------------------------------------ things at the path


def _snapshot(path: str) -> tuple:
    st = os.lstat(path)
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return st.st_ino, st.st_mode, st.st_mtime_ns, st.st_size, link


@pytest.mark.parametrize("target", ["dangling", "file", "dir", "live-socket", "stale-socket"])
def test_symlink_at_path_not_followed_not_removed(api, sockdir, tmp_path, target):
    path = str(sock_path(sockdir, 0, 0, 1))
    dest = tmp_path / "target"
    keep = None
    if target == "file":
        dest.write_bytes(b"precious")
    elif target == "dir":
        dest.mkdir()
    elif target in ("live-socket", "stale-socket"):
        keep = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        keep.bind(str(dest))
        if target == "live-socket":
            keep.listen(1)
        else:
            keep.close()
    os.symlink(dest, path)
    before = _snapshot(path)
    dest_before = _snapshot(str(dest)) if target != "dangling" else None
    for role in ("server", "server-again"):
        assert api.libvchan_server_init(0, 1, 0, 0) is None, f"{role}: init over a symlink"
        assert api.last_errno() == errno.EEXIST, os.strerror(api.last_errno())
    assert _snapshot(path) == before, "the symlink was touched"
    if target == "dangling":
        assert not dest.exists(), "bind() followed the dangling symlink"
    else:
        assert _snapshot(str(dest)) == dest_before, "the symlink's target was touched"
    if target == "file":
        assert dest.read_bytes() == b"precious"
    if keep is not None:
        keep.close()


@pytest.mark.parametrize("kind", ["file", "empty-mode-0", "fifo", "dir"])
def test_non_socket_at_path_untouched_init_fails(api, sockdir, kind):
    path = str(sock_path(sockdir, 0, 0, 1))
    if kind == "file":
        with open(path, "wb") as f:
            f.write(b"not a socket")
    elif kind == "empty-mode-0":
        open(path, "wb").close()
        os.chmod(path, 0)
    elif kind == "fifo":
        os.mkfifo(path)  # opening it would block: the library must not
    else:
        os.mkdir(path)
    before = _snapshot(path)
    h, err = bounded_err(api, api.libvchan_server_init, 0, 1, 0, 0, timeout=scaled(5))
    assert h is None
    assert err == errno.EEXIST, os.strerror(err)
    assert _snapshot(path) == before
    if kind == "file":
        with open(path, "rb") as f:
            assert f.read() == b"not a socket"


@pytest.mark.parametrize("replacement", ["symlink", "file"])
@pytest.mark.parametrize("when", ["accept", "close"])
def test_path_replaced_after_init_not_removed(api, sockdir, tmp_path, replacement, when):
    """Someone swaps our socket file for something else: we never unlink their file."""
    path = str(sock_path(sockdir, 0, 0, 1))
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert srv is not None
    keep = sockdir + "/ours.sock"
    os.rename(path, keep)  # the live socket stays reachable under another name
    if replacement == "symlink":
        os.symlink(tmp_path / "elsewhere", path)
    else:
        with open(path, "wb") as f:
            f.write(b"theirs")
    before = _snapshot(path)
    if when == "accept":
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(keep)
        wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
        c.close()
    api.libvchan_close(srv)
    assert _snapshot(path) == before


# ----------------------------------------------------------------- peers of another uid


def _nobody() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a peer as another uid (nobody)")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this system")


def _as_nobody(fn, nobody: pwd.struct_passwd) -> tuple[int, int]:
    """Fork; the child drops to nobody and runs fn(ready_fd) -> exit code. (pid, read fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            code = fn(w)
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _signalled(fd: int, timeout: float = TIMEOUT) -> bool:
    r, _, _ = select.select([fd], [], [], timeout)
    return bool(r) and os.read(fd, 1) == b"!"


def _reap(pid: int, timeout: float = TIMEOUT) -> int:
    end = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the nobody peer hung")
        time.sleep(0.005)


def _open_to_all(sockdir: str):
    """Server init with umask 0 in a 0777 directory: any uid can reach the socket."""
    os.chmod(sockdir, 0o777)
    old = os.umask(0)
    return old


def _intruder(path: str, hello: bytes, expect: bytes | None):
    """A client as nobody: 0 refused (EOF), 10 accepted and got ``expect``, else other."""

    def run(w: int) -> int:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        try:
            s.connect(path)
        except PermissionError:
            return 3
        os.write(w, b"!")
        try:
            s.sendall(hello)
            got = s.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            return 0
        except TimeoutError:
            return 1  # left connected and hung
        if not got:
            return 0
        return 10 if got == expect else 2

    return run


def test_other_uid_client_refused_by_default_server_keeps_waiting(api, sockdir):
    nobody = _nobody()
    path = str(sock_path(sockdir, 0, 0, 1))
    old = _open_to_all(sockdir)
    try:
        srv = api.libvchan_server_init(0, 1, 0, 0)
    finally:
        os.umask(old)
    assert srv is not None
    waiter = run_bg(api.libvchan_wait, srv)  # drives the accept of whoever comes
    pid, ready = _as_nobody(_intruder(path, b"intruder", None), nobody)
    try:
        assert _signalled(ready), "the nobody client could not connect at all"
        code = _reap(pid)
    finally:
        os.close(ready)
    assert code == 0, f"nobody's connection was not refused (child code {code})"
    assert api.libvchan_is_open(srv) == VCHAN_WAITING
    assert os.path.exists(path), "the server stopped advertising after refusing"
    waiter.assert_blocked(0.1)  # a refused client is not "a client connected"
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    assert waiter.result() == 0
    assert api.libvchan_is_open(srv) == VCHAN_CONNECTED
    assert api.libvchan_data_ready(srv) == 0, "the intruder's bytes leaked into the channel"
    assert api.libvchan_send(cli, b"ok", 2) == 2
    buf = bytearray(10)
    assert bounded(api.libvchan_read, srv, buf, 10) == 2 and buf[:2] == b"ok"


def test_other_uid_client_accepted_with_allow_any_uid(api, sockdir, monkeypatch):
    nobody = _nobody()
    monkeypatch.setenv("VCHAN_ALLOW_ANY_UID", "1")
    path = str(sock_path(sockdir, 0, 0, 1))
    old = _open_to_all(sockdir)
    try:
        srv = api.libvchan_server_init(0, 1, 0, 0)
    finally:
        os.umask(old)
    pid, ready = _as_nobody(_intruder(path, b"guest", b"welcome"), nobody)
    try:
        assert _signalled(ready)
        wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)
        buf = bytearray(5)
        assert bounded(api.libvchan_recv, srv, buf, 5) == 5 and buf == b"guest"
        assert api.libvchan_send(srv, b"welcome", 7) == 7
        code = _reap(pid)
    finally:
        os.close(ready)
    assert code == 10, f"child code {code}"


def _impostor(path: str):
    """A server as nobody at our client's path: 0 once a client came and went."""

    def run(w: int) -> int:
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(path)
        ls.listen(1)
        ls.settimeout(TIMEOUT)
        os.write(w, b"!")
        try:
            c, _ = ls.accept()
        except TimeoutError:
            return 1
        c.settimeout(TIMEOUT)
        try:
            c.sendall(b"fake")
            while c.recv(100):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            return 2
        return 0

    return run


@pytest.mark.parametrize("how", ["sync", "async"])
def test_other_uid_server_refused_by_default_eacces(api, sockdir, how):
    nobody = _nobody()
    os.chmod(sockdir, 0o777)
    path = str(sock_path(sockdir, 0, 0, 1))
    pid, ready = _as_nobody(_impostor(path), nobody)
    try:
        assert _signalled(ready)
        assert os.stat(path).st_uid == nobody.pw_uid
        if how == "sync":
            h, err = bounded_err(api, api.libvchan_client_init, 0, 1)
            assert h is None, "trusted an impostor"
            assert err == errno.EACCES, os.strerror(err)
        else:
            ret = api.libvchan_client_init_async(0, 1)
            if ret is not None:  # may fail at once, or in finish

                def finish():
                    return api.libvchan_client_init_async_finish(ret[0], True), api.last_errno()

                assert bounded(finish) == (-1, errno.EACCES)
            else:
                assert api.last_errno() == errno.EACCES
        assert _reap(pid) == 0
    finally:
        os.close(ready)
    assert not os.path.exists(path) or os.stat(path).st_uid == nobody.pw_uid


def test_other_uid_server_accepted_with_allow_any_uid(api, sockdir, monkeypatch):
    nobody = _nobody()
    monkeypatch.setenv("VCHAN_ALLOW_ANY_UID", "1")
    os.chmod(sockdir, 0o777)
    path = str(sock_path(sockdir, 0, 0, 1))
    pid, ready = _as_nobody(_impostor(path), nobody)
    try:
        assert _signalled(ready)
        cli = bounded(api.libvchan_client_init, 0, 1)
        assert cli is not None, os.strerror(api.last_errno())
        buf = bytearray(4)
        assert bounded(api.libvchan_recv, cli, buf, 4) == 4 and buf == b"fake"
        api.libvchan_close(cli)
        assert _reap(pid) == 0
    finally:
        os.close(ready)


# --------------------------------------------------------------------- socket file mode


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o007, 0o002, 0o000])
def test_socket_file_mode_is_0777_masked_by_umask(api, sockdir, umask):
    old = os.umask(umask)
    try:
        srv = api.libvchan_server_init(0, 1, 0, 0)
    finally:
        os.umask(old)
    assert srv is not None
    st = os.lstat(sock_path(sockdir, 0, 0, 1))
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o777 & ~umask, oct(st.st_mode)
    assert st.st_uid == os.geteuid()


def test_default_umask_keeps_other_uids_from_connecting(api, sockdir):
    """With umask 022 the socket is 0755: another uid cannot even connect (EACCES)."""
    nobody = _nobody()
    os.chmod(sockdir, 0o777)
    path = str(sock_path(sockdir, 0, 0, 1))
    old = os.umask(0o022)
    try:
        srv = api.libvchan_server_init(0, 1, 0, 0)
    finally:
        os.umask(old)
    pid, ready = _as_nobody(_intruder(path, b"x", None), nobody)
    os.close(ready)
    assert _reap(pid) == 3, "nobody could connect to a 0755 socket"
    assert api.libvchan_is_open(srv) == VCHAN_WAITING


@pytest.mark.spec("NOTIFY-WAIT-AFTER-POLL")
@pytest.mark.parametrize("call", ["none", "is_open", "data_ready", "buffer_space", "send"])
def test_must_wait_returns_at_once_after_refused_peer_polled_readable(api, sockdir, call):
    """SPEC §5: a WAITING server's fd polled readable because an untrusted peer connected;
    whichever call refuses it (``call`` in between, or wait() itself), the wait() after the
    poll must not block, and the server is still WAITING."""
    nobody = _nobody()
    path = str(sock_path(sockdir, 0, 0, 1))
    old = _open_to_all(sockdir)
    try:
        srv = api.libvchan_server_init(0, 1, 0, 0)
    finally:
        os.umask(old)
    assert srv is not None
    fd = api.libvchan_fd_for_select(srv)
    assert not fd_readable(fd)
    pid, ready = _as_nobody(_intruder(path, b"intruder", None), nobody)
    try:
        assert _signalled(ready), "the nobody client could not connect at all"
        assert fd_readable(fd, TIMEOUT), "a pending connection did not make the fd readable"
        if call == "is_open":
            assert api.libvchan_is_open(srv) == VCHAN_WAITING
        elif call == "data_ready":
            assert api.libvchan_data_ready(srv) == 0
        elif call == "buffer_space":
            assert api.libvchan_buffer_space(srv) >= 0
        elif call == "send":
            assert api.libvchan_send(srv, b"hs", 2) == 2
        waiter = run_bg(api.libvchan_wait, srv)
        waiter.thread.join(scaled(1.0))
    finally:
        try:
            code = _reap(pid)
        finally:
            os.close(ready)
    assert waiter.done(), f"wait() blocked after the fd polled readable (call: {call})"
    assert waiter.result() == 0
    assert code == 0, f"nobody's connection was not refused (child code {code})"
    assert api.libvchan_is_open(srv) == VCHAN_WAITING
    # still a working server: the real client wakes it
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    assert fd_readable(fd, TIMEOUT)
    assert bounded(api.libvchan_wait, srv) == 0
    assert api.libvchan_is_open(srv) == VCHAN_CONNECTED
