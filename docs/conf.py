"""Sphinx configuration: the HTML site (make docs -> build/docs/html) and the vchan(1) man
page (build/docs/man/vchan.1), both from this directory. Markdown pages are read by MyST."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
TREE = DOCS.parent
sys.path[:0] = [str(DOCS / "_ext"), str(TREE / "src")]

project = "vchan"
author = "The vchan developers"
copyright = "2026, The vchan developers"  # noqa: A001 - Sphinx's name
release = (TREE / "version").read_text(encoding="utf-8").strip()
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "vchan_sphinx",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_data", "README.md"]
# The pages use "vchan" in code blocks of several languages; none is highlighted as Python
# unless it says so.
highlight_language = "none"
# Options are written --like-this: no en dashes, no curly quotes.
smartquotes = False

myst_enable_extensions = ["colon_fence", "deflist"]
# Headings get anchors, so [text](page.md#heading) links work.
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}

# Links to the Python and anyio docs are written out as text (no network at build time).
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

html_theme = "alabaster"
html_title = f"vchan {release}"
html_static_path: list[str] = []
html_theme_options = {"description": "Qubes' libvchan over Unix sockets, for Python and C"}

# The man page: reference/cli is written for it (see docs/_ext/vchan_sphinx.py).
man_pages = [
    (
        "reference/cli",
        "vchan",
        "pipe data through a vchan, list channels, run the demo",
        [author],
        1,
    ),
]
man_show_urls = False
# Reproducible: the page carries the release, not the build date.
today = release
