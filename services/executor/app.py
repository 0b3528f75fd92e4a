"""The executor service (``domed-executor``): takes queued jobs and runs them.

Work comes from one durable pull consumer (``executors``) on ``job.*.queued`` that
every executor shares, so each job is delivered to one executor at a time. While
a job runs its executor marks the delivery in progress and renews the job's hold
(``holds.py``), one heartbeat each; if the executor dies the delivery times out after
``ack_wait`` and another executor picks the job up, sees a ``started`` without a
``terminal`` and, once the hold has lapsed, either ends it ``lost`` or, for an
idempotent tool, runs the next attempt. A delivery that finds the hold renewed
(a stale one, handed back by an executor that was paused) leaves the job alone.

Authority over a job's events comes from compare-and-set on the job's subjects:
``started`` is published only if the job's newest event is still the one we read
(so a racing cancel or another executor wins), and the tool runs only once it is
stored; a terminal written without a run is compare-and-set on the newest event
read, and every other terminal only if the job has none yet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import replace

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts import subjects
from services.catalogue.loader import Tool, load_catalogue
from services.executor import cancels, cgroups, records, recovery, secrets, worker
from services.executor.backend import LocalBackend
from services.executor.cgroups import Hierarchy
from services.executor.context import ExecutorContext
from services.executor.holds import Holds
from services.executor.jobuser import JobUser, check_can_switch, clear_ambient_caps
from services.executor.metrics import ExecutorMetrics
from services.runtime import connection, metrics, provisioning, sealing
from services.runtime.endpoints import serve
from services.runtime.hardening import without_credentials
from services.runtime.lifecycle import VERSION, ConfigurationError
from services.runtime.settings import Settings, redact_url

log = logging.getLogger("domed.executor")


async def shared_consumer_ack_wait(js: JetStreamContext, settings: Settings) -> float:
    """The ``executors`` consumer's ack_wait. The consumer is shared by every executor:
    look it up, create it only if it is missing (provisioning does that as admin), and
    never change it: a create on an existing durable would update it for all executors."""
    want = provisioning.executors_consumer_config(settings.stream)
    try:
        have = (await js.consumer_info(subjects.STREAM, subjects.EXECUTORS_CONSUMER)).config
    except nats.js.errors.NotFoundError:
        have = await provisioning.create_executors_consumer(js, settings.stream)
    if have.deliver_subject or have.ack_policy != want.ack_policy:
        raise provisioning.ProvisioningError(
            f"consumer {subjects.EXECUTORS_CONSUMER} on {subjects.STREAM} is not a pull "
            f"consumer with explicit acks (deliver_subject={have.deliver_subject!r}, "
            f"ack_policy={have.ack_policy}); executors cannot share it. Recreate it as admin: "
            "deploy/provision.sh"
        )
    differ = provisioning.executors_consumer_differences(have, want)
    if differ:
        log.warning(
            "consumer %s exists with other settings than this executor's "
            "(setting: consumer's, this executor's): %s; domed does not change a shared "
            "consumer, so this executor uses it as it is (re-provision it as admin to change it)",
            subjects.EXECUTORS_CONSUMER,
            ", ".join(f"{k}: {h} != {w}" for k, (h, w) in differ.items()),
        )
    return have.ack_wait if have.ack_wait else settings.stream.ack_wait_s


async def executor_context(
    settings: Settings,
    tools: Mapping[str, Tool],
    nc: Client,
    js: JetStreamContext,
    environ: dict[str, str],
    job_user: JobUser | None = None,
    cgroups: Hierarchy | None = None,
) -> ExecutorContext:
    """The executor's shared parts, with its buckets opened (created if missing)."""
    ack_wait_s = settings.stream.ack_wait_s
    secrets = await provisioning.ensure_kv(js, subjects.KV_SECRETS, settings.stream)
    slots_kv = await provisioning.ensure_kv(
        js, subjects.KV_SLOTS, settings.stream, ttl_s=max(10.0, ack_wait_s * 2)
    )
    holds_kv = await provisioning.ensure_kv(
        js, subjects.KV_HOLDS, settings.stream, ttl_s=ack_wait_s
    )
    lease_s = (await holds_kv.status()).ttl or ack_wait_s  # an existing bucket's own
    artifacts = None
    if any(tool.manifest.artifacts for tool in tools.values()):
        artifacts = await provisioning.ensure_object_store(
            js, subjects.OBJ_ARTIFACTS, settings.stream
        )
    return ExecutorContext(
        settings=settings,
        tools=tools,
        nc=nc,
        js=js,
        secrets=secrets,
        slots_kv=slots_kv,
        holds=Holds(holds_kv, lease_s),
        backend=LocalBackend(job_user, cgroups, settings.slots),
        name=settings.name or f"{socket.gethostname()}-{os.getpid()}",
        records=records.records_dir(settings.data_dir, environ),
        environ=environ,
        heartbeat_s=max(0.2, min(ack_wait_s, lease_s) / 3),
        job_user=job_user,
        artifacts=artifacts,
    )


