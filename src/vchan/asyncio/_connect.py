"""Connecting on the event loop: wait on a descriptor, then hand over a connected Vchan."""

from __future__ import annotations

import asyncio as _asyncio
from collections.abc import Callable

from vchan.channel import State, Vchan, client_with
from vchan.channel import server as _server


async def readable(fd: int) -> None:
    """Sleep until ``fd`` is readable."""
    loop = _asyncio.get_running_loop()
    fut: _asyncio.Future[None] = loop.create_future()

    def on_ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, on_ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def until(fd: int, step: Callable[[], bool]) -> None:
    """Call ``step()`` now and whenever ``fd`` is readable, until it returns True."""
    while not step():
        await readable(fd)


async def connected_client(
    domain: int, port: int, allow_any_uid: bool | None, backend: str | None
) -> Vchan:
    return await client_with(readable, domain, port, allow_any_uid, backend)


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
