"""vchan.anyio under both of anyio's backends (asyncio, trio): verified transfers, end of
stream, cancellation in the middle of a transfer, a peer that dies, and a trio process and
an asyncio process talking through it."""

from __future__ import annotations

import importlib.util
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests import _backends
from tests.conftest import REPO, SETTLE, TIMEOUT, pattern, sock_path

anyio = pytest.importorskip("anyio", reason="anyio is not installed (pip install 'vchan[anyio]')")
va = pytest.importorskip("vchan.anyio")

HAVE_TRIO = importlib.util.find_spec("trio") is not None
NO_TRIO = pytest.mark.skipif(not HAVE_TRIO, reason="trio is not installed (vchan[trio])")

pytestmark = pytest.mark.anyio

MIB = 1 << 20


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio", marks=NO_TRIO),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every test runs under both anyio backends."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _private_socket_dir(sockdir: str) -> str:
    return sockdir


@pytest.fixture(params=_backends.names())
def backend(request: pytest.FixtureRequest) -> str:
    """``python``, our C library, or ``$VCHAN_TEST_LIB``."""
    return _backends.backend_arg(request.param)


async def pair(
    port: int, backend: str = "python", read_min: int = 65536, write_min: int = 65536
) -> tuple[Any, Any]:
    """(server stream, client stream) connected to each other in domain 0."""
    streams: dict[str, Any] = {}

    async def serving() -> None:
        streams["server"] = await va.serve(0, port, read_min, write_min, backend=backend)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serving)
        streams["client"] = await va.connect(0, port, backend=backend)
    return streams["server"], streams["client"]


async def receive_exactly(stream: Any, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += await stream.receive(size - len(out))
    return bytes(out)


async def receive_all(stream: Any) -> bytes:
    out = bytearray()
    while True:
        try:
            out += await stream.receive()
        except anyio.EndOfStream:
            return bytes(out)


async def send_in_chunks(stream: Any, data: bytes, chunk: int) -> None:
    view = memoryview(data)
    for i in range(0, len(data), chunk):
        await stream.send(view[i : i + chunk])


@pytest.fixture
async def streams(backend: str) -> AsyncIterator[tuple[Any, Any]]:
    with anyio.fail_after(TIMEOUT):
        srv, cli = await pair(100, backend)
    try:
        yield srv, cli
    finally:
        await srv.aclose()
        await cli.aclose()


# ----------------------------------------------------------------------------- data


async def test_one_mib_both_ways_verified(streams: tuple[Any, Any]) -> None:
    srv, cli = streams
    down, up = pattern(MIB, seed=1), pattern(MIB, seed=2)
    got: dict[str, bytes] = {}

    async def side(name: str, stream: Any, data: bytes, chunk: int) -> None:
        async def receiving() -> None:
            got[name] = await receive_exactly(stream, len(data))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receiving)
            await send_in_chunks(stream, data, chunk)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(side, "client", cli, up, 65536)  # large writes one way,
            tg.start_soon(side, "server", srv, down, 1000)  # small ones the other
    assert got["server"] == up  # each side received what the other sent
    assert got["client"] == down


async def test_one_send_larger_than_the_rings(backend: str) -> None:
    with anyio.fail_after(TIMEOUT):
        srv, cli = await pair(101, backend, 4096, 4096)
        data = pattern(MIB, seed=3)
        async with srv, cli, anyio.create_task_group() as tg:
            tg.start_soon(srv.send, data)
            assert await receive_exactly(cli, MIB) == data


async def test_receive_returns_what_is_there_up_to_max_bytes(streams: tuple[Any, Any]) -> None:
    srv, cli = streams
    with anyio.fail_after(TIMEOUT):
        await srv.send(b"0123456789")
        first = await cli.receive(4)
        assert first == b"0123"
        assert await receive_exactly(cli, 6) == b"456789"
        with pytest.raises(ValueError):
            await cli.receive(0)