def refuse_what_cannot_run(
    settings: Settings, tools: Mapping[str, Tool], job_user: JobUser | None
) -> Hierarchy | None:
    """Stop at the start, not at the first job, when jobs could not run as configured: the
    job user cannot be switched to, the secrets key is unusable, or the limits mode asked
    for is not available. Returns where jobs' cgroups go (None: rlimits only)."""
    if job_user is None and os.geteuid() == 0:
        log.warning(
            "jobs run as root: they can read every file and every process's environment "
            "and memory, this executor's included; run them as another user with --job-user"
        )
    if job_user is not None:
        check_can_switch(job_user)
        if not clear_ambient_caps():
            raise ConfigurationError(
                "--job-user: cannot clear this executor's ambient capabilities, which "
                "every job would inherit"
            )
    if any(tool.manifest.secrets for tool in tools.values()):
        try:
            secrets.load_key(settings)
        except sealing.SealingError as exc:
            raise ConfigurationError(f"the secrets key: {exc}") from None
    try:
        hierarchy, passed_over = cgroups.find(settings.limits)
    except cgroups.CgroupError as exc:
        raise ConfigurationError(str(exc)) from None
    if hierarchy is None and settings.limits == "auto":
        log.warning(
            "no usable cgroup (%s): jobs' limits are per-process rlimits, and a job stopped "
            "by its memory or pids limit cannot be told from one that failed",
            "; ".join(passed_over),
        )
    return hierarchy


async def run_executor(
    settings: Settings,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    environ: dict[str, str] | None = None,
    job_user: JobUser | None = None,
) -> None:
    """Run an executor until ``stop`` is set. ``environ`` is what jobs' ``env_allowlist``
    passes through (default: this process's environment at the call), never a NATS
    credential (``hardening.CREDENTIAL_VARS``). With ``job_user`` every job runs as that
    user; ``jobuser.JobUserError`` if this process cannot switch to it."""
    tools = load_catalogue(settings.ssot)
    hierarchy = refuse_what_cannot_run(settings, tools, job_user)
    environ = without_credentials(os.environ if environ is None else environ)
    ctx: ExecutorContext | None = None
    watching: set[asyncio.Task[None]] = set()

    async def on_disconnect() -> None:
        if ctx is not None:
            ctx.cancel_watch.lost()

    async def on_reconnect() -> None:
        if ctx is not None:
            task = asyncio.create_task(cancels.watch_cancels(ctx, reconnected=True))
            watching.add(task)
            task.add_done_callback(watching.discard)

    # No buffering while reconnecting: a log line held back during an outage could land
    # after another executor declared the job lost. A publish that fails is retried by
    # the pipeline with a compare-and-set that checks we still own the job.
    nc = await connection.connect(
        settings,
        settings.name or "domed-executor",
        service="executor",
        pending_size=0,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    try:
        js = nc.jetstream(timeout=settings.request_timeout_s)
        await provisioning.ensure_stream(js, settings.stream)
        # Heartbeats (in-progress acks) and slot leases follow the consumer's real
        # ack_wait, not this executor's --ack-wait.
        ack_wait_s = await shared_consumer_ack_wait(js, settings)
        settings = replace(settings, stream=replace(settings.stream, ack_wait_s=ack_wait_s))
        ctx = await executor_context(settings, tools, nc, js, environ, job_user, hierarchy)
        await recovery.prepare(ctx)
        service = await serve(
            nc, subjects.SERVICE_EXECUTOR, VERSION, "runs queued jobs as local processes", []
        )
        async with metrics.serving(settings.metrics_addr, ExecutorMetrics(ctx).registry):
            log.info(
                "executor %s ready: %d slots, ack_wait %gs, limits by %s, NATS %s",
                ctx.name,
                settings.slots,
                ack_wait_s,
                hierarchy.mode if hierarchy else "rlimit",
                redact_url(settings.nats_url),
            )
            if ready is not None:
                ready.set()
            try:
                await worker.run(ctx, stop)
            finally:
                ctx.backend.close()
        for task in watching:
            task.cancel()
        await service.stop()
    finally:
        await connection.disconnect(nc)
