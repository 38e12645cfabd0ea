"""The benchmark orchestrator behind ``python -m bench`` / ``make bench``.

Every case runs as two processes (a server and a client, as two vchan "domains") started
fresh for that case, pinned to one CPU by default, connected through the real socket path in
a short temporary directory (or, for the raw baseline and the plain Python socket, through
the two ends of a ``socketpair``; for asyncio Unix streams, a listening socket there). The
drivers time themselves with CLOCK_MONOTONIC and report CPU time with
``getrusage(RUSAGE_SELF)`` (all threads); the orchestrator also collects each child's total
with ``wait4``. See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VBENCH = BENCH / "c" / "build" / "vbench"
CLIB_DIR = REPO / "libvchan-socket"
CLIB = CLIB_DIR / "build" / "libvchan-socket.so"
RESULTS = BENCH / "results"

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
PATTERN_LEN = MIB + 13  # odd, so that no chunk size lines up with the pattern's period
RING = 65536

STREAM_CHUNKS = (64, 4 * KIB, 64 * KIB)
PING_CASES = ("ping", "pingsel")


@dataclass
class Sizes:
    totals: dict[int, int]
    count: int
    warmup: int
    reps: int


FULL = Sizes(
    totals={64: 16 * MIB, 4 * KIB: 256 * MIB, 64 * KIB: 1 * GIB}, count=10000, warmup=1000, reps=5
)
SMOKE = Sizes(
    totals={64: 256 * KIB, 4 * KIB: 4 * MIB, 64 * KIB: 16 * MIB}, count=300, warmup=30, reps=1
)


@dataclass
class Impl:
    key: str
    label: str
    kind: str  # raw | lib | py | pylib | pyasync | pysock | aiounix
    lib: str | None = None
    skip: str | None = None  # why it cannot run here
    cases: tuple[str, ...] = ("stream", "ping", "pingsel")  # the case kinds it runs
    group: str = "native"  # native (C and the raw floor) | python: which table shows it
    anchor: str | None = None  # the column this one is also compared with (Python columns)
    env: dict[str, str] = field(default_factory=dict)  # for its children (the engine)


@dataclass
class Case:
    key: str
    kind: str  # stream | ping | pingsel
    chunk: int = 0

    @property
    def label(self) -> str:
        if self.kind == "stream":
            return f"stream {_size(self.chunk)}"
        return {"ping": "ping-pong, blocking", "pingsel": "ping-pong, select-driven"}[self.kind]


def _size(n: int) -> str:
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    if n >= KIB and n % KIB == 0:
        return f"{n // KIB} KiB"
    return f"{n} B"


CASES = [
    Case(f"stream-{_size(c).replace(' ', '').lower()}", "stream", c) for c in STREAM_CHUNKS
] + [Case(k, k) for k in PING_CASES]


@dataclass
class Pinning:
    server: set[int] | None
    client: set[int] | None
    text: str


@dataclass
class Outcome:
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- building


def build_driver() -> None:
    proc = subprocess.run(
        ["make", "-s", "-C", str(BENCH / "c")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not VBENCH.exists():
        raise SystemExit(f"building the C driver failed:\n{proc.stdout}{proc.stderr}")


def find_clib() -> tuple[str | None, str | None]:
    """Our C library: (path, None), or (None, why not)."""
    if not CLIB.exists() and (CLIB_DIR / "Makefile").exists():
        subprocess.run(["make", "-s", "-C", str(CLIB_DIR)], capture_output=True, check=False)
    if CLIB.exists():
        return str(CLIB), None
    if not (CLIB_DIR / "Makefile").exists():
        return None, "libvchan-socket/ has no Makefile yet"
    return None, f"make -C {CLIB_DIR} did not produce {CLIB.name}"


def importable(module: str) -> str | None:
    """None if ``module`` can be imported (in a child, like the drivers), else why not."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        env=_py_env({}),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["import failed"])[-1]
    return f"{module} is not available ({last})"


def _py_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    path = [str(REPO), str(REPO / "src")]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    # The "pure Python" and "vchan.asyncio" rows measure the pure-Python engine, which is no
    # longer the default where the compiled one (vchan._speedups) is built.
    env["VCHAN_PURE_PYTHON"] = "1"
    env.update(extra)
    return env


