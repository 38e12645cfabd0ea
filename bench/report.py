"""The benchmark's outputs: the text table, the targets of issue 5, and the PNG chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run import Case


def brief(case: Case, d: dict[str, Any]) -> str:
    if "gbps" in d:
        return f"{d['gbps']:.3f} GB/s, {d['cpu_s_per_gib']:.2f} CPU s/GiB"
    if "median_us" in d:
        return f"median {d['median_us']:.1f} us, p99 {d['p99_us']:.1f} us"
    return ""


def _get(result: dict[str, Any], impl: str, case: str, key: str) -> float | None:
    d = result["results"].get(impl, {}).get(case)
    if not d or not d.get("verified") or key not in d:
        return None
    v = d[key]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def ratio(result: dict[str, Any], impl: str, case: str, key: str) -> float | None:
    v, base = _get(result, impl, case, key), _get(result, "raw", case, key)
    if v is None or not base:
        return None
    return v / base


# (implementation, case, figure, comparison, limit)
TARGETS = [
    ("c", "stream-4kib", "gbps", ">=", 0.85),
    ("c", "stream-64kib", "gbps", ">=", 0.85),
    ("c", "ping", "median_us", "<=", 1.2),
    ("c", "pingsel", "median_us", "<=", 1.2),
    ("py", "stream-64kib", "gbps", ">=", 0.5),
    ("py", "ping", "median_us", "<=", 3.0),
    ("py", "pingsel", "median_us", "<=", 3.0),
]


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    labels = {k: v["label"] for k, v in result["implementations"].items()}
    for impl, case, key, op, limit in TARGETS:
        r = ratio(result, impl, case, key)
        what = "throughput" if key == "gbps" else "median round trip"
        ok = None if r is None else (r >= limit if op == ">=" else r <= limit)
        out.append({"name": f"{labels.get(impl, impl)}: {case} {what} {op} {limit} x raw",
                    "impl": impl, "case": case, "figure": key, "ratio": r, "limit": limit,
                    "ok": ok})
    for name, s in result.get("scale", {}).items():
        if s.get("skipped"):
            out.append({"name": f"scale {name}", "ok": None, "note": s["skipped"]})
            continue
        if s.get("kind") == "idle":
            ok = bool(s.get("ok")) and s["fds_per_channel"] <= 2 and s["threads_added"] == 0
            out.append({"name": f"scale {name}: {s['channels']} idle channels, <= 2 fds and "
                                "no thread each", "ok": ok,
                        "fds_per_channel": s["fds_per_channel"],
                        "threads_added": s["threads_added"]})
        else:
            ok = bool(s.get("ok")) and s.get("slowest_bytes", 0) > 0
            out.append({"name": f"scale {name}: {s.get('pairs')} busy pairs in one loop all "
                                "make progress", "ok": ok})
    return out


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(result: dict[str, Any], cases: list[Case]) -> str:
    impls = [k for k, v in result["implementations"].items() if not v["skipped"]]
    labels = {k: result["implementations"][k]["label"] for k in impls}
    width = 19
    rows: list[str] = []
    m = result["machine"]
    rows.append(f"vchan bench, {result['started']} ({result['mode']}), {result['pinning']}, "
                f"median of {result['config']['reps']} repetition(s)")
    rows.append(f"machine: {m.get('cpu')}, {m.get('cpus')} CPUs, Linux {m.get('kernel')}, "
                f"Python {m.get('python')}")
    other = result.get("other_load_cpus")
    if other is not None:
        rows.append(f"other work on the machine meanwhile: {other:.2f} CPUs on average "
                    f"(load average {result['loadavg']['before'][0]:.2f} before)")
        if other > 0.25:
            rows.append("WARNING: other work was running on this machine; figures (and even "
                        "ratios) are unreliable")
    rows.append("each cell: value (ratio to the raw socket); throughput in GB/s (1e9 B/s)")
    rows.append("")
    head = f"{'':34}" + "".join(f"{labels[k][:width - 1]:>{width}}" for k in impls)
    rows.append(head)
    rows.append("-" * len(head))

    def line(title: str, case: str, key: str, digits: int) -> None:
        cells = []
        for k in impls:
            v = _get(result, k, case, key)
            d = result["results"].get(k, {}).get(case)
            if d is not None and not d.get("verified"):
                cells.append("FAILED")
                continue
            if v is None:
                cells.append("-")
                continue
            r = ratio(result, k, case, key)
            cells.append(_fmt(v, digits) if k == "raw" or r is None
                         else f"{_fmt(v, digits)} ({r:.2f}x)")
        rows.append(f"{title:34}" + "".join(f"{c:>{width}}" for c in cells))

    for c in cases:
        if c.kind == "stream":
            line(f"{c.label} writes, GB/s", c.key, "gbps", 3)
    for c in cases:
        if c.kind == "stream":
            line(f"  CPU s/GiB, {c.label}", c.key, "cpu_s_per_gib", 2)
    for c in cases:
        if c.kind != "stream":
            line(f"{c.label}, median us", c.key, "median_us", 1)
            line("  p99 us", c.key, "p99_us", 1)
            line("  CPU us per round trip", c.key, "cpu_us_per_rtt", 1)
    scale = result.get("scale", {})
    if scale:
        rows.append("")
        rows.append("scale:")
        for name, s in scale.items():
            if s.get("skipped"):
                rows.append(f"  {name}: skipped ({s['skipped']})")
            elif s.get("kind") == "idle":
                failed = "" if s.get("ok") else " FAILED: " + s.get("error", "")
                rows.append(f"  {name}: {s['channels']} idle open channels: "
                            f"{s['fds_per_channel']:.2f} fds per channel and "
                            f"{s['threads_added']} threads added in all{failed}")
            else:
                if not s.get("ok"):
                    rows.append(f"  {name}: FAILED: {s.get('error', '')}")
                    continue
                rows.append(f"  {name}: {s['pairs']} busy pairs in one asyncio loop for "
                            f"{s['seconds']:.1f} s: aggregate {s['aggregate_mbps']:.1f} MB/s, "
                            f"slowest pair {s['slowest_mbps']:.2f} MB/s, fastest "
                            f"{s['fastest_mbps']:.2f} MB/s, all verified: {s['verified']}")
    rows.append("")
    rows.append("targets (issue 5):")
    for t in result.get("targets", []):
        mark = {True: "PASS", False: "MISS", None: "n/a "}[t["ok"]]
        extra = f" (ratio {t['ratio']:.2f})" if t.get("ratio") is not None else ""
        if t.get("note"):
            extra += f" ({t['note']})"
        rows.append(f"  [{mark}] {t['name']}{extra}")
    return "\n".join(rows)


def chart(result: dict[str, Any], cases: list[Case], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install 'vchan[bench]')"
    impls = [k for k, v in result["implementations"].items() if not v["skipped"]]
    labels = [result["implementations"][k]["label"] for k in impls]
    streams = [c for c in cases if c.kind == "stream"]
    pings = [c for c in cases if c.kind != "stream"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    w = 0.8 / max(1, len(impls))

    def bars(ax: Any, groups: list[Case], key: str, title: str, ylabel: str,
             log: bool, higher_better: bool) -> None:
        for j, k in enumerate(impls):
            xs, ys, rs = [], [], []
            for g, c in enumerate(groups):
                v = _get(result, k, c.key, key)
                if v is not None:
                    xs.append(g + (j - (len(impls) - 1) / 2) * w)
                    ys.append(v)
                    rs.append(ratio(result, k, c.key, key))
            b = ax.bar(xs, ys, w, label=labels[j], color=colors[j % len(colors)])
            if k != "raw":
                ax.bar_label(b, labels=[f"{r:.2f}x" if r is not None else "" for r in rs],
                             fontsize=7, rotation=90, padding=2)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([c.label.replace("ping-pong, ", "") for c in groups])
        ax.set_title(title + (" (higher is better)" if higher_better
                              else " (lower is better)"), fontsize=10)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.margins(y=0.25)

    bars(axes[0], streams, "gbps", "stream throughput, ring 64 KiB", "GB/s", True, True)
    bars(axes[1], streams, "cpu_s_per_gib", "CPU per GiB, both processes", "CPU s / GiB",
         True, False)
    bars(axes[2], pings, "median_us", "64-byte round trip, median", "µs", False, False)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=9)
    m = result["machine"]
    fig.suptitle(f"vchan bench {result['started']}: {m.get('cpu')}, {m.get('cpus')} CPUs, "
                 f"Linux {m.get('kernel')}; {result['pinning']}; labels: ratio to raw",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart: {path}"
