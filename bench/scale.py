"""Scale checks (``python -m bench.scale``), each run in a fresh process.

* ``idle``: open N connected channel pairs in one process (server and client ends both
  here), exchange one verified byte each way on every pair, then count the descriptors
  (``/proc/self/fd``) and threads (``/proc/self/task``) they added. Target: at most 2 fds
  and no thread per channel. ``--impl py`` is the pure-Python engine, ``--impl c`` a libvchan
  .so (``--lib``) through cffi.
* ``busy``: N channel pairs in one asyncio loop, every pair streaming verified data for a
  fixed time; reports the aggregate rate and the slowest and fastest pair
  (needs :mod:`vchan.asyncio`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def idle(impl: str, lib: str | None, pairs: int) -> dict[str, Any]:
    _raise_nofile(6 * pairs + 256)
    fds0, tasks0, py0 = _fds(), _tasks(), threading.active_count()
    verified = True
    t = time.monotonic()
    keep: list[Any] = []
    if impl == "py":
        import vchan

        for i in range(pairs):
            s = vchan.server(0, 2000 + i)
            c = vchan.client(0, 2000 + i, timeout=10)
            keep.append((s, c))
        for s, c in keep:
            s.send(b"s")
            c.send(b"c")
        for s, c in keep:
            verified = verified and c.recv(1) == b"s" and s.recv(1) == b"c"
    else:
        from vchan import _cffi

        assert lib is not None
        L = _cffi.load(lib)
        buf = bytearray(1)
        for i in range(pairs):
            s = L.libvchan_server_init(0, 2000 + i, 4096, 4096)
            c = L.libvchan_client_init(0, 2000 + i) if s is not None else None
            if s is None or c is None:
                raise OSError(L.last_errno(), f"init failed at pair {i}")
            keep.append((s, c))
        for s, c in keep:
            ok = L.libvchan_send(s, b"s", 1) == 1 and L.libvchan_send(c, b"c", 1) == 1
            verified = verified and ok
        for s, c in keep:
            ok = L.libvchan_recv(c, buf, 1) == 1 and buf == b"s"
            ok = ok and L.libvchan_recv(s, buf, 1) == 1 and buf == b"c"
            verified = verified and ok
    elapsed = time.monotonic() - t
    time.sleep(0.2)  # let any helper thread that would exit do so
    fds1, tasks1, py1 = _fds(), _tasks(), threading.active_count()
    channels = 2 * pairs
    out = {
        "kind": "idle",
        "impl": impl,
        "pairs": pairs,
        "channels": channels,
        "fds_added": fds1 - fds0,
        "fds_per_channel": (fds1 - fds0) / channels,
        "threads_added": max(tasks1 - tasks0, py1 - py0),
        "verified": verified,
        "setup_s": elapsed,
        "ok": verified,
    }
    for s, c in keep:
        if impl == "py":
            s.close()
            c.close()
        else:
            L.libvchan_close(s)
            L.libvchan_close(c)
    return out


def busy(pairs: int, seconds: float) -> dict[str, Any]:
    from bench import pyasync

    _raise_nofile(6 * pairs + 256)
    return pyasync.busy(pairs, seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale")
    p.add_argument("check", choices=["idle", "busy"])
    p.add_argument("--impl", choices=["py", "c"], default="py")
    p.add_argument("--lib")
    p.add_argument("--pairs", type=int, default=500)
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vs", dir="/tmp") as d:
        os.environ["VCHAN_SOCKET_DIR"] = d
        os.environ["VCHAN_DOMAIN"] = "0"
        try:
            out = idle(a.impl, a.lib, a.pairs) if a.check == "idle" else busy(a.pairs, a.seconds)
        except Exception as exc:
            out = {"kind": a.check, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0 if out.get("ok") else 1


def _run(argv: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.scale", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    try:
        out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out = {"ok": False, "error": proc.stderr.strip()[-500:] or "no output"}
    return out


def run_all(impls: list[Any], smoke: bool, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Called by bench.run: every scale check, in child processes."""
    pairs = 50 if smoke else 500  # 500 pairs = 1,000 open channels
    out: dict[str, dict[str, Any]] = {}
    for impl in impls:
        if impl.kind not in ("py", "lib", "pyasync"):
            continue
        name = f"{impl.key}-idle" if impl.kind != "pyasync" else "pyasync-busy"
        if impl.skip:
            out[name] = {"skipped": impl.skip}
            continue
        if impl.kind == "pyasync":
            argv = [
                "busy",
                "--pairs",
                "10" if smoke else "100",
                "--seconds",
                "0.5" if smoke else "3",
            ]
        elif impl.kind == "py":
            argv = ["idle", "--impl", "py", "--pairs", str(pairs)]
        else:
            argv = ["idle", "--impl", "c", "--lib", str(impl.lib), "--pairs", str(pairs)]
        t = time.monotonic()
        out[name] = _run(argv, env, 120)
        print(
            f"  scale {name:24} {'ok' if out[name].get('ok') else 'FAILED'} "
            f"({time.monotonic() - t:.1f} s)",
            file=sys.stderr,
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
