"""$SRV.STATS (what `domed status` shows) times a concurrent endpoint's whole answer, not
just the hand-off of the request to the task that answers it."""

from __future__ import annotations

import asyncio
import json

import msgspec

from services.runtime.endpoints import Endpoint, serve
from tests.support import Domed

PAUSE_S = 0.05


class Ping(msgspec.Struct):
    pass


async def test_a_concurrent_endpoints_average_time_is_the_time_to_answer(domed: Domed) -> None:
    async def slow(_: Ping) -> dict[str, bool]:
        await asyncio.sleep(PAUSE_S)  # the work a real handler awaits (the bus)
        return {"ok": True}

    service = await serve(
        domed.nc,
        "domed-test-stats",
        "0.0.1",
        "a slow concurrent endpoint",
        [Endpoint("slow", "domed.test.slow", Ping, slow, concurrent=True)],
    )
    try:
        for _ in range(3):
            await domed.nc.request("domed.test.slow", b"{}", timeout=5)
        reply = await domed.nc.request("$SRV.STATS.domed-test-stats", b"", timeout=5)
        (stats,) = json.loads(reply.data)["endpoints"]
        assert stats["num_requests"] == 3
        assert stats["average_processing_time"] >= PAUSE_S * 1e9, stats
    finally:
        await service.stop()
