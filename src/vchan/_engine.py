"""The engine: which implementation of the algorithm runs inside this process.

Two engines implement the channel (docs/DESIGN.md) with one surface (the methods of
:class:`vchan._core.Channel`):

* ``"speedups"``: :class:`vchan._speedups.Channel`, a CPython extension built from the C
  library's own sources (libvchan-socket); compiled by ``pip install`` where a C compiler
  exists;
* ``"python"``: :class:`vchan._core.Channel`, the pure-Python engine, which runs anywhere.

:data:`ENGINE`, the engine of this process (``vchan.ENGINE``), is ``"speedups"`` when the
extension can be imported, else ``"python"``. ``VCHAN_PURE_PYTHON=1``, or
``VCHAN_BACKEND=python``, forces the pure-Python engine (the extension is then not even
imported). The Pythonic API (:mod:`vchan.channel`, :mod:`vchan.asyncio`) and
:mod:`vchan.libvchan` use :data:`ENGINE` unless told otherwise: both engine names are also
backend names (``backend="python"``, ``backend="speedups"``, see :mod:`vchan._backend`), and
an explicit ``"speedups"`` loads the extension even when the environment forces the pure one.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard

if TYPE_CHECKING:
    from . import _core, _speedups

    #: A channel of either engine.
    EngineChannel: TypeAlias = _core.Channel | _speedups.Channel

__all__ = [
    "ENGINE",
    "NAMES",
    "PURE_ENV",
    "PYTHON",
    "SPEEDUPS",
    "channel_class",
    "is_channel",
    "pure_forced",
    "speedups_error",
]

#: Environment variable that forces the pure-Python engine when set to anything but ""/"0".
PURE_ENV = "VCHAN_PURE_PYTHON"
#: The compiled engine's name, and the pure-Python engine's.
SPEEDUPS = "speedups"
PYTHON = "python"
NAMES = (SPEEDUPS, PYTHON)

# The compiled engine's class once imported, or why it could not be.
_speedups_cls: Any = None
_speedups_why: str | None = None
#: The classes of the engines loaded so far (for isinstance checks). The pure-Python engine
#: is imported only when used: importing it registers an at-fork hook, which a process that
#: drives a C library (or the compiled engine) has no use for.
_types: tuple[type, ...] = ()


def pure_forced() -> bool:
    """Whether the environment asks for the pure-Python engine."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return True
    return os.environ.get("VCHAN_BACKEND", "").strip() == PYTHON


def _load_speedups() -> Any:
    """The compiled engine's class (imported once), or None if it cannot be imported."""
    global _speedups_cls, _speedups_why, _types
    if _speedups_cls is None and _speedups_why is None:
        try:
            from . import _speedups
        except ImportError as exc:
            _speedups_why = str(exc) or type(exc).__name__
        else:
            _speedups_cls = _speedups.Channel
            _types = (*_types, _speedups.Channel)
    return _speedups_cls


def _load_python() -> type[_core.Channel]:
    """The pure-Python engine's class (imported on first use)."""
    global _types
    from . import _core

    if _core.Channel not in _types:
        _types = (*_types, _core.Channel)
    return _core.Channel


def speedups_error() -> str | None:
    """Why the compiled engine cannot be used (None if it can)."""
    if _load_speedups() is not None:
        return None
    return f"the compiled engine vchan._speedups cannot be imported ({_speedups_why})"


def channel_class(name: str) -> type[_core.Channel] | type[_speedups.Channel]:
    """The channel class of the engine ``name``; OSError(EINVAL) if it is not available."""
    if name == PYTHON:
        return _load_python()
    if name == SPEEDUPS:
        cls = _load_speedups()
        if cls is None:
            raise OSError(errno.EINVAL, f"backend 'speedups': {speedups_error()}")
        return cls  # type: ignore[no-any-return]
    raise OSError(errno.EINVAL, f"unknown engine {name!r} (engines: {', '.join(NAMES)})")


def is_channel(obj: object) -> TypeGuard[EngineChannel]:
    """Whether ``obj`` is a channel of one of the engines."""
    return isinstance(obj, _types)


#: The engine of this process: "speedups" if the extension imports (and the environment does
#: not force the pure engine), else "python".
ENGINE: str = PYTHON if pure_forced() or _load_speedups() is None else SPEEDUPS


def __getattr__(name: str) -> Any:
    # ``Channel``, the engine's channel class, is looked up when first used: the pure engine
    # is not imported by a process that never makes a channel of it.
    if name == "Channel":
        return channel_class(ENGINE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
