"""Sphinx directives for the vchan docs, each generating a page from the source it documents
so that the page cannot drift from it:

* ``vchan-cli``: the ``vchan`` command's subcommands and options, from the argparse parser
  of :mod:`vchan.cli` (the same nodes make the HTML page and the man page);
* ``c-header``: the C API, from the comments of ``libvchan.h`` (:func:`header_rst` turns
  the header into reStructuredText using Sphinx's C domain);
* ``bench-chart``: a bar chart (inline SVG) of the ratios in a ``make bench`` table
  (:func:`parse_bench_table`);
* ``spec-tests``: the MUST -> tests table, from docs/SPEC.md and the ``pytest.mark.spec``
  markers of the test modules (:mod:`spec_ids`); on the SPEC page itself, each ID becomes a
  link target and a link to its row of the table.
"""

from __future__ import annotations

import argparse
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import spec_ids
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------ vchan-cli


def usage(parser: argparse.ArgumentParser) -> str:
    """The parser's usage without the ``usage:`` prefix (continuation lines re-indented)."""
    text = parser.format_usage().strip()
    prefix = "usage: "
    lines = [
        ln[len(prefix) :] if ln.startswith(" " * len(prefix)) else ln
        for ln in text.removeprefix(prefix).splitlines()
    ]
    return "\n".join(lines)


