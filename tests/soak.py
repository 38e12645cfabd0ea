"""Soak: random verified transfers for as long as asked; reports anything lost.

    python tests/soak.py --seconds 3600                 # both implementations (make soak)
    python tests/soak.py --seconds 600 --impl c --seed 7
    python tests/soak.py --seed 7 --only 123            # replay round 123 of seed 7

Each round picks, from its own seed, a scenario and its parameters:

* ``simplex``: server and client of one implementation in this process, random rings,
  sometimes early writes on the WAITING server; one end writes (random chunk sizes,
  blocking or non-blocking+wait(), write or send) and closes the moment its last write
  returns; the other reads (read or recv, blocking or not) to the end of the stream and
  must have everything.
* ``duplex``: the same, both directions at once, a reader and a writer thread per end.
* ``cross``: our end in this process, the peer (tests/reliability/peer.py) in another
  process running the same or the *other* implementation, so Python <-> C interop soaks
  too; either direction.
* ``kill``: as cross, with the sending peer SIGKILLed mid-transfer: what arrived must be
  in order and at least what the peer had handed to the kernel.

Every byte is checked (a position-dependent stream, tests/reliability/_stream.py). The
summary counts rounds, bytes and failures per scenario and implementation; the exit
status is 1 if anything was lost, corrupted, hung or failed, else 0.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]

from tests.reliability import _stream  # noqa: E402
from tests.reliability._util import Peer  # noqa: E402

CLIB = REPO / "libvchan-socket" / "build" / "libvchan-socket.so"
MINS = [0, 1024, 2048, 4096, 16384, 65536, 262144]
TOTALS = [0, 1, 4096, 65537, 1_000_000, 8_000_000]
CLIENT_RING = 65536
DEADLINE = 60.0  # one round must finish within this


class Failure(Exception):
    pass


_loaded: dict[str, Any] = {}


def load(name: str) -> Any:
    if name not in _loaded:
        if name in ("python", "speedups"):
            import vchan.libvchan as lv

            _loaded[name] = lv.for_engine(name)
        else:
            from vchan import _cffi

            _loaded[name] = _cffi.load(str(CLIB) if name == "c" else name)
    return _loaded[name]


def spec(name: str) -> str:
    if name in ("python", "speedups"):
        return name
    return str(CLIB) if name == "c" else name


def server_rings(rmin: int, wmin: int) -> tuple[int, int]:
    def p2(n: int) -> int:
        r = 4096
        while r < n:
            r *= 2
        return r

    rd, wr = p2(rmin), p2(wmin)
    if rmin <= 1024 and wmin <= 2048:
        return 1024, 2048
    if rmin <= 2048 and wmin <= 1024:
        return 2048, 1024
    if rmin <= 2048:
        rd = 2048
    elif wmin <= 2048:
        wr = 2048
    return rd, wr


# ------------------------------------------------------------------------------- ends


def write_stream(
    api: Any,
    h: Any,
    seed: int,
    start: int,
    total: int,
    ring: int,
    rng: random.Random,
    shared: bool | None = None,
) -> None:
    """Write stream ``seed`` bytes [start, total) with random calls and modes.

    ``shared``: the handle is shared with a reader thread, so the mode was set for both
    (True: blocking) and, non-blocking, we sleep instead of wait() (the two threads would
    take each other's events).
    """
    blocking = rng.random() < 0.5 if shared is None else shared
    use_send = rng.random() < 0.3
    if shared is None:
        api.libvchan_set_blocking(h, blocking)
    sent = start
    end = time.monotonic() + DEADLINE
    while sent < total:
        n = min(total - sent, rng.choice([1, 17, 1000, 4096, 65536, 300_000]))
        if use_send:
            n = min(n, ring)
        data = _stream.chunk(seed, sent, n)
        k = (api.libvchan_send if use_send else api.libvchan_write)(h, data, n)
        if k < 0:
            raise Failure(f"writer: -1 at {sent}/{total} (errno {api.last_errno()})")
        if k == 0:
            if blocking:
                raise Failure("writer: a blocking call returned 0")
            if shared is not None:
                time.sleep(0.0002)
            elif api.libvchan_wait(h) < 0:
                raise Failure(f"writer: wait failed (errno {api.last_errno()})")
        sent += k
        if time.monotonic() > end:
            raise Failure(f"writer stuck at {sent}/{total}")


def read_stream(
    api: Any,
    h: Any,
    seed: int,
    total: int,
    ring: int,
    rng: random.Random,
    to_eof: bool,
    shared: bool | None = None,
) -> int:
    """Read stream ``seed``: ``total`` bytes, then (``to_eof``) the end of the stream."""
    blocking = rng.random() < 0.5 if shared is None else shared
    use_recv = rng.random() < 0.3
    if shared is None:
        api.libvchan_set_blocking(h, blocking)
    check = _stream.Checker(seed)
    buf = bytearray(max(ring, CLIENT_RING))
    end = time.monotonic() + DEADLINE
    while to_eof or check.count < total:
        left = total - check.count
        want = rng.choice([1, 100, 4096, ring, CLIENT_RING])
        if use_recv and 0 < left:
            n = api.libvchan_recv(h, buf, min(want, ring, left))
            if n < 0:
                raise Failure(f"reader: recv -1 with {left} bytes to come")
        elif left == 0 and blocking and not to_eof:
            break
        else:
            n = api.libvchan_read(h, buf, want)
            if n < 0:
                break
        if n > 0:
            if not check.feed(memoryview(buf)[:n]):
                raise Failure(f"CORRUPT: wrong byte at offset {check.bad}")
        elif blocking:
            raise Failure("reader: a blocking call returned 0")
        elif shared is not None:
            time.sleep(0.0002)
        elif api.libvchan_wait(h) < 0:
            raise Failure(f"reader: wait failed (errno {api.last_errno()})")
        if time.monotonic() > end:
            raise Failure(f"reader stuck at {check.count}/{total}")
    if check.count != total:
        raise Failure(f"LOST: {check.count} of {total} bytes arrived")
    return check.count


def run_threads(*targets: tuple) -> None:
    errors: list[BaseException] = []

    def wrap(fn: Any, args: tuple) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    ts = [threading.Thread(target=wrap, args=(t[0], t[1:]), daemon=True) for t in targets]
    for t in ts:
        t.start()
    for t in ts:
        t.join(DEADLINE + 10)
        if t.is_alive():
            first = f" (after: {type(errors[0]).__name__}: {errors[0]})" if errors else ""
            raise Failure(f"HANG: a thread did not finish{first}")
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------- scenarios


def _pair(api: Any, rng: random.Random, port: int, early_total: int) -> tuple:
    rmin, wmin = rng.choice(MINS), rng.choice(MINS)
    rings = server_rings(rmin, wmin)
    srv = api.libvchan_server_init(0, port, rmin, wmin)
    if srv is None:
        raise Failure(f"server_init errno {api.last_errno()}")
    early = min(early_total, rings[1], rng.choice([0, 0, 1, rings[1]]))
    if early and api.libvchan_send(srv, _stream.chunk(0, 0, early), early) != early:
        raise Failure("early send on a WAITING server failed")
    cli = api.libvchan_client_init(0, port)
    if cli is None:
        raise Failure(f"client_init errno {api.last_errno()}")
    return srv, cli, rings, early


def scenario_simplex(impl: str, rng: random.Random, port: int) -> int:
    api = load(impl)
    total = rng.choice(TOTALS)
    from_server = rng.random() < 0.5
    srv, cli, (srd, swr), early = _pair(api, rng, port, total if from_server else 0)
    w, r = (srv, cli) if from_server else (cli, srv)
    wring, rring = (swr, CLIENT_RING) if from_server else (CLIENT_RING, srd)
    wrng, rrng = random.Random(rng.random()), random.Random(rng.random())

    def write_then_close() -> None:
        write_stream(api, w, 0, early, total, wring, wrng)
        api.libvchan_close(w)  # at once: whatever is still buffered must follow

    try:
        run_threads((write_then_close,), (read_stream, api, r, 0, total, rring, rrng, True))
    finally:
        api.libvchan_close(r)
    return total


def scenario_duplex(impl: str, rng: random.Random, port: int) -> int:
    api = load(impl)
    t_sc, t_cs = rng.choice(TOTALS), rng.choice(TOTALS)
    srv, cli, (srd, swr), early = _pair(api, rng, port, t_sc)
    rngs = [random.Random(rng.random()) for _ in range(4)]
    # two threads per handle: one mode per handle, chosen here
    mode = [rng.random() < 0.5, rng.random() < 0.5]
    api.libvchan_set_blocking(srv, mode[0])
    api.libvchan_set_blocking(cli, mode[1])
    try:
        run_threads(
            (write_stream, api, srv, 0, early, t_sc, swr, rngs[0], mode[0]),
            (read_stream, api, cli, 0, t_sc, CLIENT_RING, rngs[1], False, mode[1]),
            (write_stream, api, cli, 1, 0, t_cs, CLIENT_RING, rngs[2], mode[1]),
            (read_stream, api, srv, 1, t_cs, srd, rngs[3], False, mode[0]),
        )
    finally:
        api.libvchan_close(srv)
        api.libvchan_close(cli)
    return t_sc + t_cs


def scenario_cross(
    impl: str, rng: random.Random, port: int, impls: list[str], kill: bool = False
) -> int:
    api = load(impl)
    other = rng.choice(impls)
    we_send = not kill and rng.random() < 0.5
    our_role = rng.choice(["server", "client"])
    peer_role = "client" if our_role == "server" else "server"
    total = min(rng.choice(TOTALS[1:]), 2_000_000)
    seed = rng.randrange(1000)
    opts: dict[str, Any] = {
        "port": port,
        "seed": seed,
        "read_min": 65536,
        "write_min": 65536,
        "chunk": rng.choice([100, 4096, 65536]),
    }
    if not we_send:
        opts["total"] = 0 if kill else total
        opts["style"] = rng.choice(["blocking", "qrexec"])
    peer = None
    h = None
    try:
        if our_role == "server":
            h = api.libvchan_server_init(0, port, 65536, 65536)
            if h is None:
                raise Failure(f"server_init errno {api.last_errno()}")
            peer = Peer(spec(other), peer_role, "recv" if we_send else "send", **opts)
            peer.expect("READY", DEADLINE)
        else:
            peer = Peer(spec(other), peer_role, "recv" if we_send else "send", **opts)
            peer.expect("READY", DEADLINE)
            h = api.libvchan_client_init(0, port)
            if h is None:
                raise Failure(f"client_init errno {api.last_errno()}")
        if we_send:
            run_threads((write_stream, api, h, seed, 0, total, 65536, random.Random(rng.random())))
            api.libvchan_close(h)
            h = None
            line = peer.expect("EOF", DEADLINE)
            if line != f"EOF {total}":
                raise Failure(f"LOST: peer {other} says {line!r}, {total} were sent")
            return total
        if kill:
            check = _stream.Checker(seed)
            errors: list[str] = []

            def drain() -> None:
                buf = bytearray(65536)
                api.libvchan_set_blocking(h, True)
                while True:
                    n = api.libvchan_read(h, buf, len(buf))
                    if n < 0:
                        return
                    if not check.feed(memoryview(buf)[:n]):
                        errors.append(f"CORRUPT: wrong byte at {check.bad} after a kill")
                        return

            t = threading.Thread(target=drain, daemon=True)
            t.start()
            peer.wait_value("ACK", rng.choice([1, 100_000, 1_000_000]), DEADLINE)
            peer.kill()
            t.join(DEADLINE)
            if t.is_alive():
                raise Failure("HANG: read did not end after the peer was killed")
            if errors:
                raise Failure(errors[0])
            acked = peer.last.get("ACK", 0)
            may_lose = 65536 if opts["style"] == "qrexec" else 0
            if check.count < acked - may_lose:
                raise Failure(f"LOST: {check.count} arrived, peer had {acked} accepted")
            return check.count
        run_threads((read_stream, api, h, seed, total, 65536, random.Random(rng.random()), False))
        peer.expect("DONE", DEADLINE)
        api.libvchan_close(h)
        h = None
        code = peer.stop()
        if code != 0:
            raise Failure(f"peer exited {code}: {peer.stderr()}")
        return total
    finally:
        if h is not None:
            api.libvchan_close(h)
        if peer is not None:
            peer.cleanup()


# --------------------------------------------------------------------------------- main


def play(round_no: int, seed: int, impls: list[str]) -> tuple[str, str, int]:
    rng = random.Random(seed * 1_000_003 + round_no)
    impl = rng.choice(impls)
    kind = rng.choice(["simplex", "simplex", "duplex", "cross", "kill"])
    port = round_no % 30000
    if kind == "simplex":
        n = scenario_simplex(impl, rng, port)
    elif kind == "duplex":
        n = scenario_duplex(impl, rng, port)
    else:
        n = scenario_cross(impl, rng, port, impls, kill=kind == "kill")
    return kind, impl, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    ap.add_argument(
        "--impl",
        default="python,speedups,c",
        help="comma list: python, speedups, c, or paths of libvchan .so "
        "(default python,speedups,c)",
    )
    ap.add_argument("--seed", type=int, help="master seed (default: time)")
    ap.add_argument("--only", type=int, help="replay this one round of --seed")
    ap.add_argument("--keep-going", action="store_true", help="continue after a failure")
    args = ap.parse_args(argv)
    impls = [s.strip() for s in args.impl.split(",") if s.strip()]
    if "c" in impls and not CLIB.exists():
        print(f"{CLIB} missing (make -C libvchan-socket); soaking without it", file=sys.stderr)
        impls.remove("c")
    seed = args.seed if args.seed is not None else int(time.time())
    sockdir = tempfile.mkdtemp(prefix="vcsoak", dir="/tmp")
    os.environ["VCHAN_SOCKET_DIR"] = sockdir
    os.environ.pop("VCHAN_DOMAIN", None)
    rounds: Counter[tuple[str, str]] = Counter()
    volume: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []
    end = time.monotonic() + args.seconds
    round_no = args.only if args.only is not None else 0
    print(f"soak: seed {seed}, implementations {', '.join(impls)}, {args.seconds:g} s", flush=True)
    try:
        while True:
            try:
                kind, impl, n = play(round_no, seed, impls)
                rounds[kind, impl] += 1
                volume[kind, impl] += n
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                msg = f"round {round_no}: {type(exc).__name__}: {exc}"
                failures.append(msg)
                print(
                    f"FAIL {msg}\n  replay: python tests/soak.py --impl {args.impl} "
                    f"--seed {seed} --only {round_no}",
                    flush=True,
                )
                if not isinstance(exc, Failure):
                    traceback.print_exc()
                if not args.keep_going:
                    break
            round_no += 1
            if args.only is not None or time.monotonic() >= end:
                break
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    for (kind, impl), count in sorted(rounds.items()):
        print(f"  {kind:8s} {impl:8s} {count:6d} rounds {volume[kind, impl]:>14,d} bytes")
    total = sum(volume.values())
    print(
        f"soak: {sum(rounds.values())} rounds, {total:,} bytes verified, "
        f"{len(failures)} failures (seed {seed})"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