# ------------------------------------------------------------------------------ running


class CaseRunner:
    def __init__(self, sizes: Sizes, pinning: Pinning, workdir: str, timeout: float) -> None:
        self.sizes = sizes
        self.pinning = pinning
        self.workdir = workdir
        self.pattern = os.path.join(workdir, "pattern")
        with open(self.pattern, "wb") as f:
            f.write(os.urandom(PATTERN_LEN))
        self.timeout = timeout
        self.port = 1000

    def _argv(self, impl: Impl, role: str, case: Case, fd: int | None) -> list[str]:
        s = self.sizes
        common = [
            "--role",
            role,
            "--case",
            case.kind,
            "--pattern",
            self.pattern,
            "--ring",
            str(RING),
            "--reps",
            "1",
            "--count",
            str(s.count),
        ]
        if case.kind == "stream":
            total = s.totals[case.chunk]
            common += [
                "--chunk",
                str(case.chunk),
                "--total",
                str(total),
                "--warmup",
                str(max(case.chunk, total // 8)),
            ]
        else:
            common += ["--warmup", str(s.warmup)]
        dom = ["--domain", "1" if role == "server" else "0", "--port", str(self.port)]
        if impl.kind == "raw":
            extra = ["--epoll"] if impl.key == "rawep" else []
            return [str(VBENCH), *common, "--fd", str(fd), *extra]
        if impl.kind == "lib":
            assert impl.lib is not None
            return [str(VBENCH), *common, "--lib", impl.lib, *dom]
        py = [sys.executable, "-m", "bench.pydriver", *common]
        if impl.kind == "pysock":
            return [*py, "--api", "socket", "--fd", str(fd)]
        if impl.kind == "aiounix":
            path = os.path.join(self.workdir, f"u{self.port}.sock")
            return [*py, "--api", "aiounix", "--path", path]
        if impl.kind == "pylib":
            assert impl.lib is not None
            return [*py, "--api", "blocking", "--backend", impl.lib, *dom]
        api = "asyncio" if impl.kind == "pyasync" else "blocking"
        return [*py, "--api", api, *dom]

    def _spawn(
        self,
        argv: list[str],
        role: str,
        cpus: set[int] | None,
        out: str,
        fds: tuple[int, ...],
        extra: dict[str, str],
    ) -> subprocess.Popen[bytes]:
        env = _py_env(
            {
                "VCHAN_SOCKET_DIR": self.workdir,
                "VCHAN_DOMAIN": "0" if role == "server" else "1",
                **extra,
            }
        )

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        with open(out, "wb") as f, open(out + ".err", "wb") as ferr:
            return subprocess.Popen(
                argv, stdout=f, stderr=ferr, env=env, cwd=REPO, pass_fds=fds, preexec_fn=pin
            )

    def run(self, impl: Impl, case: Case) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """One repetition in a fresh pair of processes: (reports, facts)."""
        self.port += 1
        fds: list[socket.socket] = []
        if impl.kind in ("raw", "pysock"):  # the two ends of a socketpair, one per child
            fds = list(socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
        procs: dict[str, subprocess.Popen[bytes]] = {}
        outs = {r: os.path.join(self.workdir, f"{r}.out") for r in ("server", "client")}
        try:
            for i, role in enumerate(("server", "client")):
                fd = fds[i].fileno() if fds else None
                cpus = self.pinning.server if role == "server" else self.pinning.client
                procs[role] = self._spawn(
                    self._argv(impl, role, case, fd),
                    role,
                    cpus,
                    outs[role],
                    (fd,) if fd is not None else (),
                    impl.env,
                )
        finally:
            for s in fds:
                s.close()
        deadline = time.monotonic() + self.timeout
        usage: dict[str, float] = {}
        codes: dict[str, int] = {}
        timed_out = False
        pending = dict(procs)
        while pending:
            for role, proc in list(pending.items()):
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    codes[role] = os.waitstatus_to_exitcode(status)
                    proc.returncode = codes[role]
                    usage[role] = ru.ru_utime + ru.ru_stime
                    del pending[role]
            if pending and time.monotonic() > deadline:
                timed_out = True
                for proc in pending.values():
                    proc.kill()
                deadline = float("inf")
            if pending:
                time.sleep(0.005)
        reports: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        for role in ("server", "client"):
            try:
                with open(outs[role]) as f:
                    reports[role] = json.loads(f.read().strip().splitlines()[-1])
            except (OSError, ValueError, IndexError):
                reports[role] = {"ok": False, "reps": []}
            if not reports[role].get("ok"):
                with open(outs[role] + ".err", errors="replace") as f:
                    err = f.read().strip()
                errors.append(f"{role}: {reports[role].get('error', '')} {err[-500:]}".strip())
        if timed_out:
            errors.insert(0, f"timed out after {self.timeout:.0f} s")
        return reports, {"cpu_total_s": usage, "exit_codes": codes, "errors": errors}


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _pct(xs: list[int], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return float(s[min(len(s) - 1, int(q * len(s)))])


def summarize(case: Case, sizes: Sizes, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    srv, cli = reports["server"].get("reps", []), reports["client"].get("reps", [])
    n = min(len(srv), len(cli))
    verified = n == sizes.reps and all(srv[i]["verified"] and cli[i]["verified"] for i in range(n))
    out: dict[str, Any] = {"verified": verified, "reps": n}
    cpus = [srv[i]["cpu"] + cli[i]["cpu"] for i in range(n)]
    if case.kind == "stream":
        total = sizes.totals[case.chunk]
        rates = [total / ((cli[i]["t1"] - srv[i]["t0"]) / 1e9) for i in range(n)]
        out.update(
            bytes=total,
            chunk=case.chunk,
            gbps=_median(rates) / 1e9,
            gbps_reps=[r / 1e9 for r in rates],
            cpu_s_per_gib=_median([c / (total / GIB) for c in cpus]),
        )
    else:
        rtts: list[int] = [x for i in range(n) for x in cli[i].get("rtt_ns", [])]
        out.update(
            count=len(rtts),
            median_us=_pct(rtts, 0.5) / 1e3,
            p99_us=_pct(rtts, 0.99) / 1e3,
            rep_median_us=[_pct(cli[i].get("rtt_ns", []), 0.5) / 1e3 for i in range(n)],
            cpu_us_per_rtt=_median([c / sizes.count * 1e6 for c in cpus]),
        )
    return out


# ------------------------------------------------------------------------------ machine


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hostname_hash": hash(platform.node()) & 0xFFFF,
    }
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            info["wmem_max"] = int(f.read())
    except (OSError, ValueError):
        pass
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        proc = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
        info["cc"] = proc.stdout.splitlines()[0] if proc.stdout else cc
    return info


def _busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot (/proc/stat), 0 if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _our_cpu_s() -> float:
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def pinning(split: bool, cpu: int | None, no_pin: bool) -> Pinning:
    avail = sorted(os.sched_getaffinity(0))
    if no_pin:
        return Pinning(None, None, "not pinned")
    if split:
        if len(avail) < 2:
            raise SystemExit("--split needs two CPUs")
        return Pinning(
            {avail[0]}, {avail[1]}, f"split: server on CPU {avail[0]}, client on CPU {avail[1]}"
        )
    c = avail[-1] if cpu is None else cpu
    return Pinning({c}, {c}, f"both ends pinned to CPU {c}")


# --------------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="vchan benchmarks: raw AF_UNIX socket vs our C library vs our Python "
        "code, and the Python columns vs plain Python over a socket",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, one repetition: checks that every case runs and verifies",
    )
    p.add_argument(
        "--lib",
        action="append",
        default=[],
        metavar="PATH",
        help="also measure this libvchan .so (repeatable)",
    )
    p.add_argument("--split", action="store_true", help="server and client on two CPUs")
    p.add_argument("--no-pin", action="store_true", help="let the scheduler place them")
    p.add_argument("--cpu", type=int, help="the CPU to pin both ends to (default: the last)")
    p.add_argument("--reps", type=int, help="repetitions per case (default 5; smoke 1)")
    p.add_argument(
        "--only",
        help="comma list of implementations: "
        + ",".join(KEYS)
        + ",lib1,... (raw and the anchors of the Python ones always run)",
    )
    p.add_argument("--cases", help="comma list of cases: " + ",".join(c.key for c in CASES))
    p.add_argument("--no-scale", action="store_true", help="skip the scale checks")
    p.add_argument("--out", default=str(RESULTS), help="results directory")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument(
        "--check-targets", action="store_true", help="exit with status 3 if a target is missed"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="per case, seconds")
    return p.parse_args(argv)


#: the --only names of the built-in columns (plus lib1, lib2, ... for --lib)
KEYS = ("raw", "rawep", "c", "pysock", "py", "pyx", "pyc", "aiounix", "pyasync", "pyasyncx")
#: the children of the compiled-engine columns (the others measure the pure-Python engine)
SPEEDUPS_ENV = {"VCHAN_PURE_PYTHON": "0", "VCHAN_BACKEND": "speedups"}
ASYNC_CASES = ("stream", "pingsel")  # asyncio is select-driven by construction


def implementations(args: argparse.Namespace) -> list[Impl]:
    clib, why = find_clib()
    cffi = importable("cffi")
    speedups = importable("vchan._speedups")
    impls = [
        Impl("raw", "raw socket", "raw"),
        # diagnostic: the raw socket with an epoll fd registered on it the way the
        # libraries now do (DESIGN.md, SPEC §5: edge-triggered IN|RDHUP, no OUT),
        # the select-driven floor of the notification design
        Impl("rawep", "raw+epoll", "raw"),
        Impl("c", "C library", "lib", clib, why),
    ]
    for i, path in enumerate(args.lib, 1):
        p = Path(path).absolute()
        impls.append(
            Impl(f"lib{i}", p.name, "lib", str(p), None if p.exists() else f"{path} does not exist")
        )
    impls += [
        # the Python columns, each next to its anchor: the same program over a plain socket
        Impl("pysock", "plain Python socket", "pysock", group="python"),
        Impl("py", "pure Python", "py", group="python", anchor="pysock"),
        Impl(
            "pyx",
            "compiled engine",
            "py",
            skip=speedups,
            group="python",
            anchor="pysock",
            env=SPEEDUPS_ENV,
        ),
        Impl(
            "pyc",
            "Python over the C library",
            "pylib",
            clib,
            why or cffi,
            group="python",
            anchor="pysock",
        ),
        Impl("aiounix", "asyncio Unix streams", "aiounix", cases=ASYNC_CASES, group="python"),
        Impl(
            "pyasync",
            "vchan.asyncio",
            "pyasync",
            skip=importable("vchan.asyncio"),
            cases=ASYNC_CASES,
            group="python",
            anchor="aiounix",
        ),
        Impl(
            "pyasyncx",
            "vchan.asyncio, compiled",
            "pyasync",
            skip=importable("vchan.asyncio") or speedups,
            cases=ASYNC_CASES,
            group="python",
            anchor="aiounix",
            env=SPEEDUPS_ENV,
        ),
    ]
    if args.only:
        keep = {k.strip() for k in args.only.split(",")} | {"raw"}
        unknown = keep - {i.key for i in impls}
        if unknown:
            raise SystemExit(
                f"--only: unknown implementation(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(i.key for i in impls)}"
            )
        keep |= {i.anchor for i in impls if i.key in keep and i.anchor}
        impls = [i for i in impls if i.key in keep]
    return impls


def main(argv: list[str] | None = None) -> int:
    from bench import report, scale

    args = parse(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.reps:
        sizes = Sizes(sizes.totals, sizes.count, sizes.warmup, args.reps)
    build_driver()
    pin = pinning(args.split, args.cpu, args.no_pin)
    impls = implementations(args)
    cases = CASES
    if args.cases:
        keep = {k.strip() for k in args.cases.split(",")}
        cases = [c for c in CASES if c.key in keep]
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    busy_before, ours_before, wall_before = _busy_cpu_s(), _our_cpu_s(), time.monotonic()
    result: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "mode": "smoke" if args.smoke else "full",
        "machine": machine(),
        "pinning": pin.text,
        "config": {
            "ring": RING,
            "reps": sizes.reps,
            "ping_count": sizes.count,
            "ping_warmup": sizes.warmup,
            "ping_size": 64,
            "stream_totals": {str(k): v for k, v in sizes.totals.items()},
        },
        "implementations": {
            i.key: {
                "label": i.label,
                "kind": i.kind,
                "lib": i.lib,
                "skipped": i.skip,
                "group": i.group,
                "anchor": i.anchor,
                "cases": [c.key for c in cases if c.kind in i.cases],
            }
            for i in impls
        },
        "results": {i.key: {} for i in impls},
    }
    print(
        f"vchan bench ({result['mode']}): {pin.text}; {sizes.reps} repetition(s), medians",
        file=sys.stderr,
    )
    for i in impls:
        if i.skip:
            print(f"  skipping {i.label}: {i.skip}", file=sys.stderr)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vb", dir="/tmp") as workdir:
        runner = CaseRunner(sizes, pin, workdir, args.timeout)
        # Case by case; every repetition runs each implementation in turn, in fresh
        # processes, so that drift and other load on the machine affect them alike.
        for case in cases:
            todo = [i for i in impls if not i.skip and case.kind in i.cases]
            merged: dict[str, dict[str, dict[str, Any]]] = {
                i.key: {r: {"ok": True, "reps": []} for r in ("server", "client")} for i in todo
            }
            facts: dict[str, dict[str, Any]] = {
                i.key: {"cpu_total_s": [], "errors": [], "wall_s": 0.0} for i in todo
            }
            for _ in range(sizes.reps):
                for impl in todo:
                    if facts[impl.key]["errors"]:
                        continue
                    t = time.monotonic()
                    reports, f = runner.run(impl, case)
                    for role in ("server", "client"):
                        merged[impl.key][role]["reps"] += reports[role].get("reps", [])
                    facts[impl.key]["cpu_total_s"].append(f["cpu_total_s"])
                    facts[impl.key]["errors"] += f["errors"]
                    facts[impl.key]["wall_s"] += time.monotonic() - t
            for impl in todo:
                data = summarize(case, sizes, merged[impl.key])
                data["cpu_total_s"] = facts[impl.key]["cpu_total_s"]
                if facts[impl.key]["errors"]:
                    data["errors"] = facts[impl.key]["errors"]
                outcome = Outcome(not facts[impl.key]["errors"] and data["verified"] is True, data)
                result["results"][impl.key][case.key] = outcome.data
                status = "ok" if outcome.ok else "FAILED"
                print(
                    f"  {case.label:26} {impl.label:26} {status} "
                    f"({facts[impl.key]['wall_s']:.1f} s) {report.brief(case, outcome.data)}",
                    file=sys.stderr,
                )
                if not outcome.ok:
                    failures.append(
                        f"{impl.label} / {case.label}: "
                        f"{outcome.data.get('errors') or 'not verified'}"
                    )
    if not args.no_scale:
        result["scale"] = scale.run_all(impls, smoke=args.smoke, env=_py_env({}))
        for name, s in result["scale"].items():
            if not s.get("skipped") and not s.get("ok"):
                failures.append(f"scale {name}: {s.get('error', 'failed')}")
    result["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    # CPU time the rest of the machine used while we ran, in CPUs (from /proc/stat)
    wall = time.monotonic() - wall_before
    other = (_busy_cpu_s() - busy_before) - (_our_cpu_s() - ours_before)
    result["other_load_cpus"] = max(0.0, other / wall) if wall > 0 else 0.0
    result["targets"] = report.targets(result)
    result["failures"] = failures
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    name = "smoke" if args.smoke else "bench"
    for path in (out / f"{name}-{stamp}.json", out / f"{name}-latest.json"):
        path.write_text(json.dumps(result, indent=1) + "\n")
    table = report.table(result, cases)
    print(table)
    (out / f"{name}-latest.txt").write_text(table + "\n")
    print(f"JSON: {out / f'{name}-latest.json'}")
    if not args.no_chart:
        note = report.chart(result, cases, out / f"{name}-latest.png")
        print(note)
    if failures:
        print("FAILURES:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    if args.check_targets and any(t["ok"] is False for t in result["targets"]):
        return 3
    return 0
