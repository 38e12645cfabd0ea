"""The docs' generators and what they generate: the man page agrees with ``vchan --help``,
the C API page holds every declaration of libvchan.h, the benchmark chart reads the saved
table, and every public name of the Python API is in the reference.

The man page is built here with ``sphinx -b man`` (seconds) into a temporary directory; the
whole site is built by ``make docs``, which ``make test`` runs first (warnings are errors).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import REPO

DOCS = REPO / "docs"
pytest.importorskip("sphinx", reason="sphinx is not installed (make docs installs it)")
sys.path.insert(0, str(DOCS / "_ext"))
import vchan_sphinx  # noqa: E402 - the docs' own extension, from docs/_ext

from vchan.cli import build_parser  # noqa: E402


def _has_sphinx() -> bool:
    return importlib.util.find_spec("sphinx") is not None and (
        importlib.util.find_spec("myst_parser") is not None
    )


@pytest.fixture(scope="module")
def man_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """build/docs/man/vchan.1, freshly built, as text (rendered by man/groff if present)."""
    if not _has_sphinx():
        pytest.skip("sphinx and myst-parser are not installed (make docs installs them)")
    out = tmp_path_factory.mktemp("man")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "-q",
            "-b",
            "man",
            "-d",
            str(out / "doctrees"),
            str(DOCS),
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    page = out / "vchan.1"
    assert page.exists()
    env = dict(os.environ, MANWIDTH="200", LC_ALL="C.UTF-8")
    for cmd in (["man", "-l", str(page)], ["groff", "-man", "-Tutf8", str(page)]):
        try:
            proc = subprocess.run(cmd, capture_output=True, env=env, timeout=60, check=False)
        except FileNotFoundError:
            continue
        if proc.returncode == 0 and proc.stdout:
            text = proc.stdout.decode()
            return re.sub(r".\x08", "", text)  # overstrike bold/underline
    return page.read_text()


def _normal(text: str) -> str:
    return " ".join(text.replace("\u2010", "-").replace("\u2212", "-").split())


def _section(man: str, name: str) -> str:
    """The part of the man page about subcommand ``name`` (its .SS section)."""
    starts = [m.start() for m in re.finditer(r"^ {2,3}vchan \w+\s*$", man, re.M)]
    for i, start in enumerate(starts):
        title = man[start:].split("\n", 1)[0].strip()
        if title == f"vchan {name}":
            end = starts[i + 1] if i + 1 < len(starts) else len(man)
            return man[start:end]
    raise AssertionError(f"no section for 'vchan {name}' in the man page")


def _help_options(parser: Any) -> list[str]:
    """The option strings and positional names the parser's --help lists."""
    names = []
    for action in parser._actions:
        if action.help == "==SUPPRESS==" or action.__class__.__name__ == "_SubParsersAction":
            continue
        names.extend(action.option_strings or [action.metavar or action.dest])
    return names


def test_man_page_has_every_subcommand_in_order(man_page: str) -> None:
    subs = list(vchan_sphinx.subcommands(build_parser()))
    assert subs == ["listen", "connect", "ls", "demo", "bench"]
    found = re.findall(r"^ {2,3}vchan (\w+)\s*$", man_page, re.M)
    assert found == subs
    for heading in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "ENVIRONMENT",
        "EXIT STATUS",
        "EXAMPLES",
    ):
        assert re.search(rf"^{heading}\s*$", man_page, re.M), heading