def _option_names(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar if isinstance(action.metavar, str) else action.dest
    metavar = ""
    if action.nargs != 0:
        if action.choices is not None and action.metavar is None:
            metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
        else:
            metavar = str(action.metavar or action.dest.upper())
    return ", ".join(f"{o} {metavar}".strip() for o in action.option_strings)


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {"default": action.default, "prog": "vchan"}
    return text


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser``, by name, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def documented_options(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """``(names, help)`` of every argument and option the directive documents."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        out.append((_option_names(action), _help(action)))
    return out


def _paragraphs(text: str) -> list[nodes.Node]:
    out: list[nodes.Node] = []
    for para in re.split(r"\n\s*\n", text.strip()):
        if para.strip():
            out.append(nodes.paragraph(text=" ".join(para.split())))
    return out


def _options_list(parser: argparse.ArgumentParser) -> nodes.Node:
    items = nodes.definition_list()
    for names, help_text in documented_options(parser):
        item = nodes.definition_list_item()
        item += nodes.term("", "", nodes.literal(text=names))
        item += nodes.definition("", nodes.paragraph(text=help_text))
        items += item
    return items


class VchanCli(SphinxDirective):
    """``vchan-cli``: a section per subcommand (usage, description, arguments and
    options, notes), generated from :func:`vchan.cli.build_parser`."""

    has_content = False
    option_spec = {"level": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        from vchan.cli import build_parser

        parser = build_parser()
        out: list[nodes.Node] = []
        for name, sub in subcommands(parser).items():
            section = nodes.section(ids=[f"vchan-{name}"], names=[f"vchan {name}"])
            section += nodes.title(text=f"vchan {name}")
            section += nodes.literal_block(text=usage(sub))
            section.extend(_paragraphs(sub.description or ""))
            section += _options_list(sub)
            if sub.epilog:
                section.extend(_paragraphs(sub.epilog))
            self.state.document.note_implicit_target(section, section)
            out.append(section)
        return out


class VchanCliMain(SphinxDirective):
    """``vchan-cli-main``: the usage of ``vchan`` and of each subcommand, then the options
    of ``vchan`` itself (a man page's synopsis)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from vchan.cli import build_parser

        parser = build_parser()
        usages = [usage(parser)] + [usage(sub) for sub in subcommands(parser).values()]
        return [nodes.literal_block(text="\n".join(usages)), _options_list(parser)]


# ------------------------------------------------------------------------- c-header


@dataclass
class Decl:
    """One declaration of the header with the comment before (or after) it."""

    kind: str  # "function", "macro", "type"
    signature: str
    name: str
    doc: list[str] = field(default_factory=list)


_COMMENT_START = re.compile(r"^\s*/\*")
_FUNC = re.compile(r"^(?P<sig>[\w\s\*]+?\b(?P<name>\w+)\s*\([^;]*\))\s*;")
_MACRO = re.compile(
    r"^#define\s+(?P<name>[A-Z_][A-Z0-9_]*)\s+(?P<value>\S+)\s*(/\*(?P<doc>.*)\*/)?"
)
_TYPEDEF = re.compile(r"^typedef\s+(?P<sig>.+?)\s*;")


def _comment_lines(block: list[str]) -> list[str]:
    """The text of a ``/* ... */`` comment, one entry per line, stars and margins gone."""
    out = []
    for line in block:
        line = line.strip()
        line = re.sub(r"^/\*+", "", line)
        line = re.sub(r"\*+/$", "", line)
        line = re.sub(r"^\* ?", "", line)
        out.append(line.rstrip())
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    return out


def parse_header(text: str) -> tuple[list[str], list[Decl]]:
    """(the header's introduction, its declarations with their comments)."""
    lines = text.splitlines()
    intro: list[str] = []
    decls: list[Decl] = []
    pending: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _COMMENT_START.match(line) and "*/" not in line.split("/*", 1)[1]:
            block = [line]
            i += 1
            while i < len(lines) and "*/" not in lines[i]:
                block.append(lines[i])
                i += 1
            block.append(lines[i] if i < len(lines) else "")
            i += 1
            comment = _comment_lines(block)
            if not intro and not decls:
                intro = comment
            else:
                pending = comment
            continue
        if _COMMENT_START.match(line) and line.strip().endswith("*/"):
            pending = _comment_lines([line])
            i += 1
            continue
        m = _MACRO.match(line)
        if m and not m["name"].endswith("_H"):
            decls.append(
                Decl("macro", m["name"], m["name"], [m["doc"].strip()] if m["doc"] else pending)
            )
            pending = []
            i += 1
            continue
        m = _TYPEDEF.match(line)
        if m:
            sig = m["sig"]
            name = sig.split()[-1].lstrip("*")
            decls.append(Decl("type", sig, name, pending))
            pending = []
            i += 1
            continue
        if re.match(r"^(?!typedef\b)[A-Za-z_][\w\s*]*\(", line):
            decl = line
            while ";" not in decl and i + 1 < len(lines):
                i += 1
                decl += " " + lines[i].strip()
            m = _FUNC.match(" ".join(decl.split()))
            if m:
                decls.append(Decl("function", m["sig"], m["name"], pending))
                pending = []
        i += 1
    return intro, decls


def _inline(text: str) -> str:
    """Comment text as RST: `code` becomes an inline literal; outside it, characters RST
    would take for markup (``<``, ``|``, a backslash) are escaped."""
    parts = re.split(r"(?<!`)`([^`]+)`(?!`)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"``{part}``")
        else:
            part = re.sub(r"([\\<|])", r"\\\1", part)
            # A star before a name that no star closes is C's (*watch_fd), not emphasis.
            out.append(re.sub(r"\*(?=\w+(?:[^\w*]|$))", r"\\*", part))
    return "".join(out)


def comment_rst(lines: list[str]) -> list[str]:
    """A header comment as reStructuredText: paragraphs, ``- `` bullet lists (continued by
    indented lines), and indented runs after a line ending in ``:`` as literal blocks."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            out.append("")
            i += 1
            continue
        if line.lstrip().startswith("- "):
            if (
                out
                and out[-1].strip()
                and not out[-1].startswith("- ")
                and not (out[-1].startswith("  "))
            ):
                out.append("")  # RST wants a blank line before a list
            indent = len(line) - len(line.lstrip())
            out.append("- " + _inline(line.lstrip()[2:]))
            i += 1
            while (
                i < len(lines)
                and lines[i].strip()
                and (len(lines[i]) - len(lines[i].lstrip()) > indent)
                and not lines[i].lstrip().startswith("- ")
            ):
                out.append("  " + _inline(lines[i].strip()))
                i += 1
            if i < len(lines) and not lines[i].lstrip().startswith("- "):
                out.append("")
            continue
        if line.startswith(" ") and out and out[-1].rstrip().endswith(":"):
            out[-1] = out[-1].rstrip() + ":"
            out.append("")
            while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
                if not lines[i].strip() and not (
                    i + 1 < len(lines) and lines[i + 1].startswith(" ")
                ):
                    break
                out.append("   " + lines[i].rstrip())
                i += 1
            out.append("")
            continue
        out.append(_inline(line.strip()))
        i += 1
    return out


def header_rst(text: str) -> list[str]:
    """The whole header as reStructuredText (introduction, then one C-domain entry per
    declaration, its comment as the body)."""
    intro, decls = parse_header(text)
    # The licence is the introduction's first paragraphs: start at the description.
    start = next((i for i, ln in enumerate(intro) if ln.startswith("This is")), 0)
    out = comment_rst(intro[start:]) + [""]
    roles = {"function": "c:function", "macro": "c:macro", "type": "c:type"}
    for decl in decls:
        out.append(f".. {roles[decl.kind]}:: {decl.signature}")
        out.append("")
        body = comment_rst(decl.doc) or ["(undocumented)"]
        out.extend("   " + ln if ln else "" for ln in body)
        out.append("")
    return out


class CHeader(SphinxDirective):
    """``c-header PATH``: the declarations of a C header with their comments."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        rel, path = self.env.relfn2path(self.arguments[0])
        self.env.note_dependency(rel)
        rst = header_rst(Path(path).read_text(encoding="utf-8"))
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(rst, source=path), container)
        return list(container.children)


# ----------------------------------------------------------------------- bench-chart


@dataclass
class BenchTable:
    columns: list[str]
    #: row label -> column -> value
    rows: dict[str, dict[str, float]]
    #: row label -> column -> the ratio printed next to the value, "(0.85x)"
    ratios: dict[str, dict[str, float]] = field(default_factory=dict)


def _split_cells(line: str) -> list[str]:
    return [c for c in re.split(r"\s{2,}", line.strip()) if c]


def parse_bench_table(text: str) -> list[BenchTable]:
    """The value tables of a ``make bench`` report (header lines, a dashed rule, rows of
    ``label  value (ratio) ...``); cells ``-`` are missing values."""
    tables: list[BenchTable] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not re.fullmatch(r"-{20,}", line.strip()):
            continue
        # The header is the (one or two) lines above the rule: column names, right-aligned
        # in fixed-width cells that end where the values end.
        head = [ln for ln in lines[max(0, i - 2) : i] if ln.strip() and ":" not in ln]
        rows: dict[str, dict[str, float]] = {}
        ratio_cells: dict[str, dict[str, float]] = {}
        cells_end: list[int] = []
        j = i + 1
        while j < len(lines) and lines[j].strip():
            row = lines[j]
            label_m = re.match(r"^(\s*\S.*?)\s{2,}", row)
            if not label_m:
                break
            values = list(
                re.finditer(r"(\d+(?:\.\d+)?)x?(?: \(([\d.]+)x\))?|(?<=\s)-(?=\s|$)", row)
            )
            values = [v for v in values if v.start() >= label_m.end() - 2]
            if not cells_end:
                cells_end = [v.end() for v in values]
            label = label_m.group(1).strip()
            rows[label] = {str(k): float(v.group(1)) for k, v in enumerate(values) if v.group(1)}
            ratio_cells[label] = {
                str(k): float(v.group(2)) for k, v in enumerate(values) if v.group(2)
            }
            j += 1
        if not cells_end:
            continue
        # Column names: the header text above each cell (cells are fixed width).
        starts = [0, *cells_end[:-1]]
        names = []
        for s, e in zip(starts, cells_end, strict=True):
            name = " ".join(" ".join(h[s:e].split()) for h in head).strip()
            names.append(" ".join(name.split()))
        table_rows = {
            label: {names[int(k)]: v for k, v in vals.items()} for label, vals in rows.items()
        }
        table_ratios = {
            label: {names[int(k)]: v for k, v in vals.items()}
            for label, vals in ratio_cells.items()
        }
        tables.append(BenchTable(names, table_rows, table_ratios))
    return tables


_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def bar_chart_svg(
    title: str, groups: list[str], series: dict[str, list[float | None]], unit: str
) -> str:
    """A grouped bar chart as a standalone SVG string (bars labelled with their value)."""
    width, height, left, top, bottom = 760, 300, 60, 30, 70
    plot_w, plot_h = width - left - 20, height - top - bottom
    top_value = (
        max((v for vals in series.values() for v in vals if v is not None), default=1.0) * 1.15
    )
    n = max(1, len(series))
    group_w = plot_w / max(1, len(groups))
    bar_w = group_w * 0.8 / n
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" font-family="sans-serif" font-size="11" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">'
        f"{html.escape(title)}</text>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#333"/>',
        f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})" '
        f'text-anchor="middle">{html.escape(unit)}</text>',
    ]
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for s, (_name, values) in enumerate(series.items()):
            value = values[g]
            if value is None:
                continue
            h = plot_h * value / top_value
            x = x0 + s * bar_w
            y = top + plot_h - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w * 0.92:.1f}" '
                f'height="{h:.1f}" fill="{_COLORS[s % len(_COLORS)]}">'
                f"<title>{html.escape(_name)}: {value:g}</title></rect>"
            )
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                f'font-size="8">{value:.2f}</text>'
            )
        parts.append(
            f'<text x="{left + (g + 0.5) * group_w:.1f}" y="{top + plot_h + 14}" '
            f'text-anchor="middle">{html.escape(group)}</text>'
        )
    for s, name in enumerate(series):
        x = left + (s % 4) * (plot_w / 4)
        y = height - 28 + (s // 4) * 14
        parts.append(
            f'<rect x="{x:.1f}" y="{y - 9}" width="10" height="10" '
            f'fill="{_COLORS[s % len(_COLORS)]}"/>'
        )
        parts.append(f'<text x="{x + 14:.1f}" y="{y}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


class BenchChart(SphinxDirective):
    """``bench-chart PATH``: throughput and round-trip ratios to the raw socket, one
    chart each, from a saved ``make bench`` report."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        rel, path = self.env.relfn2path(self.arguments[0])
        self.env.note_dependency(rel)
        tables = parse_bench_table(Path(path).read_text(encoding="utf-8"))
        columns: dict[str, dict[str, float]] = {}
        ratios: dict[str, dict[str, float]] = {}  # column -> row -> ratio to raw
        raw_col = "raw socket"
        for table in tables:
            if not table.columns or table.columns[0] != raw_col:
                continue  # the table of ratios to the anchors
            for label, vals in table.rows.items():
                for col, value in vals.items():
                    columns.setdefault(col, {})[label] = value
            for label, vals in table.ratios.items():
                for col, value in vals.items():
                    ratios.setdefault(col, {})[label] = value
        raw = columns.get(raw_col, {})
        charts = [
            (
                "Stream throughput, ratio to the raw socket (higher is better)",
                [r for r in raw if r.startswith("stream")],
                "x raw",
            ),
            (
                "64-byte round trip (median), ratio to the raw socket (lower is better)",
                [r for r in raw if r.startswith("ping") and "median" in r],
                "x raw",
            ),
        ]
        out: list[nodes.Node] = []
        for title, rows, unit in charts:
            series: dict[str, list[float | None]] = {}
            for col in columns:
                if col == raw_col:
                    continue
                series[col] = [ratios.get(col, {}).get(r) for r in rows]
            groups = [r.replace(" writes, GB/s", "").replace(", median us", "") for r in rows]
            out.append(nodes.raw("", bar_chart_svg(title, groups, series, unit), format="html"))
        return out


# ------------------------------------------------------------------------ spec-tests

#: The page of docs/SPEC.md.
SPEC_DOC = "SPEC"
_ID_TEXT = re.compile(rf"^\[({spec_ids.ID_PATTERN})\]$")


def rule_label(rule_id: str) -> str:
    """The label of a rule's ID in the SPEC page."""
    return "spec-" + rule_id.lower()


def tests_label(rule_id: str) -> str:
    """The label of a rule's row in the MUST -> tests table."""
    return "spec-tests-" + rule_id.lower()


def _add_label(env: BuildEnvironment, label: str, title: str) -> None:
    """A target ``label`` (the id of a node of the current page) that ``:ref:`` finds."""
    std = env.domains.standard_domain
    std.labels[label] = (env.docname, label, title)
    std.anonlabels[label] = (env.docname, label)


def _ref(label: str, text: str) -> addnodes.pending_xref:
    node = addnodes.pending_xref(
        "", refdomain="std", reftype="ref", reftarget=label, refexplicit=True, refwarn=True
    )
    node.append(nodes.Text(text))
    return node


def _markdown_inline(text: str) -> list[nodes.Node]:
    """A sentence of the SPEC as nodes: its ```code``` spans as literals."""
    out: list[nodes.Node] = []
    for i, part in enumerate(re.split(r"`([^`]+)`", text)):
        if part:
            out.append(nodes.literal(part, part) if i % 2 else nodes.Text(part))
    return out


def link_spec_ids(app: Sphinx, doctree: nodes.document) -> None:
    """On the SPEC page, make each bold ``[ID]`` a target and a link to its tests."""
    env = app.env
    if env.docname != SPEC_DOC:
        return
    for strong in list(doctree.findall(nodes.strong)):
        m = _ID_TEXT.match(strong.astext())
        if m is None:
            continue
        rule_id = m.group(1)
        strong["ids"].append(rule_label(rule_id))
        _add_label(env, rule_label(rule_id), f"[{rule_id}]")
        text = strong.astext()
        strong.children = []
        strong += _ref(tests_label(rule_id), text)


def _entry(*children: nodes.Node) -> nodes.entry:
    entry = nodes.entry()
    entry.extend(children)
    return entry


class SpecTests(SphinxDirective):
    """``spec-tests``: a table of every MUST of docs/SPEC.md (its ID, section and sentence)
    and the tests marked ``@pytest.mark.spec`` with its ID."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        spec = Path(self.env.srcdir) / "SPEC.md"
        repo = Path(self.env.srcdir).parent
        self.env.note_dependency(str(spec))
        rules = spec_ids.rules(spec.read_text(encoding="utf-8"))
        found, problems = spec_ids.markers(repo / "tests", repo)
        for problem in problems:
            logger.warning("spec marker: %s", problem, location=self.get_location())
        for path in sorted({m.path for m in found}):
            self.env.note_dependency(str(repo / path))
        by_rule = spec_ids.tests_by_rule(found)
        known = {r.id for r in rules}
        for m in found:
            if m.id not in known:
                logger.warning(
                    "%s:%d names an unknown rule %s",
                    m.path,
                    m.line,
                    m.id,
                    location=self.get_location(),
                )

        table = nodes.table(classes=["spec-tests", "colwidths-given"])
        group = nodes.tgroup(cols=2)
        table += group
        for width in (40, 60):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += nodes.row("", *(_entry(nodes.paragraph(text=h)) for h in ("MUST", "Tests")))
        body = nodes.tbody()
        group += body
        for rule in rules:
            label = tests_label(rule.id)
            _add_label(self.env, label, f"[{rule.id}]")
            rule_id = nodes.strong()
            rule_id += _ref(rule_label(rule.id), rule.id)
            section = rule.section.split(" ", 1)[0].rstrip(".")
            sentence = nodes.paragraph("", f"§{section}: ", *_markdown_inline(rule.sentence))
            tests: list[nodes.Node] = []
            by_path: dict[str, list[str]] = {}
            for m in by_rule.get(rule.id, []):
                by_path.setdefault(m.path, []).append(m.test)
            for path, names in by_path.items():
                tests.append(nodes.paragraph("", "", nodes.literal(text=path)))
                items = nodes.bullet_list()
                for name in names:
                    items += nodes.list_item("", nodes.paragraph("", "", nodes.literal(text=name)))
                tests.append(items)
            if not tests:
                tests.append(nodes.paragraph("", "", nodes.emphasis(text="no test yet")))
            body += nodes.row(
                "",
                _entry(nodes.paragraph("", "", rule_id), sentence),
                _entry(*tests),
                ids=[label],
            )
        marked = {m.node for m in found if m.id in known}
        summary = nodes.paragraph(
            text=f"{len(rules)} MUSTs, proven by {len(marked)} tests (each runs once per "
            "implementation)."
        )
        # Test names are long and unbreakable: let them wrap inside their column.
        style = nodes.raw(
            "",
            "<style>table.spec-tests td { vertical-align: top; } "
            "table.spec-tests span.pre { white-space: normal; overflow-wrap: anywhere; }"
            "</style>",
            format="html",
        )
        return [style, summary, table]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("vchan-cli", VchanCli)
    app.add_directive("vchan-cli-main", VchanCliMain)
    app.add_directive("c-header", CHeader)
    app.add_directive("bench-chart", BenchChart)
    app.add_directive("spec-tests", SpecTests)
    app.connect("doctree-read", link_spec_ids)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
