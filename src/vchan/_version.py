"""The release version, kept in one place: the ``version`` file at the top of the tree.

pyproject.toml reads it (setuptools dynamic version) into the distribution's metadata, the C
library's Makefile into its .pc files, the RPM spec is filled from it, and a test holds
debian/changelog to it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

#: The top of the source tree when this module runs from one (src/vchan/_version.py).
_TREE = Path(__file__).resolve().parents[2]


@cache
def version() -> str:
    """The ``version`` file of a source tree (a checkout, an editable install, an unpacked
    sdist), else the installed distribution's metadata (a wheel), else ``0+unknown``."""
    vfile = _TREE / "version"
    if vfile.is_file() and (_TREE / "pyproject.toml").is_file():
        return vfile.read_text(encoding="utf-8").strip()
    # Only here (an installed wheel): importlib.metadata costs as much as importing vchan.
    from importlib import metadata

    try:
        return metadata.version("vchan")
    except metadata.PackageNotFoundError:
        return "0+unknown"
