"""services.runtime.directget against a real server: a KV bucket read back a page at a
time without a consumer, and a bucket that does not allow it said so."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from services.runtime import directget, provisioning
from services.runtime.natsserver import NatsServer
from services.runtime.settings import StreamSettings

_names = itertools.count(1)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def bucket(nc: Client) -> AsyncIterator[str]:
    """A bucket name of the test's own; the bucket, if the test made it, is deleted after."""
    name = f"dg-{next(_names)}"
    yield name
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_key_value(name)


async def read_all(nc: Client, bucket: str, batch: int) -> list[list[directget.Stored]]:
    return [
        page
        async for page in directget.read_batches(nc, f"KV_{bucket}", f"$KV.{bucket}.>", batch=batch)
    ]


async def test_a_bucket_is_read_back_whole_in_pages_in_stream_order(
    nc: Client, bucket: str
) -> None:
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=bucket, direct=True))
    for i in range(23):
        await kv.put(f"k{i}", f"v{i}".encode())
    await kv.put("k3", b"again")  # history 1: only this value of k3 is left
    await kv.delete("k5")
    pages = await read_all(nc, bucket, batch=10)
    assert [len(p) for p in pages] == [10, 10, 3]
    got = [m for p in pages for m in p]
    assert [m.seq for m in got] == sorted(m.seq for m in got)
    values = {m.subject.removeprefix(f"$KV.{bucket}."): m for m in got}
    assert len(values) == 23
    assert values["k3"].data == b"again" and not values["k3"].removed
    assert values["k5"].removed
    assert all(values[f"k{i}"].data == f"v{i}".encode() for i in range(23) if i not in (3, 5))


async def test_an_empty_bucket_reads_as_nothing(nc: Client, bucket: str) -> None:
    await nc.jetstream().create_key_value(KeyValueConfig(bucket=bucket, direct=True))
    assert await read_all(nc, bucket, batch=10) == []


async def test_a_bucket_without_direct_get_says_so_until_opened_for_it(
    nc: Client, bucket: str
) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket))
    await kv.put("k", b"v")
    with pytest.raises(directget.DirectGetError, match="503"):
        await read_all(nc, bucket, batch=10)
    # The bucket was made before domed read it this way: opening it for that allows it.
    await provisioning.ensure_kv(js, bucket, StreamSettings(), direct=True)
    pages = await read_all(nc, bucket, batch=10)
    assert [(m.subject, m.data) for p in pages for m in p] == [(f"$KV.{bucket}.k", b"v")]