async def test_extra_attributes(streams: tuple[Any, Any]) -> None:
    srv, cli = streams
    assert srv.extra(va.VchanAttribute.port) == 100
    assert cli.extra(va.VchanAttribute.domain) == 0
    assert cli.extra(va.VchanAttribute.vchan).state.name == "CONNECTED"


# ----------------------------------------------------------------------- end of stream


async def test_end_of_stream_after_every_byte(streams: tuple[Any, Any]) -> None:
    srv, cli = streams
    data = pattern(200_000, seed=4)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:

            async def send_then_close() -> None:
                await srv.send(data)
                await srv.aclose()

            tg.start_soon(send_then_close)
            assert await receive_all(cli) == data
        with pytest.raises(anyio.EndOfStream):  # and it stays at the end
            await cli.receive()
        with pytest.raises(anyio.BrokenResourceError) as info:
            for _ in range(100):  # the first sends may still fit before the departure shows
                await cli.send(b"x" * 1000)
        import vchan

        assert isinstance(info.value.__cause__, vchan.Disconnected)


async def test_send_eof_is_not_supported(streams: tuple[Any, Any]) -> None:
    srv, cli = streams
    with pytest.raises(NotImplementedError):
        await cli.send_eof()
    await cli.send(b"still usable")  # nothing changed
    with anyio.fail_after(TIMEOUT):
        assert await receive_exactly(srv, 12) == b"still usable"


async def test_closed_stream_raises_closed_resource_error(streams: tuple[Any, Any]) -> None:
    srv, cli = streams
    await cli.aclose()
    await cli.aclose()  # idempotent
    with pytest.raises(anyio.ClosedResourceError):
        await cli.receive()
    with pytest.raises(anyio.ClosedResourceError):
        await cli.send(b"x")


async def test_aclose_wakes_tasks_blocked_on_the_stream(streams: tuple[Any, Any]) -> None:
    srv, cli = streams
    errors: list[BaseException] = []

    async def blocked_receive() -> None:
        try:
            await cli.receive()
        except anyio.ClosedResourceError as exc:
            errors.append(exc)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_receive)
            await anyio.sleep(SETTLE)
            await cli.aclose()
    assert len(errors) == 1


async def test_two_receivers_are_refused(streams: tuple[Any, Any]) -> None:
    srv, cli = streams
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cli.receive)
            await anyio.sleep(SETTLE)
            with pytest.raises(anyio.BusyResourceError):
                await cli.receive()
            await srv.send(b"x")  # lets the first one finish


# ------------------------------------------------------------------------ cancellation


async def test_cancelled_receive_and_send_lose_no_byte(backend: str) -> None:
    """Both ends cancel their calls at random moments in the middle of a transfer (small
    rings, so that sends wait); every byte still arrives once, in order, and the streams
    are usable afterwards."""
    rng = random.Random(7)
    data = pattern(MIB, seed=5)
    received = bytearray()
    cancelled = {"send": 0, "receive": 0}
    with anyio.fail_after(4 * TIMEOUT):
        srv, cli = await pair(102, backend, 4096, 4096)

        async def sender() -> None:
            view = memoryview(data)
            for i in range(0, MIB, 20_000):
                with anyio.move_on_after(rng.choice([0, 0.0001, 0.001, 1])) as scope:
                    await srv.send(view[i : i + 20_000])
                cancelled["send"] += scope.cancelled_caught
            await srv.send(b"")  # waits until what cancelled sends left is in the vchan

        async def receiver() -> None:
            while len(received) < MIB:
                with anyio.move_on_after(rng.choice([0, 0.0001, 0.001, 1])) as scope:
                    received.extend(await cli.receive(rng.choice([100, 5000, 65536])))
                cancelled["receive"] += scope.cancelled_caught

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            tg.start_soon(receiver)
        assert bytes(received) == data
        assert cancelled["send"] > 0 and cancelled["receive"] > 0, cancelled
        # Usable afterwards, both ways.
        await cli.send(b"ping")
        assert await receive_exactly(srv, 4) == b"ping"
        await srv.send(b"pong")
        assert await receive_exactly(cli, 4) == b"pong"
        await srv.aclose()
        await cli.aclose()


