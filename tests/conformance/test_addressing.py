"""SPEC §1 (addressing): naming, bad input, files at the path."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from tests.conftest import (
    VCHAN_CONNECTED,
    VCHAN_WAITING,
    bounded,
    bounded_err,
    connected_pair,
    sock_path,
    wait_until,
)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def test_must_server_path_is_dir_server_dom_client_dom_port(api, sockdir, monkeypatch):
    monkeypatch.setenv("VCHAN_DOMAIN", "3")
    srv = api.libvchan_server_init(5, 7, 0, 0)
    assert srv is not None, api.last_errno()
    assert _is_socket(sock_path(sockdir, 3, 5, 7))
    assert sorted(os.listdir(sockdir)) == ["vchan.3.5.7.sock"]


def test_must_vchan_domain_defaults_to_0(api, sockdir):
    srv = api.libvchan_server_init(4, 12345, 0, 0)
    assert srv is not None, api.last_errno()
    assert sorted(os.listdir(sockdir)) == ["vchan.0.4.12345.sock"]


def test_must_client_path_is_dir_server_dom_client_dom_port(api, sockdir, monkeypatch):
    """A client of domain 5 connecting to domain 3, port 7 uses vchan.3.5.7.sock."""
    monkeypatch.setenv("VCHAN_DOMAIN", "5")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(str(sock_path(sockdir, 3, 5, 7)))
    lst.listen(1)
    try:
        cli = bounded(api.libvchan_client_init, 3, 7)
        assert cli is not None, api.last_errno()
        conn, _ = lst.accept()
        conn.close()
    finally:
        lst.close()


def test_must_server_and_client_meet_across_domains(api, sockdir, monkeypatch):
    """Server in domain 2 serving domain 9; client in domain 9 connecting to domain 2."""
    monkeypatch.setenv("VCHAN_DOMAIN", "2")
    srv = api.libvchan_server_init(9, 3, 0, 0)
    assert srv is not None
    assert _is_socket(sock_path(sockdir, 2, 9, 3))
    monkeypatch.setenv("VCHAN_DOMAIN", "9")
    cli = bounded(api.libvchan_client_init, 2, 3)
    assert cli is not None, api.last_errno()
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)


def test_must_socket_dir_is_taken_from_vchan_socket_dir(api, sockdir, monkeypatch):
    other = Path(sockdir) / "sub"
    other.mkdir()
    monkeypatch.setenv("VCHAN_SOCKET_DIR", str(other))
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert srv is not None
    assert os.listdir(other) == ["vchan.0.0.1.sock"]
    assert sorted(os.listdir(sockdir)) == ["sub"]


def test_must_highest_domain_32751_and_large_port_accepted(api, sockdir, monkeypatch):
    monkeypatch.setenv("VCHAN_DOMAIN", "32751")
    srv = api.libvchan_server_init(32751, 2**31 - 1, 0, 0)
    assert srv is not None, api.last_errno()
    assert api.libvchan_is_open(srv) == VCHAN_WAITING
    assert _is_socket(sock_path(sockdir, 32751, 32751, 2**31 - 1))


BAD_DOMAINS = ["abc", "-1", "32752", " 1", "1 ", "", "1.0", "0x1", "99999999999999999999"]


@pytest.mark.spec("ADDR-REFUSE-BAD")
@pytest.mark.parametrize("value", BAD_DOMAINS, ids=repr)
def test_must_refuse_bad_vchan_domain_server(api, sockdir, monkeypatch, value):
    monkeypatch.setenv("VCHAN_DOMAIN", value)
    assert api.libvchan_server_init(0, 1, 0, 0) is None
    assert api.last_errno() == errno.EINVAL
    assert os.listdir(sockdir) == [], "never fall back silently to a domain"


@pytest.mark.spec("ADDR-REFUSE-BAD")
@pytest.mark.parametrize("value", BAD_DOMAINS, ids=repr)
def test_must_refuse_bad_vchan_domain_client(api, sockdir, monkeypatch, value):
    # a server listening on the domain-0 fallback path: a client that falls back connects
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert srv is not None
    monkeypatch.setenv("VCHAN_DOMAIN", value)
    assert bounded_err(api, api.libvchan_client_init, 0, 1) == (None, errno.EINVAL)
    assert bounded_err(api, api.libvchan_client_init_async, 0, 1) == (None, errno.EINVAL)
    assert api.libvchan_is_open(srv) == VCHAN_WAITING


@pytest.mark.spec("ADDR-REFUSE-BAD")
@pytest.mark.parametrize(("domain", "port"), [(-1, 1), (32752, 1), (2**31 - 1, 1), (0, -1)])
def test_must_refuse_domain_or_port_out_of_range(api, sockdir, domain, port):
    assert api.libvchan_server_init(domain, port, 0, 0) is None
    assert api.last_errno() == errno.EINVAL
    assert bounded_err(api, api.libvchan_client_init, domain, port) == (None, errno.EINVAL)
    assert bounded_err(api, api.libvchan_client_init_async, domain, port) == (None, errno.EINVAL)
    assert os.listdir(sockdir) == []


def _dir_for_path_len(sockdir: str, length: int) -> Path:
    """A directory under sockdir such that vchan.0.0.1.sock in it is ``length`` bytes."""
    name = "vchan.0.0.1.sock"
    base = len(sockdir) + 1  # "sockdir/"
    pad = length - base - len(name) - 1  # "pad/"
    assert 1 <= pad < 255
    d = Path(sockdir) / ("d" * pad)
    d.mkdir(exist_ok=True)
    assert len(str(d / name)) == length
    return d


@pytest.mark.spec("ADDR-REFUSE-BAD")
def test_must_accept_path_of_107_bytes_untruncated(api, sockdir, monkeypatch):
    d = _dir_for_path_len(sockdir, 107)
    monkeypatch.setenv("VCHAN_SOCKET_DIR", str(d))
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert srv is not None, api.last_errno()
    assert os.listdir(d) == ["vchan.0.0.1.sock"]
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None


@pytest.mark.spec("ADDR-REFUSE-BAD")
@pytest.mark.parametrize("length", [108, 150])
def test_must_refuse_path_too_long_enametoolong(api, sockdir, monkeypatch, length):
    d = _dir_for_path_len(sockdir, length)
    monkeypatch.setenv("VCHAN_SOCKET_DIR", str(d))
    assert api.libvchan_server_init(0, 1, 0, 0) is None
    assert api.last_errno() == errno.ENAMETOOLONG
    assert bounded_err(api, api.libvchan_client_init, 0, 1) == (None, errno.ENAMETOOLONG)
    assert bounded_err(api, api.libvchan_client_init_async, 0, 1) == (None, errno.ENAMETOOLONG)
    # never truncated: nothing was created anywhere
    assert os.listdir(d) == []
    assert sorted(os.listdir(sockdir)) == [d.name]


def test_must_server_fail_enoent_when_dir_missing(api, sockdir, monkeypatch):
    monkeypatch.setenv("VCHAN_SOCKET_DIR", os.path.join(sockdir, "missing"))
    assert api.libvchan_server_init(0, 1, 0, 0) is None
    assert api.last_errno() == errno.ENOENT


def test_must_client_fail_at_once_when_dir_missing(api, sockdir, monkeypatch):
    monkeypatch.setenv("VCHAN_SOCKET_DIR", os.path.join(sockdir, "missing"))
    assert bounded_err(api, api.libvchan_client_init, 0, 1, timeout=2) == (None, errno.ENOENT)
    ret, err = bounded_err(api, api.libvchan_client_init_async, 0, 1, timeout=2)
    if ret is not None:  # allowed: fail on the first finish instead
        finish = api.libvchan_client_init_async_finish
        ret, err = bounded_err(api, finish, ret[0], False, timeout=2)
        assert ret == -1
    assert err == errno.ENOENT


def test_must_not_remove_regular_file_at_path_eexist(api, sockdir):
    path = sock_path(sockdir, 0, 0, 1)
    path.write_bytes(b"precious")
    assert api.libvchan_server_init(0, 1, 0, 0) is None
    assert api.last_errno() == errno.EEXIST
    assert path.read_bytes() == b"precious"


@pytest.mark.parametrize("target", ["missing", "file", "socket"])
def test_must_not_follow_or_remove_symlink_at_path_eexist(api, sockdir, target):
    path = sock_path(sockdir, 0, 0, 1)
    tdir = Path(sockdir) / "t"
    tdir.mkdir()
    tgt = tdir / "target"
    lst = None
    if target == "file":
        tgt.write_bytes(b"precious")
    elif target == "socket":
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(str(tgt))
        lst.close()  # a stale socket behind the link: still never unlinked nor followed
    os.symlink(tgt, path)
    assert api.libvchan_server_init(0, 1, 0, 0) is None
    assert api.last_errno() == errno.EEXIST
    assert os.path.islink(path) and os.readlink(path) == str(tgt)
    if target == "file":
        assert tgt.read_bytes() == b"precious"
    elif target == "socket":
        assert _is_socket(tgt)
    else:
        assert not os.path.lexists(tgt)


def test_must_not_remove_directory_at_path_eexist(api, sockdir):
    path = sock_path(sockdir, 0, 0, 1)
    path.mkdir()
    assert api.libvchan_server_init(0, 1, 0, 0) is None
    assert api.last_errno() == errno.EEXIST
    assert path.is_dir()


def test_must_replace_stale_socket_file(api, sockdir):
    path = sock_path(sockdir, 0, 0, 1)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.listen(1)
    stale.close()  # leaves the file: nobody listens any more
    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert srv is not None, api.last_errno()
    assert _is_socket(path)  # (the inode number may be reused: connecting is the proof)
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    wait_until(lambda: api.libvchan_is_open(srv) == VCHAN_CONNECTED)


def test_errno_live_server_at_path_eaddrinuse_and_not_disturbed(api, sockdir):
    """DESIGN errno table: a second server on a live path fails; the first keeps its client."""
    first = api.libvchan_server_init(0, 1, 0, 0)
    assert first is not None
    assert api.libvchan_server_init(0, 1, 0, 0) is None
    assert api.last_errno() == errno.EADDRINUSE
    assert api.libvchan_is_open(first) == VCHAN_WAITING
    cli = bounded(api.libvchan_client_init, 0, 1)
    assert cli is not None
    wait_until(lambda: api.libvchan_is_open(first) == VCHAN_CONNECTED)


def test_must_connected_pair_works_in_domain_0(api, sockdir):
    srv, cli = connected_pair(api)
    assert api.libvchan_is_open(cli) == VCHAN_CONNECTED
