"""Faults at start-up: a client whose system has no inotify to spare (out of instances,
EMFILE, or out of watches, ENOSPC) waits for its server on the back-off timer alone, with
the shorter back-off (DESIGN.md "Life cycle"), and still neither spins nor misses it.

The C library is made to fail by an LD_PRELOAD shim (no_inotify.c, compiled here); the
Python engine, which calls libc through ctypes (the shim does not reach it), by peer.py on
the same environment variables. Both note each failure in a log, so the test knows the
fallback was really taken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import scaled, wait_until
from tests.reliability import _stream
from tests.reliability._util import cpu_seconds
from vchan._core.internal import BACKOFF_NOINOTIFY_MS

HERE = Path(__file__).resolve().parent


def _notes(log: Path) -> list[str]:
    """The complete lines of the log (a line being written is left out)."""
    try:
        text = log.read_text()
    except FileNotFoundError:
        return []
    return text[: text.rfind("\n") + 1].split()


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) for the LD_PRELOAD shim")
    out = tmp_path_factory.mktemp("shim") / "no_inotify.so"
    subprocess.run(
        [
            cc,
            "-Wall",
            "-Wextra",
            "-Werror",
            "-shared",
            "-fPIC",
            "-O1",
            "-o",
            str(out),
            str(HERE / "no_inotify.c"),
            "-ldl",
        ],
        check=True,
        capture_output=True,
    )
    return out


@pytest.mark.serial  # a CPU share and a connection delay: measured on a quiet machine
@pytest.mark.parametrize("fail", ["init", "watch"])
def test_client_without_inotify_connects_on_its_timer(
    api, sockdir, spawn, shim, monkeypatch, tmp_path, fail
):
    log = tmp_path / "inotify-failures"
    monkeypatch.setenv("VCHAN_TEST_INOTIFY_FAIL", fail)
    monkeypatch.setenv("VCHAN_TEST_INOTIFY_LOG", str(log))
    # after any preload already there (the sanitizer run's libasan must stay first)
    monkeypatch.setenv(
        "LD_PRELOAD", " ".join(filter(None, [os.environ.get("LD_PRELOAD"), str(shim)]))
    )
    peer = spawn("client", "recv", seed=31)
    peer.expect("START")
    # its server is absent: it asked for inotify, was refused, and went on with its timer
    wait_until(lambda: fail in _notes(log))
    assert _notes(log).count(fail) == 1, _notes(log)
    # The short back-off: BACKOFF_NOINOTIFY_MS between attempts, not BACKOFF_MAX_MS (about
    # 10 attempts a second), and no busy wait: a wake-up per attempt, no more.
    window = 1.0
    cpu0, tries0 = cpu_seconds(peer.pid), _notes(log).count("connect")
    time.sleep(window)  # the span measured, not a wait for something
    used = cpu_seconds(peer.pid) - cpu0
    tries = _notes(log).count("connect") - tries0
    assert used < scaled(0.1) * window, f"a client waiting on its timer used {used:.2f} s of CPU"
    assert tries >= 0.4 * window * 1000 / BACKOFF_NOINOTIFY_MS, f"{tries} attempts in {window} s"
    assert tries <= 1.5 * window * 1000 / BACKOFF_NOINOTIFY_MS, f"{tries} attempts in {window} s"
    assert peer.lines == ["START"], f"client connected to nothing: {peer.lines}"

    srv = api.libvchan_server_init(0, 1, 0, 0)
    assert srv is not None
    t0 = time.monotonic()
    peer.expect("READY")
    took = time.monotonic() - t0
    # its next timer tick finds the server: the short back-off, plus the report
    assert took < scaled(0.05) + BACKOFF_NOINOTIFY_MS / 1000, f"connected after {took:.3f} s"
    data = _stream.chunk(31, 0, 10_000)
    assert api.libvchan_write(srv, data, len(data)) == len(data)
    api.libvchan_close(srv)
    assert peer.expect("EOF") == "EOF 10000"
