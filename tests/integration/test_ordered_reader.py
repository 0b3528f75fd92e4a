"""services.runtime.ordered against a real server: a stream read in order, raw, across
flow control and a lost consumer, while the connection's other subscriptions go on."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from services.runtime import connection
from services.runtime.natsserver import NatsServer
from services.runtime.ordered import OrderedReader, RawClient
from services.runtime.settings import Settings

_names = itertools.count(1)


class Collected:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, int, bytes]] = []
        self.changed = asyncio.Event()

    def __call__(self, subject: bytes, seq: int, data: bytes) -> None:
        self.got.append((subject, seq, data))
        self.changed.set()

    async def until(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.got) < n:
                self.changed.clear()
                await self.changed.wait()


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def stream(nats_server: NatsServer) -> AsyncIterator[tuple[RawClient, str, str]]:
    """A client and a stream of the test's own: (client, stream name, subject prefix)."""
    n = next(_names)
    name, prefix = f"ORDERED_{n}", f"ordered.{n}"
    nc = RawClient()
    await nc.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"]))
    try:
        yield nc, name, prefix
    finally:
        await js.delete_stream(name)
        await nc.close()


async def publish(nc: RawClient, prefix: str, first: int, count: int, size: int = 0) -> None:
    js = nc.jetstream()
    acks = [
        js.publish(
            f"{prefix}.m{i}",
            f"{i}:".encode() + b"x" * size,
            headers={"Nats-Msg-Id": f"m{i}"},
        )
        for i in range(first, first + count)
    ]
    for chunk in range(0, len(acks), 500):
        await asyncio.gather(*acks[chunk : chunk + 500])


def assert_in_order(got: list[tuple[bytes, int, bytes]], prefix: str, first: int, n: int) -> None:
    assert [seq for _, seq, _ in got] == list(range(first, first + n))
    for subject, seq, data in got:
        assert subject == f"{prefix}.m{seq}".encode()
        assert data.startswith(f"{seq}:".encode())


async def test_backlog_then_live_messages_arrive_once_in_stream_order(
    stream: tuple[RawClient, str, str],
) -> None:
    nc, name, prefix = stream
    await publish(nc, prefix, 1, 300)
    got = Collected()
    reader = OrderedReader(nc, nc.jetstream(), name, f"{prefix}.>", got)
    await reader.start(101)
    # The same connection's plain subscriptions still go through nats-py.
    plain = await nc.subscribe(f"{prefix}.>")
    try:
        await publish(nc, prefix, 301, 200)
        await got.until(400)
        assert_in_order(got.got, prefix, 101, 400)
        assert reader.next_seq == 501
        assert not reader.needs_restart()
        assert (await plain.next_msg(timeout=2)).subject == f"{prefix}.m301"
    finally:
        await reader.close()
    assert nc._raw_readers == {}


async def test_flow_control_is_answered_so_a_large_backlog_keeps_coming(
    stream: tuple[RawClient, str, str],
) -> None:
    nc, name, prefix = stream
    await publish(nc, prefix, 1, 2500, size=8192)  # 20 MB: the server asks for flow control
    got = Collected()
    # Heartbeats too far apart to rescue a stalled consumer within the test's time limit.
    reader = OrderedReader(nc, nc.jetstream(), name, f"{prefix}.>", got, heartbeat_s=30)
    await reader.start(1)
    try:
        await got.until(2500, timeout=10)
    finally:
        await reader.close()
    assert_in_order(got.got, prefix, 1, 2500)
    assert reader.flow_controls > 0


async def test_a_lost_consumer_is_noticed_and_reading_goes_on_from_the_next_message(
    stream: tuple[RawClient, str, str],
) -> None:
    nc, name, prefix = stream
    js = nc.jetstream()
    await publish(nc, prefix, 1, 100)
    got = Collected()
    reader = OrderedReader(nc, js, name, f"{prefix}.>", got, heartbeat_s=0.2)
    await reader.start(1)
    try:
        await got.until(100)
        assert reader.consumer is not None
        await js.delete_consumer(name, reader.consumer)
        await publish(nc, prefix, 101, 50)
        await until(reader.needs_restart)  # no deliveries and no heartbeats any more
        assert len(got.got) == 100
        await reader.start()
        await got.until(150)
    finally:
        await reader.close()
    assert_in_order(got.got, prefix, 1, 150)
    assert reader.restarts == 1


async def test_a_handler_that_fails_leaves_its_message_to_be_read_again(
    stream: tuple[RawClient, str, str],
) -> None:
    nc, name, prefix = stream
    await publish(nc, prefix, 1, 20)
    got = Collected()
    failures = 0

    def flaky(subject: bytes, seq: int, data: bytes) -> None:
        nonlocal failures
        if seq == 7 and failures == 0:
            failures += 1
            raise RuntimeError("a bug in the handler")
        got(subject, seq, data)

    reader = OrderedReader(nc, nc.jetstream(), name, f"{prefix}.>", flaky)
    await reader.start(1)
    try:
        await until(reader.needs_restart)
        assert reader.next_seq == 7 and len(got.got) == 6
        await reader.start()
        await got.until(20)
    finally:
        await reader.close()
    assert_in_order(got.got, prefix, 1, 20)


async def test_heartbeats_between_messages_keep_the_reading_alive(
    stream: tuple[RawClient, str, str],
) -> None:
    nc, name, prefix = stream
    await publish(nc, prefix, 1, 10)
    got = Collected()
    reader = OrderedReader(nc, nc.jetstream(), name, f"{prefix}.>", got, heartbeat_s=0.1)
    await reader.start(1)
    try:
        await got.until(10)
        await until(lambda: reader._controls >= 3)  # idle: heartbeats came, and were read
        assert not reader.needs_restart()
        await publish(nc, prefix, 11, 10)
        await got.until(20)
    finally:
        await reader.close()
    assert_in_order(got.got, prefix, 1, 20)


async def test_a_service_connects_with_nats_pys_own_client_unless_it_asks_for_the_raw_one(
    nats_server: NatsServer,
) -> None:
    """Only the projector reads a stream raw; every other connection is nats-py's as it is."""
    settings = Settings(nats_url=nats_server.url)
    plain = await connection.connect(settings, "domed-router", service="router")
    raw = RawClient()
    connected = await connection.connect(
        settings, "domed-projector", service="projector", client=raw
    )
    try:
        assert type(plain) is Client and connected is raw and raw.is_connected
    finally:
        await connection.disconnect(plain)
        await connection.disconnect(raw)
