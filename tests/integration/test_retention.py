"""Retention: finished jobs older than --retain-s leave the store and domed-jobs; queued
and running jobs stay; a rebuild reaches the same state."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import msgspec
import nats.js.errors

from contracts import subjects
from contracts.events import timestamp
from services.projector.app import store_path
from services.projector.store import Store
from services.runtime import provisioning
from services.runtime.natsserver import NatsServer
from tests.support import Domed, wait_until

RETAIN_S = 4.0


async def kv_has(d: Domed, job_id: str) -> bool:
    kv = await d.nc.jetstream().key_value(subjects.KV_JOBS)
    try:
        await kv.get(job_id)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return False
    return True


async def kv_last_op(d: Domed, job_id: str) -> str | None:
    """The KV operation of the key's last message (PURGE for a marker); None if the
    bucket holds no message for the key at all."""
    try:
        msg = await d.nc.jetstream().get_last_msg(
            provisioning.kv_stream(subjects.KV_JOBS),
            provisioning.kv_prefix(subjects.KV_JOBS) + job_id,
        )
    except nats.js.errors.NotFoundError:
        return None
    return (msg.headers or {}).get("KV-Operation", "PUT")


async def kv_ttl_header(d: Domed, job_id: str) -> str | None:
    msg = await d.nc.jetstream().get_last_msg(
        provisioning.kv_stream(subjects.KV_JOBS), provisioning.kv_prefix(subjects.KV_JOBS) + job_id
    )
    return (msg.headers or {}).get("Nats-TTL")


async def until_not_in_kv(d: Domed, job_id: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while await kv_has(d, job_id):
        assert time.monotonic() < deadline, f"{job_id} still in {subjects.KV_JOBS}"
        await asyncio.sleep(0.1)


def stored(d: Domed) -> dict[str, dict[str, object]]:
    store = Store(store_path(d.settings))
    try:
        return {s.job_id: msgspec.to_builtins(s) for s in store.all_jobs()}
    finally:
        store.close()


async def until_expired(d: Domed, job_id: str) -> None:
    """Until the job finished more than RETAIN_S ago (by its own finished_at)."""
    finished = timestamp((await d.projected(job_id))["finished_at"])
    await wait_until(lambda: time.time() > finished + RETAIN_S, RETAIN_S + 5, "job expired")


async def test_retention_removes_old_finished_jobs_keeps_live_ones_and_a_rebuild_agrees(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(fresh_server.url, ssot, tmp_path / "data", slots=4) as d:
        # Before retention is on: every job stays, and its KV value has no TTL.
        old, _ = await d.run("demo.echo", {"text": "old"})
        await d.projected(old)
        assert await kv_ttl_header(d, old) is None
        running = await d.submit("test.limited", {"seconds": 60})
        await d.until_kind(running, "started")
        queued = await d.submit("test.limited", {"seconds": 1})  # waits for the one slot
        await wait_until(lambda: queued in stored(d), 10, "queued job projected")
        await until_expired(d, old)
        assert old in stored(d)

        await d.stop_service("projector")
        await d.start_service("projector", retain_s=RETAIN_S)

        # The old job leaves the store, and the KV (its key is purged: it had no TTL).
        await wait_until(lambda: old not in stored(d), 10, "old job removed from the store")
        await until_not_in_kv(d, old)
        reply = await d.request(subjects.JOBS_GET, {"job_id": old})
        assert reply.error is not None and reply.error["code"] == "unknown_job"

        # A job finished now is put with a TTL that ends when it expires, and leaves both.
        recent, _ = await d.run("demo.echo", {"text": "recent"})
        await d.projected(recent)
        ttl = await kv_ttl_header(d, recent)
        assert ttl is not None and 1 <= int(ttl) <= RETAIN_S
        await until_expired(d, recent)
        await wait_until(lambda: recent not in stored(d), 10, "recent job removed in its turn")
        await until_not_in_kv(d, recent)
        # the server removed it by its TTL: no purge marker was written for it
        assert await kv_last_op(d, recent) is None
        assert await kv_last_op(d, old) == "PURGE"  # the old one's marker expires in turn

        # Running and queued jobs stay however old they are.
        live = stored(d)
        assert live[running]["state"] == "running" and live[queued]["state"] == "queued"
        assert await kv_has(d, running) and await kv_has(d, queued)

        # A rebuild from seq 1 replays the old jobs' events, but brings none of them back.
        fresh, _ = await d.run("demo.echo", {"text": "fresh"})
        fresh_until = timestamp((await d.projected(fresh))["finished_at"]) + RETAIN_S
        before = stored(d)
        await d.stop_service("projector")
        await d.start_service("projector", retain_s=RETAIN_S, rebuild=True)
        last_seq = (await d.nc.jetstream().stream_info(subjects.STREAM)).state.last_seq
        position = lambda: Store(store_path(d.settings)).position()[0]  # noqa: E731
        await wait_until(lambda: position() >= last_seq, 20, "rebuild caught up")
        after = stored(d)
        assert old not in after and recent not in after
        if time.time() < fresh_until - 0.5:  # else it expired meanwhile (a slow machine)
            assert set(after) == {running, queued, fresh}
            assert await kv_has(d, fresh)
        assert {running, queued} <= set(after)
        assert after == {job_id: before[job_id] for job_id in after}
        assert not await kv_has(d, old) and not await kv_has(d, recent)


async def test_nothing_in_nats_grows_without_bound(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    """Every bucket has a way out: secrets (and their purge markers) a TTL, artifacts the
    stream's max age (following it when it changes), domed-jobs per-key TTLs."""
    async with Domed.running(fresh_server.url, ssot, tmp_path / "d", max_age_s=3600) as d:
        js = d.nc.jetstream()
        secrets = await js.stream_info(provisioning.kv_stream(subjects.KV_SECRETS))
        assert secrets.config.max_age == d.settings.secrets_ttl_s > 0
        artifacts = await js.stream_info(f"OBJ_{subjects.OBJ_ARTIFACTS}")
        assert artifacts.config.max_age == 3600
        jobs = await js.stream_info(provisioning.kv_stream(subjects.KV_JOBS))
        assert jobs.config.allow_msg_ttl
        await d.stop_service("executor")
        await d.start_service("executor", stream=replace(d.settings.stream, max_age_s=7200))
        artifacts = await js.stream_info(f"OBJ_{subjects.OBJ_ARTIFACTS}")
        assert artifacts.config.max_age == 7200
