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

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="the benchmark's C driver needs a C compiler",
)


@pytest.mark.timeout(120)
def test_bench_smoke(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "smoke-latest.json").read_text())
    assert "targets (issue 5)" in proc.stdout
    every = {"stream-64b", "stream-4kib", "stream-64kib", "ping", "pingsel"}
    impls = result["implementations"]
    ran = [k for k, v in impls.items() if not v["skipped"]]
    assert {"raw", "py"} <= set(ran)
    assert set(impls["raw"]["cases"]) == set(impls["py"]["cases"]) == every
    for impl in ran:
        got = result["results"][impl]
        assert set(got) == set(impls[impl]["cases"]), impl
        for case, data in got.items():
            assert data["verified"] is True, (impl, case, data)
            assert data.get("errors") is None, (impl, case, data)
    for name, check in result.get("scale", {}).items():
        if not check.get("skipped"):
            assert check["ok"] is True, (name, check)
    assert not result["failures"]