def test_man_page_agrees_with_help(man_page: str) -> None:
    """Every option of `vchan --help` and of each `vchan COMMAND --help` is in the man page,
    in that command's section, with its help text; the usage lines are the same."""
    parser = build_parser()
    top = man_page.split("DESCRIPTION", 1)[0]
    for option in _help_options(parser):
        assert option in top, option
    norm_man = _normal(man_page)
    for name, sub in vchan_sphinx.subcommands(parser).items():
        section = _section(man_page, name)
        norm = _normal(section)
        help_text = _normal(sub.format_help())
        assert _normal(vchan_sphinx.usage(sub)) in norm, name
        assert _normal(vchan_sphinx.usage(sub)) in _normal(top), name  # in the synopsis too
        for option in _help_options(sub):
            assert re.search(rf"(^|[\s,]){re.escape(option)}([\s,=]|$)", section, re.M), (
                f"vchan {name}: {option} missing from the man page"
            )
            assert option in help_text
        for names, text in vchan_sphinx.documented_options(sub):
            assert _normal(text) in norm, f"vchan {name} {names}: help text differs"
        if sub.description:
            assert _normal(sub.description) in norm_man
    # And the reverse: nothing in the man page's option lists that --help lacks.
    for name, sub in vchan_sphinx.subcommands(parser).items():
        listed = set(re.findall(r"^\s+(-{1,2}[\w-]+)", _section(man_page, name), re.M))
        assert listed <= set(_help_options(sub)), (name, listed - set(_help_options(sub)))


