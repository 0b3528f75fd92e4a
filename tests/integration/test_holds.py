"""services.executor.holds against a real KV bucket: when a job's hold counts as lapsed."""

from __future__ import annotations

import asyncio

from nats.js.api import KeyValueConfig, StorageType

from services.executor.holds import Holds
from tests.support import Domed

LEASE = 1.0


async def holds(domed: Domed, name: str) -> Holds:
    kv = await domed.nc.jetstream().create_key_value(
        KeyValueConfig(bucket=name, ttl=LEASE, history=1, storage=StorageType.FILE)
    )
    return Holds(kv, LEASE)


async def test_a_hold_never_written_within_the_window_has_lapsed(domed: Domed) -> None:
    h = await holds(domed, "holds-never")
    assert await h.lapsed("J", within_s=0.3)


async def test_a_hold_written_during_the_window_belongs_to_a_live_attempt(domed: Domed) -> None:
    h = await holds(domed, "holds-late")

    async def first_heartbeat() -> None:
        await asyncio.sleep(0.2)  # the attempt's first write comes a moment later
        await h.claim("J", 1, "a")

    writer = asyncio.create_task(first_heartbeat())
    assert not await h.lapsed("J", within_s=2.0)
    await writer


async def test_a_renewed_hold_is_live_and_an_unrenewed_one_lapses(domed: Domed) -> None:
    h = await holds(domed, "holds-renew")
    await h.claim("J", 1, "a")

    async def renew() -> None:
        await asyncio.sleep(0.2)
        await h.claim("J", 1, "a")

    renewer = asyncio.create_task(renew())
    assert not await h.lapsed("J", within_s=2.0)
    await renewer
    # No more renewals: the key expires one lease after the last write.
    assert await h.lapsed("J", within_s=LEASE + 2.0)