async def test_output_of_a_cancelled_send_goes_out_with_receive_and_aclose(backend: str) -> None:
    with anyio.fail_after(TIMEOUT):
        srv, cli = await pair(103, backend, 4096, 4096)
        data = pattern(300_000, seed=6)
        with anyio.move_on_after(SETTLE):
            await srv.send(data)  # the client does not read yet: cancelled while waiting
        assert srv._queued() > 0
        got = bytearray()

        async def client_reads() -> None:
            got.extend(await receive_all(cli))

        async with anyio.create_task_group() as tg:
            tg.start_soon(client_reads)
            await srv.aclose()  # writes the rest first, then closes
        assert bytes(got) == data
        await cli.aclose()


async def test_connect_timeout_leaves_nothing_behind(sockdir: str, backend: str) -> None:
    with pytest.raises(TimeoutError):
        with anyio.fail_after(SETTLE):
            await va.connect(0, 104, backend=backend)
    assert os.listdir(sockdir) == []


async def test_cancelled_serve_removes_its_socket(sockdir: str, backend: str) -> None:
    with anyio.move_on_after(SETTLE):
        await va.serve(0, 105, backend=backend)
    assert not sock_path(sockdir, 0, 0, 105).exists()


async def test_listener_serves_clients_one_after_another() -> None:
    with anyio.fail_after(TIMEOUT):
        listener = await va.create_listener(0, 106)
        async with listener, anyio.create_task_group() as tg:

            async def greet(stream: Any) -> None:
                name = await stream.receive()
                await stream.send(b"hello " + name)

            tg.start_soon(listener.serve, greet)
            for name in (b"alice", b"bob"):
                async with await va.connect(0, 106) as stream:
                    await stream.send(name)
                    assert await receive_all(stream) == b"hello " + name
            tg.cancel_scope.cancel()


# ------------------------------------------------------------------ notification cost


@pytest.mark.spec("NOTIFY-UNASKED-QUIET")
@pytest.mark.serial  # timing or CPU share: run on a quiet machine
async def test_one_wake_up_per_message_and_no_spinning(streams: tuple[Any, Any]) -> None:
    """A ping-pong of 200 messages: each side's wait() runs about once per message it
    receives, and a receive with nothing coming uses no CPU."""
    srv, cli = streams
    counts = {"srv": 0, "cli": 0}

    def counting(name: str, wait: Callable[[], int]) -> Callable[[], int]:
        def counted() -> int:
            counts[name] += 1
            return wait()

        return counted

    srv._ep_wait = counting("srv", srv._ep_wait)
    cli._ep_wait = counting("cli", cli._ep_wait)
    with anyio.fail_after(TIMEOUT):

        async def echo() -> None:
            for _ in range(200):
                await srv.send(await receive_exactly(srv, 64))

        async with anyio.create_task_group() as tg:
            tg.start_soon(echo)
            for i in range(200):
                msg = bytes([i % 256]) * 64
                await cli.send(msg)
                assert await receive_exactly(cli, 64) == msg
    assert counts["srv"] <= 205 and counts["cli"] <= 205, counts
    before = resource.getrusage(resource.RUSAGE_SELF)
    with anyio.move_on_after(0.5):
        await cli.receive()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert cpu < 0.1, f"{cpu:.3f} s of CPU while waiting 0.5 s"


# --------------------------------------------------------------------- a peer that dies

