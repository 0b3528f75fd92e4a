"""The bench's floor (bench/floor.py) does per job what it says domed's guarantees cost:
three stored events (the terminal last, one per job) and the job's state in a KV bucket,
its tool run to success; and leaves nothing behind."""

from __future__ import annotations

import time

import msgspec
import nats

from bench.floor import BUCKET, STREAM, closing, floor_true, floor_world
from contracts.events import Terminal, decode_event
from services.runtime.natsserver import NatsServer


async def test_the_floor_stores_each_jobs_events_and_state(fresh_server: NatsServer) -> None:
    nc = await nats.connect(fresh_server.url)
    try:
        js = nc.jetstream()
        floor = await floor_world(js, slots=2)
        async with closing(floor):
            loop = await floor_true(floor, 5, 2, time.monotonic() + 30)
            assert (loop.done, loop.errors) == (5, [])
            info = await js.stream_info(STREAM)
            assert info.state.messages == 15
            keys = await floor.kv.keys()
            assert len(keys) == 5
            for key in keys:
                entry = await floor.kv.get(key)
                assert entry.value is not None
                state = decode_event(entry.value)
                assert isinstance(state, Terminal) and state.state == "succeeded", state
                assert msgspec.json.decode(entry.value)["exit_code"] == 0
        assert STREAM not in [s.config.name for s in await js.streams_info()]
        assert BUCKET not in [s.config.name.removeprefix("KV_") for s in await js.streams_info()]
    finally:
        await nc.close()
