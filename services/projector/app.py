"""The projector service (``domed-projector``): queryable job state, rebuilt from the stream.

Its parts, each in its own module:

- ``projection``: the events folded into job states in memory (pure; ``fold.apply``);
- ``store``: SQLite, job rows and the stream position committed together;
- ``follow``: reads ``DOMED_JOBS`` in order from the checkpoint and commits;
- ``mirror``: the KV bucket ``domed-jobs``, following the store's commits;
- ``queries``: the ``domed.jobs.get/list/events`` endpoints;
- ``rebuild``: what ``--rebuild`` reports on stdout (JSON lines);
- ``retention`` and ``sweep``: finished jobs older than ``--retain-s`` leave the store
  and the KV;
- ``metrics``: what ``--metrics-addr`` serves.

This module connects them and runs them until ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import TextIO

import nats.js.errors
from nats.js import JetStreamContext

from contracts import subjects
from services.projector.follow import Follower
from services.projector.metrics import ProjectorMetrics
from services.projector.mirror import KvMirror, KvRepair, KvWriter
from services.projector.projection import Projection
from services.projector.queries import Queries
from services.projector.rebuild import report_rebuild
from services.projector.retention import Retention
from services.projector.store import Store
from services.projector.sweep import Sweeper
from services.runtime import connection, failures, metrics, provisioning
from services.runtime.endpoints import serve
from services.runtime.lifecycle import VERSION, ConfigurationError
from services.runtime.ordered import RawClient
from services.runtime.settings import Settings, redact_url

log = logging.getLogger("domed.projector")


def discard_store(path: Path) -> None:
    """Remove the store at ``path`` and its WAL files (a rebuild starts from nothing)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def store_path(settings: Settings) -> Path:
    """Where the projector keeps its store under ``settings.data_dir``."""
    return Path(settings.data_dir) / "projector" / "jobs.sqlite3"


async def read_gauges(js: JetStreamContext, watch: ProjectorMetrics, timeout_s: float) -> None:
    """Read what the scrape's gauges need: the stream's end and the queue's depth; a
    gauge whose read failed is left out of this scrape."""
    watch.stream_last_seq = watch.queue_pending = None
    with contextlib.suppress(*failures.UNAVAILABLE_ERRORS, nats.js.errors.APIError):
        info = await js.stream_info(subjects.STREAM)
        watch.stream_last_seq = info.state.last_seq
    with contextlib.suppress(*failures.UNAVAILABLE_ERRORS, nats.js.errors.APIError):
        consumer = await asyncio.wait_for(
            js.consumer_info(subjects.STREAM, subjects.EXECUTORS_CONSUMER), timeout_s
        )
        watch.queue_pending = consumer.num_pending


async def run_projector(
    settings: Settings,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    report_to: TextIO | None = None,
) -> None:
    """Serve the projector until ``stop``; ``ready`` is set once its endpoints answer.

    With ``settings.rebuild`` the store is discarded first and the rebuild's report is
    written to ``report_to`` (stdout unless given): see ``services.projector.rebuild``.
    """
    path = store_path(settings)
    try:
        if settings.rebuild:
            discard_store(path)
        store = Store(path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigurationError(f"cannot use the projection store {path}: {exc}") from exc
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    # Only the projector reads a stream raw (services.runtime.ordered).
    nc = RawClient()
    await connection.connect(
        settings,
        settings.name or "domed-projector",
        service="projector",
        client=nc,
        reconnected_cb=on_reconnect,
    )
    try:
        js = nc.jetstream(timeout=settings.request_timeout_s)
        await provisioning.ensure_stream(js, settings.stream)
        kv = await provisioning.ensure_kv(js, subjects.KV_JOBS, settings.stream, direct=True)
        retention = Retention(
            settings.stream.max_age_s if settings.retain_s is None else settings.retain_s
        )
        ttl_allowed = await provisioning.allow_msg_ttl(js, subjects.KV_JOBS)
        writer = KvWriter(js, retention, ttl_allowed)
        start_seq = store.position()[0]
        projection = Projection(start_seq, store.get)
        repair = KvRepair(nc, kv, writer, store, timeout_s=settings.request_timeout_s)
        mirror = KvMirror(writer, store, projection, repair)
        follower = Follower(nc, js, store, projection, mirror, reconnected)
        follower.retention = retention
        queries = Queries(nc, js, store, projection, timeout_s=settings.request_timeout_s)
        sweeper = Sweeper(store, retention, nc, writer, timeout_s=settings.request_timeout_s)
        await follower.read_stream_bounds()
        watch: ProjectorMetrics | None = None
        if settings.metrics_addr:
            watch = ProjectorMetrics(projection)
            watch.count_from = start_seq if start_seq > 0 else projection.catch_up_to
            projection.observe = watch.observe
        service = await serve(
            nc,
            subjects.SERVICE_PROJECTOR,
            VERSION,
            "job state projected from the DOMED_JOBS stream",
            queries.endpoints(),
        )

        async def refresh() -> None:
            assert watch is not None
            await read_gauges(js, watch, settings.request_timeout_s)

        async with metrics.serving(
            settings.metrics_addr, watch.registry if watch else None, refresh
        ):
            log.info(
                "projector ready at seq %d, retaining finished jobs %s, NATS %s",
                projection.committed_seq,
                f"{retention.retain_s:g}s" if not retention.keeps_everything else "forever",
                redact_url(settings.nats_url),
            )
            if ready is not None:
                ready.set()
            async with asyncio.TaskGroup() as tasks:
                if settings.rebuild:
                    reporter = tasks.create_task(report_rebuild(follower, mirror, report_to))
                if not retention.keeps_everything:
                    sweeping = tasks.create_task(sweeper.run(stop))
                await follower.follow(stop)
                if settings.rebuild:
                    reporter.cancel()
                if not retention.keeps_everything:
                    await sweeping
        await service.stop()
    finally:
        await connection.disconnect(nc)
        store.close()