_DYING_PEER = """
import os, signal, sys
import vchan
sys.path.insert(0, {repo!r})
from tests.conftest import pattern
with vchan.client(0, {port}, timeout=10) as ch:
    ch.write(pattern({size}, seed=8))
    {after}
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _dying_peer(port: int, size: int, after: str = "pass") -> subprocess.Popen[bytes]:
    env = dict(os.environ, VCHAN_DOMAIN="0", PYTHONPATH=str(REPO / "src"))
    env.pop("VCHAN_BACKEND", None)
    code = textwrap.dedent(_DYING_PEER).format(repo=str(REPO), port=port, size=size, after=after)
    return subprocess.Popen([sys.executable, "-c", code], env=env)


@pytest.mark.spec("READ-DATA-BEFORE-GONE")
async def test_peer_killed_after_sending_everything_arrives_then_end(backend: str) -> None:
    proc = _dying_peer(107, 300_000)
    try:
        with anyio.fail_after(TIMEOUT):
            async with await va.serve(0, 107, backend=backend) as stream:
                assert await receive_all(stream) == pattern(300_000, seed=8)
                with pytest.raises(anyio.BrokenResourceError):
                    for _ in range(100):
                        await stream.send(b"y" * 1000)
    finally:
        assert proc.wait(TIMEOUT) == -signal.SIGKILL


async def test_peer_killed_while_we_wait_to_send(backend: str) -> None:
    """The peer reads nothing and is killed while our send waits for room."""
    proc = _dying_peer(108, 10, after="import time; time.sleep(%s)" % (SETTLE * 2))
    try:
        with anyio.fail_after(TIMEOUT):
            async with await va.serve(0, 108, 4096, 4096, backend=backend) as stream:
                with pytest.raises(anyio.BrokenResourceError):
                    await stream.send(b"z" * MIB)  # cannot fit: waits until the peer dies
                assert await receive_all(stream) == pattern(10, seed=8)
    finally:
        proc.wait(TIMEOUT)


# ------------------------------------------------------- trio and asyncio, two processes

_PEER = """
import sys
import anyio
import vchan.anyio
sys.path.insert(0, {repo!r})
from tests.conftest import pattern

MIB = 1 << 20

async def exchange(stream):
    mine, theirs = pattern(MIB, seed={seed}), pattern(MIB, seed={other})
    got = bytearray()

    async def receiving():
        while len(got) < MIB:
            got.extend(await stream.receive(MIB - len(got)))  # not the "bye" after it

    async with anyio.create_task_group() as tg:
        tg.start_soon(receiving)
        for i in range(0, MIB, 7000):
            await stream.send(mine[i:i + 7000])
    assert bytes(got) == theirs, "data differs"
    print("{name}: verified", len(got), flush=True)

async def main():
    with anyio.fail_after({timeout}):
        if {serve}:
            stream = await vchan.anyio.serve(1, 109)
        else:
            stream = await vchan.anyio.connect(0, 109)
        async with stream:
            await exchange(stream)
            if {serve}:
                await stream.send(b"bye")
            else:
                assert await stream.receive() == b"bye"

anyio.run(main, backend={name!r})
"""


@NO_TRIO
def test_trio_process_and_asyncio_process_exchange_verified_data(sockdir: str) -> None:
    procs = []
    for name, domain, serve, seed, other in (
        ("trio", 0, True, 10, 11),
        ("asyncio", 1, False, 11, 10),
    ):
        env = dict(os.environ, VCHAN_DOMAIN=str(domain), PYTHONPATH=str(REPO / "src"))
        env.pop("VCHAN_BACKEND", None)
        code = _PEER.format(
            repo=str(REPO), seed=seed, other=other, serve=serve, name=name, timeout=TIMEOUT
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=2 * TIMEOUT)
            outputs.append((proc.returncode, out.decode(), err.decode()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [o[0] for o in outputs] == [0, 0], outputs
    assert outputs[0][1].strip() == f"trio: verified {MIB}"
    assert outputs[1][1].strip() == f"asyncio: verified {MIB}"
