"""The projector service (``domed-projector``): queryable job state, rebuilt from the stream.

Its parts, each in its own module:

- ``projection``: the events folded into job states in memory (pure; ``fold.apply``);
- ``store``: SQLite, job rows and the stream position committed together;
- ``follow``: reads ``DOMED_JOBS`` in order from the checkpoint and commits;
- ``mirror``: the KV bucket ``domed-jobs``, following the store's commits;
- ``queries``: the ``domed.jobs.get/list/events`` endpoints;
- ``rebuild``: what ``--rebuild`` reports on stdout (JSON lines).

This module connects them and runs them until ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import TextIO

from contracts import subjects
from services.projector.follow import Follower
from services.projector.mirror import KvMirror, KvRepair
from services.projector.projection import Projection
from services.projector.queries import Queries
from services.projector.rebuild import report_rebuild
from services.projector.store import Store
from services.runtime import connection, provisioning
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
        projection = Projection(store.position()[0], store.get)
        repair = KvRepair(nc, kv, store, timeout_s=settings.request_timeout_s)
        mirror = KvMirror(kv, store, projection, repair)
        follower = Follower(nc, js, store, projection, mirror, reconnected)
        queries = Queries(nc, js, store, projection, timeout_s=settings.request_timeout_s)
        await follower.read_stream_bounds()
        service = await serve(
            nc,
            subjects.SERVICE_PROJECTOR,
            VERSION,
            "job state projected from the DOMED_JOBS stream",
            queries.endpoints(),
        )
        log.info(
            "projector ready at seq %d, NATS %s",
            projection.committed_seq,
            redact_url(settings.nats_url),
        )
        if ready is not None:
            ready.set()
        reporter = (
            asyncio.create_task(report_rebuild(follower, mirror, report_to))
            if settings.rebuild
            else None
        )
        await follower.follow(stop)
        if reporter is not None:
            reporter.cancel()
        await service.stop()
    finally:
        await connection.disconnect(nc)
        store.close()
