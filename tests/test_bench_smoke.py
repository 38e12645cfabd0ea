"""The benchmark's smoke mode: every case runs and every byte it moved was verified.

Benchmarks are not tests (their figures are not checked here); this only proves that
``python -m bench`` works and that its data checks hold for every implementation it found.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="the benchmark's C driver needs a C compiler",
)


def _bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads((tmp_path / "smoke-latest.json").read_text())


@pytest.mark.timeout(120)
def test_bench_smoke(tmp_path: Path) -> None:
    proc, result = _bench(tmp_path)
    assert "targets (ratio to raw" in proc.stdout
    assert "Python columns vs their anchors" in proc.stdout
    every = {"stream-64b", "stream-4kib", "stream-64kib", "ping", "pingsel"}
    impls = result["implementations"]
    ran = [k for k, v in impls.items() if not v["skipped"]]
    # the raw floors and the anchors of the Python columns need nothing but the stdlib
    assert {"raw", "rawep", "py", "pysock", "aiounix"} <= set(ran)
    for k in ("raw", "rawep", "py", "pysock"):
        assert set(impls[k]["cases"]) == every, k
    assert set(impls["aiounix"]["cases"]) == {
        "stream-64b",
        "stream-4kib",
        "stream-64kib",
        "pingsel",
    }
    assert impls["py"]["anchor"] == impls["pyc"]["anchor"] == "pysock"
    assert impls["pyasync"]["anchor"] == "aiounix"
    if "c" in ran:  # the C library was built: Python over it runs too (cffi is a dependency)
        assert "pyc" in ran, impls["pyc"]
    # the compiled engine's columns, next to the same anchors, where the extension is built
    assert impls["pyx"]["anchor"] == "pysock" and impls["pyasyncx"]["anchor"] == "aiounix"
    try:
        import vchan._speedups  # noqa: F401
    except ImportError:
        pass
    else:
        assert {"pyx", "pyasyncx"} <= set(ran), (impls["pyx"], impls["pyasyncx"])
    for impl in ran:
        got = result["results"][impl]
        assert set(got) == set(impls[impl]["cases"]), impl
        for case, data in got.items():
            assert data["verified"] is True, (impl, case, data)
            assert data.get("errors") is None, (impl, case, data)
    for name, check in result.get("scale", {}).items():
        if not check.get("skipped"):
            assert check["ok"] is True, (name, check)
    names = {t["name"] for t in result["targets"]}
    assert any("x plain Python socket" in n for n in names), names
    assert any("x asyncio Unix streams" in n for n in names), names
    assert not result["failures"]


@pytest.mark.timeout(60)
def test_bench_only_brings_the_anchor(tmp_path: Path) -> None:
    _proc, result = _bench(
        tmp_path, "--only", "pyasync", "--cases", "pingsel", "--no-scale", "--no-chart"
    )
    assert set(result["implementations"]) == {"raw", "aiounix", "pyasync"}
    for impl, v in result["implementations"].items():
        if not v["skipped"]:
            assert result["results"][impl]["pingsel"]["verified"] is True, impl
