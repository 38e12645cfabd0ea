"""Connecting on the event loop: wait on a descriptor, then hand over a connected Vchan."""

from __future__ import annotations

import asyncio as _asyncio
from collections.abc import Callable

from vchan import _backend
from vchan.channel import State, Vchan
from vchan.channel import server as _server
from vchan.exceptions import from_oserror


async def until(fd: int, step: Callable[[], bool]) -> None:
    """Call ``step()`` now and whenever ``fd`` is readable, until it returns True."""
    if step():
        return
    loop = _asyncio.get_running_loop()
    fut: _asyncio.Future[None] = loop.create_future()

    def on_ready() -> None:
        if fut.done():
            return
        try:
            if step():
                fut.set_result(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            fut.set_exception(exc)

    loop.add_reader(fd, on_ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def connected_client(
    domain: int, port: int, allow_any_uid: bool | None, backend: str | None
) -> Vchan:
    try:
        pending = _backend.start_client(domain, port, allow_any_uid=allow_any_uid, backend=backend)
    except OSError as exc:
        raise from_oserror(exc) from None
    try:
        await until(pending.fileno(), lambda: pending.finish(False) == 0)
    except OSError as exc:
        pending.close()
        raise from_oserror(exc) from None
    except BaseException:
        pending.close()  # cancelled (or timed out): abandon the attempt
        raise
    endpoint = pending.endpoint()
    return Vchan(endpoint)


async def connected_server(
    domain: int,
    port: int,
    read_min: int,
    write_min: int,
    allow_any_uid: bool | None,
    backend: str | None,
) -> Vchan:
    vc = _server(domain, port, read_min, write_min, allow_any_uid=allow_any_uid, backend=backend)
    try:
        vc.set_blocking(False)
        await until(vc.fileno(), lambda: vc.state != State.WAITING)
    except BaseException:
        vc.close()  # stop listening: the socket file goes away
        raise
    return vc
