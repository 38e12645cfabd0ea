"""The README's examples run here, so they cannot rot.

* Every ```python block runs (cwd: the repository, a private ``VCHAN_SOCKET_DIR``). Lines
  ``# in domain N ...`` split a block into parts that run at the same time as separate
  processes with ``VCHAN_DOMAIN=N``; the lines before the first marker are shared by every
  part. Each part must exit 0.
* A ```sh block preceded by ``<!-- readme-test: sh -->`` runs with ``sh -e`` in an empty
  temporary directory, with this interpreter's ``vchan`` command first on ``PATH``; a
  ``# text`` comment on its last command is the expected output.
* ``<!-- readme-test: skip REASON -->`` before a block skips it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CLIB, REPO, TIMEOUT, _build_clib

README = REPO / "README.md"
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

    @property
    def id(self) -> str:
        return f"{self.lang}@line{self.line}"


def blocks(text: str) -> list[Block]:
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
            out.append(Block(f[1], start, "\n".join(lines[start:j]) + "\n", mark, reason))
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


ALL = blocks(README.read_text())
PYTHON = [b for b in ALL if b.lang == "python"]
SHELL = [b for b in ALL if b.lang == "sh" and b.mark == "sh"]


def _skip_if_marked(block: Block) -> None:
    if block.mark == "skip":
        pytest.skip(block.reason or "marked skip in README.md")


def _needs_clib(code: str) -> None:
    if "libvchan-socket/build/" in code:
        reason = _build_clib()
        if reason is not None:
            pytest.skip(reason)
        assert CLIB.exists()


def test_readme_has_examples():
    assert len(PYTHON) >= 5
    assert SHELL
    assert any(len(split_domains(b.code)) > 1 for b in PYTHON)


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
    assert not failures, f"README.md line {block.line}:\n" + "\n".join(failures)


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
        f"README.md line {block.line}: exit {proc.returncode}\n"
        f"{proc.stdout.decode()}{proc.stderr.decode()}"
    )
    last = [ln for ln in block.code.splitlines() if ln.strip()][-1]
    if "#" in last:
        expected = last.split("#", 1)[1].strip()
        assert proc.stdout.decode().strip().splitlines()[-1] == expected
