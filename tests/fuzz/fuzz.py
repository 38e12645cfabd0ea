"""Random operation sequences for the libvchan-socket fuzz target, and a runner.

    python tests/fuzz/fuzz.py --seconds 60          # fuzz for a minute (make -C tests/fuzz run)
    python tests/fuzz/fuzz.py --count 300 --seed 1  # a fixed, reproducible batch (CI)
    tests/fuzz/build/vchan-fuzz FILE                # replay one input

Inputs follow the format documented at the top of vchan_ops_fuzz.c. Batches of inputs are
written to a temporary directory and played by one driver process (the ASan+UBSan build of
the library); a failing input is copied to ``--crashes`` (default tests/fuzz/crashes/) and
the command that replays it is printed. Exit status 0: no failure.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BINARY = HERE / "build" / "vchan-fuzz"

# opcode numbers of vchan_ops_fuzz.c
WRITE, SEND, READ, RECV, DATA_READY, BUFFER_SPACE, SET_BLOCKING, WAIT, IS_OPEN, CLOSE = range(10)
RAW_SEND, RAW_RECV, RAW_SHUTDOWN, RAW_RESET, PAUSE = 10, 11, 12, 13, 14
SIZED = {WRITE, SEND, READ, RECV, RAW_SEND, RAW_RECV}
WEIGHTS = {
    WRITE: 14,
    SEND: 8,
    READ: 14,
    RECV: 8,
    DATA_READY: 6,
    BUFFER_SPACE: 8,
    SET_BLOCKING: 5,
    WAIT: 4,
    IS_OPEN: 3,
    CLOSE: 1,
    RAW_SEND: 8,
    RAW_RECV: 6,
    RAW_SHUTDOWN: 1,
    RAW_RESET: 1,
    PAUSE: 1,
}
EDGES = [1, 2, 1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096, 4097, 65535, 65536, 65537]


def size_bytes(rng: random.Random) -> tuple[bytes, int]:
    kind = rng.random()
    if kind < 0.3:
        n = rng.randint(0, 16)
    elif kind < 0.6:
        n = rng.randint(0, 5000)
    elif kind < 0.85:
        n = rng.choice(EDGES)
    else:
        n = rng.randint(0, 32767) * 8
    if n >= 32768:
        enc = (n // 8) | 0x8000
        n = (n // 8) * 8
    else:
        enc = n
    return bytes([enc & 0xFF, enc >> 8]), n


def generate(rng: random.Random) -> bytes:
    out = bytearray([rng.randrange(256), rng.choice([0, 0, rng.randrange(64)])])
    ops = list(WEIGHTS)
    weights = [WEIGHTS[o] for o in ops]
    for _ in range(rng.randint(5, 150)):
        op = rng.choices(ops, weights)[0]
        if op == CLOSE and rng.random() < 0.7:
            continue  # keep most sequences long enough to matter
        out.append(op | (rng.randrange(2) << 4) | (rng.randrange(2) << 5) | (rng.randrange(4) << 6))
        if op in SIZED:
            enc, n = size_bytes(rng)
            if op == RAW_SEND:
                n = min(n, 20000)
                enc = bytes([n & 0xFF, n >> 8])
                out += enc
                out += rng.randbytes(n)
            else:
                out += enc
    return bytes(out)


def run_batch(binary: Path, inputs: list[bytes], crashes: Path, timeout: float) -> bool:
    with (
        tempfile.TemporaryDirectory(prefix="vchan-fuzz-in.") as tmp,
        tempfile.TemporaryDirectory(prefix="vf", dir="/tmp") as sockdir,
    ):
        for i, data in enumerate(inputs):
            (Path(tmp) / f"{i:06d}").write_bytes(data)
        env = dict(os.environ, VCHAN_SOCKET_DIR=sockdir, VCHAN_FUZZ_KEEP_DIR="1")
        env.setdefault("ASAN_OPTIONS", "abort_on_error=1:detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        env.pop("LD_PRELOAD", None)  # the driver links the ASan runtime itself
        env.pop("VCHAN_DOMAIN", None)
        try:
            proc = subprocess.run(
                [str(binary), tmp],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            ok, err = proc.returncode == 0, proc.stderr
            why = f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired as exc:
            ok, why = False, f"no exit within {timeout} s"
            err = (
                exc.stderr.decode(errors="replace")
                if isinstance(exc.stderr, bytes)
                else (exc.stderr or "")
            )
        if ok:
            return True
        played = [ln for ln in err.splitlines() if ln.startswith(tmp)]
        culprit = Path(played[-1]) if played else None
        crashes.mkdir(parents=True, exist_ok=True)
        print(f"vchan-fuzz FAILED ({why}):", file=sys.stderr)
        print(
            "\n".join(ln for ln in err.splitlines() if not ln.startswith(tmp))[-6000:],
            file=sys.stderr,
        )
        if culprit is not None and culprit.exists():
            dest = crashes / f"crash-{int(time.time())}-{culprit.name}"
            shutil.copy(culprit, dest)
            print(f"failing input saved: {dest}\nreplay: {binary} {dest}", file=sys.stderr)
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, help="fuzz for this long")
    ap.add_argument("--count", type=int, help="play this many inputs")
    ap.add_argument("--seed", type=int, help="random seed (default: time)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--binary", type=Path, default=BINARY)
    ap.add_argument("--crashes", type=Path, default=HERE / "crashes")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    if args.seconds is None and args.count is None:
        args.seconds = 60
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    if not args.binary.exists():
        print(f"{args.binary} missing: run make -C {HERE}", file=sys.stderr)
        return 2
    end = None if args.seconds is None else time.monotonic() + args.seconds
    played = 0
    while True:
        n = args.batch if args.count is None else min(args.batch, args.count - played)
        if n <= 0 or (end is not None and time.monotonic() >= end):
            break
        if not run_batch(
            args.binary, [generate(rng) for _ in range(n)], args.crashes, args.timeout
        ):
            print(f"(seed {seed}, after {played} inputs)", file=sys.stderr)
            return 1
        played += n
    print(f"vchan-fuzz: {played} inputs (seed {seed}), no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
