"""The examples of README.md and of the docs pages (docs/**/*.md) run here, so they cannot rot.

* Every ```python block runs (cwd: the repository, a private ``VCHAN_SOCKET_DIR``). Lines
  ``# in domain N ...`` split a block into parts that run at the same time as separate
  processes with ``VCHAN_DOMAIN=N``; the lines before the first marker are shared by every
  part. Each part must exit 0. A block using trio (or anyio) is skipped if it is missing.
* A ```sh block preceded by ``<!-- readme-test: sh -->`` runs with ``sh -e`` in an empty
  temporary directory, with this interpreter's ``vchan`` command first on ``PATH``; a
  ``# text`` comment on its last command is the expected output.
* A ```c block preceded by ``<!-- readme-test: c -->`` is a whole program: it is compiled
  against the C library of the tree and run (``VCHAN_DOMAIN=0``); it must exit 0.
* ``<!-- readme-test: skip REASON -->`` before a block skips it; the reason is required.
* Every python, sh and c block is run or skipped with a reason (``test_every_example_runs``);
  ``console`` and ``text`` blocks are transcripts, not examples. The README's opening block
  (``make demo``, ``make test``) is exempt: CI runs ``make test`` itself, and ``vchan demo``
  is tested by tests/test_cli.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CLIB, CLIB_DIR, REPO, TIMEOUT, _build_clib

README = REPO / "README.md"
#: The pages whose examples run: the README and every Markdown page of the docs.
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]
#: Block languages that are transcripts or data, not examples.
NOT_EXAMPLES = {"console", "text", "none", ""}
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = re.compile(r"^<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
_DOMAIN = re.compile(r"^# in domain (\d+)\b")


@dataclass
class Block:
    lang: str
    line: int
    code: str
    mark: str = ""
    reason: str = ""
    page: str = "README.md"

    @property
    def id(self) -> str:
        where = "" if self.page == "README.md" else f"{self.page}:"
        return f"{where}{self.lang}@line{self.line}"


def blocks(text: str, page: str = "README.md") -> list[Block]:
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    mark = reason = ""
    while i < len(lines):
        m = _MARK.match(lines[i])
        if m:
            mark, reason = m[1], m[2]
            i += 1
            continue
        f = _FENCE.match(lines[i])
        if f:
            start = i + 1
            j = start
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append(Block(f[1], start, "\n".join(lines[start:j]) + "\n", mark, reason, page))
            i = j + 1
            mark = reason = ""
            continue
        if lines[i].strip():
            mark = reason = ""
        i += 1
    return out


def split_domains(code: str) -> list[tuple[int, str]]:
    """[(domain, source)]: the parts of a block, each with the shared prelude."""
    prelude: list[str] = []
    parts: list[tuple[int, list[str]]] = []
    for line in code.splitlines():
        m = _DOMAIN.match(line)
        if m:
            parts.append((int(m[1]), [line]))
        elif parts:
            parts[-1][1].append(line)
        else:
            prelude.append(line)
    if not parts:
        return [(0, code)]
    # Keep line numbers meaningful in tracebacks: pad the prelude's place with blank lines.
    return [(d, "\n".join(prelude + body) + "\n") for d, body in parts]


ALL = [b for p in PAGES for b in blocks(p.read_text(), str(p.relative_to(REPO)))]
PYTHON = [b for b in ALL if b.lang == "python"]
SHELL = [b for b in ALL if b.lang == "sh" and b.mark == "sh"]
C = [b for b in ALL if b.lang == "c" and b.mark == "c"]


def _skip_if_marked(block: Block) -> None:
    if block.mark == "skip":
        pytest.skip(block.reason or f"marked skip in {block.page}")
    for module in ("anyio", "trio"):
        if re.search(rf"\b{module}\b", block.code) and importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")


def _needs_clib(code: str) -> None:
    if "libvchan-socket/build/" in code:
        reason = _build_clib()
        if reason is not None:
            pytest.skip(reason)
        assert CLIB.exists()


def test_readme_has_examples():
    readme = [b for b in PYTHON if b.page == "README.md"]
    assert len(readme) >= 4
    assert any(b.page == "README.md" for b in SHELL)
    assert any(len(split_domains(b.code)) > 1 for b in readme)
    assert len(PYTHON) >= 20 and C


def test_every_example_runs():
    """No example is left out silently: python blocks run, sh and c blocks are marked to
    run, and anything else is skipped with a reason."""
    silent = [
        f"{b.page}:{b.line} ({b.lang})"
        for b in ALL
        if b.lang not in NOT_EXAMPLES
        and b is not ALL[0]  # the README's `make demo` / `make test`
        and not (b.lang == "python" and b.mark != "skip")
        and not (b.mark in ("sh", "c") and b.lang == b.mark)
        and not (b.mark == "skip" and b.reason)
    ]
    assert not silent, "examples neither run nor skipped with a reason: " + ", ".join(silent)


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.id)
def test_python_example(block, sockdir):
    _skip_if_marked(block)
    _needs_clib(block.code)
    procs = []
    for domain, source in split_domains(block.code):
        env = dict(os.environ, VCHAN_SOCKET_DIR=sockdir, VCHAN_DOMAIN=str(domain))
        env.pop("VCHAN_BACKEND", None)
        procs.append(
            (
                domain,
                subprocess.Popen(
                    [sys.executable, "-c", source],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                ),
            )
        )
    failures = []
    try:
        for domain, proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            if proc.returncode != 0:
                failures.append(
                    f"domain {domain}: exit {proc.returncode}\n{out.decode()}{err.decode()}"
                )
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not failures, f"{block.page} line {block.line}:\n" + "\n".join(failures)


def _wrapper_dir() -> str:
    d = tempfile.mkdtemp(prefix="vcbin")
    script = Path(d) / "vchan"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vchan "$@"\n')
    script.chmod(0o755)
    return d


@pytest.mark.parametrize("block", SHELL, ids=lambda b: b.id)
def test_shell_example(block, sockdir, tmp_path):
    _skip_if_marked(block)
    env = dict(
        os.environ,
        VCHAN_SOCKET_DIR=sockdir,
        PATH=f"{_wrapper_dir()}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=str(REPO / "src"),
    )
    env.pop("VCHAN_DOMAIN", None)
    env.pop("VCHAN_BACKEND", None)
    proc = subprocess.run(
        ["sh", "-ec", block.code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{block.page} line {block.line}: exit {proc.returncode}\n"
        f"{proc.stdout.decode()}{proc.stderr.decode()}"
    )
    last = [ln for ln in block.code.splitlines() if ln.strip()][-1]
    if "#" in last:
        expected = last.split("#", 1)[1].strip()
        assert proc.stdout.decode().strip().splitlines()[-1] == expected


@pytest.mark.parametrize("block", C, ids=lambda b: b.id)
def test_c_example(block, sockdir, tmp_path):
    """A C program of the docs, compiled against the tree's libvchan-socket and run."""
    _skip_if_marked(block)
    reason = _build_clib()
    if reason is not None:
        pytest.skip(reason)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "example.c"
    src.write_text(block.code)
    exe = tmp_path / "example"
    build = CLIB.parent
    subprocess.run(
        [
            cc,
            "-Wall",
            "-Werror",
            "-o",
            str(exe),
            str(src),
            f"-I{CLIB_DIR}",
            f"-L{build}",
            f"-Wl,-rpath,{build}",
            "-lvchan-socket",
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    env = dict(os.environ, VCHAN_SOCKET_DIR=sockdir, VCHAN_DOMAIN="0")
    proc = subprocess.run(
        [str(exe)], env=env, capture_output=True, timeout=TIMEOUT, check=False, cwd=tmp_path
    )
    assert proc.returncode == 0, (
        f"{block.page} line {block.line}: exit {proc.returncode}\n"
        f"{proc.stdout.decode()}{proc.stderr.decode()}"
    )
