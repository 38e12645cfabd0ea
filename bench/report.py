"""The benchmark's outputs: the text tables, the targets (issues 9, 10 and 15), the PNG chart."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
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


def ratio(
    result: dict[str, Any], impl: str, case: str, key: str, base: str = "raw"
) -> float | None:
    """``impl``'s figure over ``base``'s (another column, e.g. its anchor), same run."""
    v, b = _get(result, impl, case, key), _get(result, base, case, key)
    if v is None or not b:
        return None
    return v / b


def anchor(result: dict[str, Any], impl: str) -> str | None:
    a: str | None = result["implementations"].get(impl, {}).get("anchor")
    return a


# (issue, implementation, case, figure, comparison, limit, base): base "raw" is the raw
# socket, "anchor" the column's anchor (plain Python socket, asyncio Unix streams); a limit of
# None is a figure to report, not a target.
TARGETS: list[tuple[int, str, str, str, str, float | None, str]] = [
    (9, "c", "pingsel", "median_us", "<=", 1.15, "raw"),
    (9, "c", "ping", "median_us", "<=", 1.15, "raw"),
    (9, "c", "stream-4kib", "gbps", ">=", 0.9, "raw"),
    (9, "c", "stream-64kib", "gbps", ">=", 0.9, "raw"),
    (9, "py", "pingsel", "median_us", "<=", 2.2, "raw"),
    (9, "pyasync", "pingsel", "median_us", "", None, "raw"),
    (10, "py", "stream-64b", "gbps", ">=", 0.6, "anchor"),
    (10, "py", "stream-4kib", "gbps", ">=", 0.8, "anchor"),
    (10, "py", "stream-64kib", "gbps", ">=", 0.8, "anchor"),
    (10, "py", "ping", "median_us", "<=", 1.3, "anchor"),
    (10, "py", "pingsel", "median_us", "<=", 1.3, "anchor"),
    (10, "pyasync", "stream-4kib", "gbps", ">=", 0.8, "anchor"),
    (10, "pyasync", "stream-64kib", "gbps", ">=", 0.8, "anchor"),
    (10, "pyasync", "pingsel", "median_us", "<=", 1.3, "anchor"),
    (15, "c", "pingsel", "median_us", "<=", 1.2, "raw"),
    (15, "pyx", "stream-64b", "gbps", ">=", 0.7, "anchor"),
    (15, "pyx", "stream-4kib", "gbps", ">=", 0.9, "anchor"),
    (15, "pyx", "stream-64kib", "gbps", ">=", 0.9, "anchor"),
    (15, "pyx", "ping", "median_us", "<=", 1.1, "anchor"),
    (15, "pyx", "pingsel", "median_us", "<=", 1.3, "anchor"),
    (15, "pyasyncx", "stream-4kib", "gbps", ">=", 1.0, "anchor"),
    (15, "pyasyncx", "stream-64kib", "gbps", ">=", 1.0, "anchor"),
    (15, "pyasyncx", "pingsel", "median_us", "<=", 1.2, "anchor"),
]

_CASE_WORDS = {
    "stream-64b": "stream 64 B throughput",
    "stream-4kib": "stream 4 KiB throughput",
    "stream-64kib": "stream 64 KiB throughput",
    "ping": "blocking round trip (median)",
    "pingsel": "select-driven round trip (median)",
}


def _what(case: str, key: str) -> str:
    return _CASE_WORDS.get(case, f"{case} {key}")


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    impls = result["implementations"]
    labels = {k: v["label"] for k, v in impls.items()}
    for issue, impl, case, key, op, limit, base in TARGETS:
        b = anchor(result, impl) if base == "anchor" else "raw"
        if impl not in impls or b is None:
            continue
        r = ratio(result, impl, case, key, b)
        against = "raw" if b == "raw" else labels.get(b, b)
        t: dict[str, Any] = {
            "issue": issue,
            "impl": impl,
            "case": case,
            "figure": key,
            "base": b,
            "ratio": r,
            "limit": limit,
        }
        if limit is None:  # reported, not checked
            a = anchor(result, impl)
            v = _get(result, impl, case, key)
            t.update(
                ok=None,
                info=True,
                value=v,
                anchor_ratio=ratio(result, impl, case, key, a) if a else None,
            )
            t["name"] = f"{labels.get(impl, impl)}: {_what(case, key)}"
            out.append(t)
            continue
        t["ok"] = None if r is None else (r >= limit if op == ">=" else r <= limit)
        t["name"] = f"{labels.get(impl, impl)}: {_what(case, key)} {op} {limit} x {against}"
        if impls[impl].get("skipped") or impls.get(b, {}).get("skipped"):
            t["note"] = "not run here"
        out.append(t)
    for name, s in result.get("scale", {}).items():
        if s.get("skipped"):
            out.append({"issue": 5, "name": f"scale {name}", "ok": None, "note": s["skipped"]})
            continue
        if s.get("kind") == "idle":
            ok = bool(s.get("ok")) and s["fds_per_channel"] <= 2 and s["threads_added"] == 0
            out.append(
                {
                    "issue": 5,
                    "name": f"scale {name}: {s['channels']} idle channels, "
                    "<= 2 fds and no thread each",
                    "ok": ok,
                    "fds_per_channel": s["fds_per_channel"],
                    "threads_added": s["threads_added"],
                }
            )
        else:
            ok = bool(s.get("ok")) and s.get("slowest_bytes", 0) > 0
            out.append(
                {
                    "issue": 5,
                    "name": f"scale {name}: {s.get('pairs')} busy pairs in one "
                    "loop all make progress",
                    "ok": ok,
                }
            )
    return out


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


TITLE = 30  # width of the row titles
CELL = 16  # width of a cell (labels wrap onto two header lines)


def _rows(cases: list[Case]) -> list[tuple[str, str, str, int]]:
    """(title, case, figure, digits) of every table row."""
    out = []
    for c in cases:
        if c.kind == "stream":
            out.append((f"{c.label} writes, GB/s", c.key, "gbps", 3))
    for c in cases:
        if c.kind == "stream":
            out.append((f"  CPU s/GiB, {c.label}", c.key, "cpu_s_per_gib", 2))
    for c in cases:
        if c.kind != "stream":
            title = {"ping": "ping blocking", "pingsel": "ping select-driven"}[c.kind]
            out.append((f"{title}, median us", c.key, "median_us", 1))
            out.append(("  p99 us", c.key, "p99_us", 1))
            out.append(("  CPU us per round trip", c.key, "cpu_us_per_rtt", 1))
    return out


def _head(labels: list[str]) -> list[str]:
    wrapped = [textwrap.wrap(label, CELL - 1)[:2] or [""] for label in labels]
    lines = []
    for i in range(max(len(w) for w in wrapped)):
        lines.append(
            f"{'':{TITLE}}" + "".join(f"{(w[i] if i < len(w) else ''):>{CELL}}" for w in wrapped)
        )
    return lines


def _grid(
    result: dict[str, Any],
    cases: list[Case],
    impls: list[str],
    base: Callable[[str], str | None],
    raw_cell: Callable[[str], bool],
) -> list[str]:
    """Figures of ``impls``: each cell ``value (ratio to base(impl))``, or just the value for
    the columns where raw_cell(impl) holds (the baseline itself)."""
    labels = [result["implementations"][k]["label"] for k in impls]
    rows = _head(labels)
    rows.append("-" * (TITLE + CELL * len(impls)))
    for title, case, key, digits in _rows(cases):
        cells = []
        for k in impls:
            d = result["results"].get(k, {}).get(case)
            v = _get(result, k, case, key)
            b = base(k)
            if d is not None and not d.get("verified"):
                cells.append("FAILED")
            elif v is None:
                cells.append("-")
            else:
                r = ratio(result, k, case, key, b) if b else None
                cells.append(
                    _fmt(v, digits) if raw_cell(k) or r is None else f"{_fmt(v, digits)} ({r:.2f}x)"
                )
        rows.append(f"{title:{TITLE}}" + "".join(f"{c:>{CELL}}" for c in cells))
    return rows


def _anchor_grid(result: dict[str, Any], cases: list[Case], impls: list[str]) -> list[str]:
    names = result["implementations"]
    rows = [
        "anchors: "
        + "; ".join(f"{names[k]['label']} / {names[names[k]['anchor']]['label']}" for k in impls)
    ]
    rows += _head([names[k]["label"] for k in impls])
    rows.append("-" * (TITLE + CELL * len(impls)))
    for title, case, key, _digits in _rows(cases):
        cells = []
        for k in impls:
            r = ratio(result, k, case, key, names[k]["anchor"])
            d = result["results"].get(k, {}).get(case)
            cells.append(
                "FAILED"
                if d is not None and not d.get("verified")
                else "-"
                if r is None
                else f"{r:.2f}x"
            )
        rows.append(f"{title:{TITLE}}" + "".join(f"{c:>{CELL}}" for c in cells))
    return rows


def table(result: dict[str, Any], cases: list[Case]) -> str:
    impls = [k for k, v in result["implementations"].items() if not v["skipped"]]
    info = result["implementations"]
    native = [k for k in impls if info[k].get("group", "native") == "native"]
    python = [k for k in impls if info[k].get("group") == "python"]
    anchored = [k for k in python if info[k].get("anchor") in impls]
    rows: list[str] = []
    m = result["machine"]
    rows.append(
        f"vchan bench, {result['started']} ({result['mode']}), {result['pinning']}, "
        f"median of {result['config']['reps']} repetition(s)"
    )
    rows.append(
        f"machine: {m.get('cpu')}, {m.get('cpus')} CPUs, Linux {m.get('kernel')}, "
        f"Python {m.get('python')}"
    )
    other = result.get("other_load_cpus")
    if other is not None:
        rows.append(
            f"other work on the machine meanwhile: {other:.2f} CPUs on average "
            f"(load average {result['loadavg']['before'][0]:.2f} before)"
        )
        if other > 0.25:
            rows.append(
                "WARNING: other work was running on this machine; figures (and even "
                "ratios) are unreliable"
            )
    rows.append("each cell: value (ratio to the raw socket); throughput in GB/s (1e9 B/s)")
    rows.append("")

    def is_raw(k: str) -> bool:
        return k == "raw"

    rows += _grid(result, cases, native, lambda k: "raw", is_raw)
    if python:
        rows.append("")
        rows.append("Python columns, value (ratio to the raw socket):")
        rows += _grid(
            result, cases, ["raw", *python] if "raw" in impls else python, lambda k: "raw", is_raw
        )
    if anchored:
        rows.append("")
        rows.append(
            "Python columns vs their anchors (ratio to the anchor's figure, same run; "
            "throughput: higher is better, the rest lower):"
        )
        rows += _anchor_grid(result, cases, anchored)
    scale = result.get("scale", {})
    if scale:
        rows.append("")
        rows.append("scale:")
        for name, s in scale.items():
            if s.get("skipped"):
                rows.append(f"  {name}: skipped ({s['skipped']})")
            elif s.get("kind") == "idle":
                failed = "" if s.get("ok") else " FAILED: " + s.get("error", "")
                rows.append(
                    f"  {name}: {s['channels']} idle open channels: "
                    f"{s['fds_per_channel']:.2f} fds per channel and "
                    f"{s['threads_added']} threads added in all{failed}"
                )
            else:
                if not s.get("ok"):
                    rows.append(f"  {name}: FAILED: {s.get('error', '')}")
                    continue
                rows.append(
                    f"  {name}: {s['pairs']} busy pairs in one asyncio loop for "
                    f"{s['seconds']:.1f} s: aggregate {s['aggregate_mbps']:.1f} MB/s, "
                    f"slowest pair {s['slowest_mbps']:.2f} MB/s, fastest "
                    f"{s['fastest_mbps']:.2f} MB/s, all verified: {s['verified']}"
                )
    rows.append("")
    rows.append("targets (ratio to raw, or to the anchor; scale: issue 5):")
    for t in result.get("targets", []):
        if t.get("info"):
            v, r, a = t.get("value"), t.get("ratio"), t.get("anchor_ratio")
            parts = [f"{v:.1f} us" if v is not None else "not measured"]
            if r is not None:
                parts.append(f"{r:.2f} x raw")
            if a is not None:
                parts.append(f"{a:.2f} x anchor")
            rows.append(f"  [info] issue {t['issue']}: {t['name']}: {', '.join(parts)}")
            continue
        mark = {True: "PASS", False: "MISS", None: "n/a "}[t["ok"]]
        extra = f" (ratio {t['ratio']:.2f})" if t.get("ratio") is not None else ""
        if t.get("note"):
            extra += f" ({t['note']})"
        rows.append(f"  [{mark}] issue {t.get('issue', 5)}: {t['name']}{extra}")
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
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    w = 0.8 / max(1, len(impls))

    def bars(
        ax: Any,
        groups: list[Case],
        key: str,
        title: str,
        ylabel: str,
        log: bool,
        higher_better: bool,
    ) -> None:
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
                ax.bar_label(
                    b,
                    labels=[f"{r:.2f}x" if r is not None else "" for r in rs],
                    fontsize=7,
                    rotation=90,
                    padding=2,
                )
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([c.label.replace("ping-pong, ", "") for c in groups])
        ax.set_title(
            title + (" (higher is better)" if higher_better else " (lower is better)"), fontsize=10
        )
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.margins(y=0.25)

    bars(axes[0], streams, "gbps", "stream throughput, ring 64 KiB", "GB/s", True, True)
    bars(
        axes[1], streams, "cpu_s_per_gib", "CPU per GiB, both processes", "CPU s / GiB", True, False
    )
    bars(axes[2], pings, "median_us", "64-byte round trip, median", "µs", False, False)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 9), fontsize=9)
    m = result["machine"]
    fig.suptitle(
        f"vchan bench {result['started']}: {m.get('cpu')}, {m.get('cpus')} CPUs, "
        f"Linux {m.get('kernel')}; {result['pinning']}; labels: ratio to raw",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart: {path}"
