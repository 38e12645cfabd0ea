"""A short run of the C library's fuzz target (tests/fuzz/) under ASan and UBSan.

A fixed seed, so CI plays the same inputs every time; longer runs with fresh seeds:
``make -C tests/fuzz run SECONDS=600`` (or ``python tests/fuzz/fuzz.py --seconds 600``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import CLIB_DIR, REPO

FUZZ = REPO / "tests" / "fuzz"
COUNT = int(os.environ.get("VCHAN_FUZZ_COUNT", "1500"))


def test_fuzz_target_short_run(tmp_path):
    if not (CLIB_DIR / "Makefile").exists():
        pytest.skip("the C library is not there")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    build = subprocess.run(
        ["make", "-C", str(FUZZ)], capture_output=True, text=True, check=False, timeout=300
    )
    assert build.returncode == 0, (
        f"building the fuzz target failed:\n{build.stdout}\n{build.stderr}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VCHAN_")}
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZ / "fuzz.py"),
            "--count",
            str(COUNT),
            "--seed",
            "1",
            "--crashes",
            str(tmp_path / "crashes"),
            "--timeout",
            "50",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=55,
        env=env,
    )
    assert proc.returncode == 0, f"fuzz failure:\n{proc.stdout}\n{proc.stderr[-8000:]}"