def test_cli_help_runs_and_matches_the_parser() -> None:
    """`vchan --help` and `vchan COMMAND --help` (the real command) list the same options
    the man page is generated from."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), COLUMNS="100")
    parser = build_parser()
    for args, sub in [
        ([], parser),
        *[([n], p) for n, p in vchan_sphinx.subcommands(parser).items()],
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "vchan", *args, "--help"],
            capture_output=True,
            env=env,
            timeout=60,
            check=True,
        )
        out = proc.stdout.decode()
        for option in _help_options(sub):
            assert option in out, (args, option)


# ------------------------------------------------------------------------- C header

HEADER = REPO / "libvchan-socket" / "libvchan.h"


def test_c_header_page_has_every_declaration_documented() -> None:
    text = HEADER.read_text()
    intro, decls = vchan_sphinx.parse_header(text)
    functions = set(re.findall(r"\b(libvchan_\w+)\s*\(", text))
    documented = {d.name for d in decls if d.kind == "function"}
    assert functions == documented
    assert all(d.doc for d in decls if d.kind == "function")
    macros = set(re.findall(r"^#define\s+(VCHAN_\w+)", text, re.M))
    assert macros == {d.name for d in decls if d.kind == "macro"}
    assert {"EVTCHN", "libvchan_t"} <= {d.name for d in decls if d.kind == "type"}
    assert "SPDX" not in " ".join(vchan_sphinx.header_rst(text))  # the licence is left out
    assert any("drop-in replacement" in ln for ln in intro)


def test_comment_rst_lists_literals_and_escapes() -> None:
    rst = vchan_sphinx.comment_rst(
        [
            "Returns a handle, or NULL with errno:",
            "  EINVAL   bad domain",
            "  ENOENT   no directory",
            "Conventions:",
            "- one `x`",
            "  continued",
            "- two *p and *emph*",
        ]
    )
    text = "\n".join(rst)
    assert "errno::\n\n     EINVAL   bad domain\n     ENOENT   no directory" in text
    assert "Conventions:\n\n- one ``x``\n  continued\n- two \\*p and *emph*" in text


def test_parse_header_function_spanning_lines() -> None:
    intro, decls = vchan_sphinx.parse_header(
        "/*\n * Intro.\n */\n\n/*\n * Does f.\n */\nint f(int a,\n      int b);\n"
        "#define VCHAN_X 3 /* x */\n"
    )
    assert intro == ["Intro."]
    assert [(d.kind, d.signature, d.doc) for d in decls] == [
        ("function", "int f(int a, int b)", ["Does f."]),
        ("macro", "VCHAN_X", ["x"]),
    ]


# --------------------------------------------------------------------- bench chart


def test_bench_table_and_chart() -> None:
    tables = vchan_sphinx.parse_bench_table((DOCS / "_data" / "bench-latest.txt").read_text())
    native, python, anchors = tables
    assert native.columns == ["raw socket", "raw+epoll", "C library"]
    assert "vchan.asyncio" in python.columns and python.columns[0] == "raw socket"
    assert "vchan.asyncio, compiled" in python.columns  # a name with a comma, on two lines
    assert native.rows["ping blocking, median us"]["C library"] == 11.2
    assert python.rows["ping blocking, median us"].get("vchan.asyncio") is None  # "-"
    assert anchors.rows["stream 4 KiB writes, GB/s"]["vchan.asyncio, compiled"] == 0.94
    assert native.ratios["ping select-driven, median us"]["C library"] == 1.24
    svg = vchan_sphinx.bar_chart_svg("t", ["a", "b"], {"x": [1.0, None], "y": [0.5, 2.0]}, "u")
    assert svg.startswith("<svg") and svg.count("<rect") == 3 + 2  # bars + legend


def test_readme_bench_summary_matches_the_saved_table() -> None:
    """The README's short table is the same run's ratios as the docs' full table: the C
    library against the raw socket, each Python column against its anchor."""
    native, _, anchors = vchan_sphinx.parse_bench_table(
        (DOCS / "_data" / "bench-latest.txt").read_text()
    )
    rows = {
        "| stream, 4 KiB writes": "stream 4 KiB writes, GB/s",
        "| stream, 64 KiB writes": "stream 64 KiB writes, GB/s",
        "| round trip, blocking": "ping blocking, median us",
        "| round trip, select-driven": "ping select-driven, median us",
    }
    columns = [
        (native.ratios, "C library"),
        (anchors.rows, "compiled engine"),
        (anchors.rows, "pure Python"),
        (anchors.rows, "vchan.asyncio, compiled"),
    ]
    readme = (REPO / "README.md").read_text().splitlines()
    for start, label in rows.items():
        cells = [c.strip() for c in next(ln for ln in readme if ln.startswith(start)).split("|")]
        for cell, (table, column) in zip(cells[2:6], columns, strict=True):
            ratio = table[label].get(column)
            assert cell == ("-" if ratio is None else f"{ratio:.2f}x"), (start, column)


# ---------------------------------------------------------------- API reference


def _public_names() -> list[str]:
    """Every public name of vchan, vchan.libvchan, vchan.asyncio and vchan.anyio, with the
    public methods and properties of their classes."""
    names = []
    modules = ["vchan", "vchan.libvchan", "vchan.asyncio"]
    if importlib.util.find_spec("anyio") is not None:
        modules.append("vchan.anyio")
    for modname in modules:
        module = importlib.import_module(modname)
        for name in module.__all__:
            obj = getattr(module, name)
            qual = f"{modname}.{name}"
            names.append(qual)
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                for attr, value in vars(obj).items():
                    if attr.startswith("_") or not (callable(value) or isinstance(value, property)):
                        continue
                    names.append(f"{qual}.{attr}")
    return names


def test_every_public_name_is_in_the_reference() -> None:
    inventory = REPO / "build" / "docs" / "html" / "objects.inv"
    if not inventory.exists():
        pytest.skip("the docs are not built (make docs; make test builds them first)")
    from sphinx.util.inventory import InventoryFile

    with inventory.open("rb") as f:
        inv = InventoryFile.load(f, "", lambda base, uri: uri)
    documented = (
        {name for kind in inv.data.values() for name in kind}
        if hasattr(inv, "data")
        else {name for kind in inv.values() for name in kind}
    )
    # Names re-exported by vchan are documented where they are defined, or under vchan.
    aliases = {"vchan.exceptions.": "vchan.", "vchan.channel.": "vchan."}

    def known(name: str) -> bool:
        if name in documented:
            return True
        return any(
            name.startswith(short) and long + name[len(short) :] in documented
            for long, short in aliases.items()
        )

    missing = [n for n in _public_names() if not known(n)]
    assert not missing, f"not in the API reference: {missing}"


def test_docs_pages_are_all_in_a_toctree() -> None:
    """Every page of docs/ is reachable from the landing page (Sphinx warns otherwise, but
    only when it builds)."""
    index = (DOCS / "index.md").read_text()
    pages = [
        p
        for p in DOCS.rglob("*")
        if p.suffix in (".md", ".rst") and "_" not in p.parts[len(DOCS.parts)][:1]
    ]
    for page in pages:
        rel = page.relative_to(DOCS).with_suffix("").as_posix()
        if rel == "index":
            continue
        assert re.search(rf"^{re.escape(rel)}$", index, re.M), f"{rel} is in no toctree"
