"""The router service (``domed-router``): the only door through which a job enters.

It validates requests against the manifests, writes ``queued`` and ``cancel``
events (and the ``canceled`` terminal of a job that never started), and never
runs a process. A ``queued`` reply is sent only after the stream acknowledged the
event, so a positive reply always means the job is durably stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import nacl.public
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from ulid import ULID

from contracts import subjects
from contracts.api import (
    CancelReply,
    CancelRequest,
    ExplainReply,
    ExplainRequest,
    SubmitReply,
    SubmitRequest,
    ToolsGetRequest,
    ToolsListReply,
    ToolsListRequest,
    ToolSubmitRequest,
    ToolSummary,
)
from contracts.errors import DomedError, ErrorCode
from contracts.events import (
    Cancel,
    Started,
    Terminal,
    never_ran,
    now_iso,
    queue_timed_out,
)
from services.catalogue.loader import Tool, load_catalogue
from services.router import core, identity
from services.router.deadlines import QueueDeadlines
from services.router.metrics import RouterMetrics
from services.runtime import connection, failures, jobstream, metrics, provisioning, sealing
from services.runtime.endpoints import Call, Endpoint, serve
from services.runtime.lifecycle import VERSION
from services.runtime.settings import Settings, redact_url

log = logging.getLogger("domed.router")

# The secret parameters of a submit that failed after storing them are looked at again
# this long after (a `queued` already sent may still land), then every UNSURE_RECHECK_S
# while JetStream stays away.
UNSURE_SECRETS_AFTER_S = 10.0
UNSURE_RECHECK_S = 5.0


class Router:
    def __init__(
        self,
        settings: Settings,
        tools: Mapping[str, Tool],
        js: JetStreamContext,
        secrets: KeyValue,
        idempotency: KeyValue,
        public_key: nacl.public.PublicKey | None = None,
        account: str | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = RouterMetrics(tools)
        # the router's own NATS account: who submitted is believed only from another one
        # (services/router/identity.py)
        self.account = account
        self.caps = core.Caps(
            body_bytes=settings.max_body_bytes,
            param_bytes=settings.max_param_bytes,
            param_depth=settings.max_param_depth,
            labels_bytes=settings.max_labels_bytes,
            reason_bytes=settings.max_reason_bytes,
        )
        # Secret parameters are stored sealed with the executors' public key.
        self.public_key = public_key or sealing.router_key(
            settings.secrets_public_key, settings.data_dir
        )
        self.tools = tools
        self.js = js
        self.secrets = secrets
        self.idempotency = idempotency
        # job id -> (revision of its secrets, when its submit failed): see settle_secrets
        self.unsure_secrets: dict[str, tuple[int, float]] = {}
        self.deadlines = QueueDeadlines()

    async def submit_tool(self, req: ToolSubmitRequest, call: Call) -> SubmitReply:
        """``domed.jobs.submit.<tool_id>``: the server let the caller publish there."""
        return await self.submit(core.tool_submit(call.subject, req), call)

    async def submit(self, req: SubmitRequest, call: Call | None = None) -> SubmitReply:
        tool = core.find_tool(self.tools, req.tool)
        core.check_sizes(req.params, req.labels, self.caps)
        params = core.checked_params(tool, req.params)
        job_id = str(ULID())
        submitted_by = identity.submitted_by(call.headers, self.account) if call else None
        queued = core.build_queued(tool, req, job_id, params, submitted_by)
        duplicate = False
        try:
            if req.idempotency_key is not None:
                fingerprint = core.fingerprint(tool, params, queued.timeout_s, queued.labels)
                job_id, duplicate = await self._claim_idempotency_key(
                    req.idempotency_key, job_id, fingerprint
                )
                if duplicate:
                    if await jobstream.last_event(self.js, job_id, "queued") is not None:
                        # The first submit stored its job; this one changes nothing (its
                        # secrets above all: that job may have ended and deleted its own).
                        return SubmitReply(job_id=job_id, state="queued", duplicate=True)
                    # The first claimer died before storing the job: store it for both.
                    queued = msgspec.structs.replace(queued, job_id=job_id)
            secret_params = {k: params[k] for k in tool.manifest.secrets if k in params}
            secrets_rev = None
            if secret_params:
                sealed = sealing.seal(self.public_key, jobstream.encode(secret_params))
                secrets_rev = await self.secrets.put(job_id, sealed)
            try:
                ack = await failures.retry_until(
                    self.settings.request_timeout_s,
                    lambda: jobstream.publish_event(
                        self.js, queued, timeout_s=self.settings.request_timeout_s / 2
                    ),
                )
            except BaseException:
                if secrets_rev is not None:  # no executor may ever delete them
                    self.unsure_secrets[queued.job_id] = (secrets_rev, time.monotonic())
                raise
            if not ack.duplicate:  # the stream stored this job now
                self.metrics.job_submitted(tool.id)
            if queued.queue_timeout_s is not None and not ack.duplicate:
                self.deadlines.add(queued.job_id, ack.seq, queued.queue_timeout_s)
        except failures.UNAVAILABLE_ERRORS as exc:
            raise failures.unavailable(exc) from None
        return SubmitReply(job_id=job_id, state="queued", duplicate=duplicate)

    async def expire_queued(self, job_id: str, queued_seq: int, timeout_s: float) -> None:
        """End a job that is still only ``queued`` at its queue deadline: ``timed_out``,
        stored only while its ``queued`` is its newest event (a ``started`` or ``cancel``
        stored first wins)."""
        terminal = queue_timed_out(job_id, timeout_s)
        try:
            await failures.retry_until(
                self.settings.request_timeout_s * 5,
                lambda: jobstream.publish_event(
                    self.js, terminal, headers=jobstream.cas_headers(job_id, queued_seq)
                ),
            )
        except nats.js.errors.APIError as exc:
            if failures.is_wrong_last_sequence(exc):
                return  # it started, was canceled, or an executor ended it first
            raise
        log.info("job %s did not start within its queue timeout of %gs", job_id, timeout_s)
        with contextlib.suppress(*failures.UNAVAILABLE_ERRORS, nats.js.errors.APIError):
            await self.secrets.purge(job_id)

    async def settle_secrets(self, stop: asyncio.Event) -> None:
        """Delete the secret parameters of submits that failed after storing them, once
        sure their job was not stored after all. A job whose ``queued`` did land keeps
        them (its executor deletes them when the job ends). Until ``stop``; what is still
        unsure then stays (this is kept in memory only)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), UNSURE_RECHECK_S)
            for job_id, (rev, since) in list(self.unsure_secrets.items()):
                if time.monotonic() - since < UNSURE_SECRETS_AFTER_S:
                    continue
                try:
                    await self.settle_secret(job_id, rev)
                except failures.UNAVAILABLE_ERRORS as exc:
                    log.debug("cannot settle the secrets of job %s yet (%r)", job_id, exc)
                    break
                del self.unsure_secrets[job_id]

    async def settle_secret(self, job_id: str, rev: int) -> bool:
        """Delete the secrets stored at revision ``rev`` for ``job_id`` unless its job is
        stored, or a later submit stored them again (a retry with the same idempotency
        key, which stores the job too); True if deleted."""
        if await jobstream.last_event(self.js, job_id, "queued") is not None:
            return False
        try:
            await self.secrets.delete(job_id, last=rev)
        except nats.js.errors.APIError as exc:
            if not failures.is_wrong_last_sequence(exc):
                raise
            return False
        log.info("deleted the secret parameters of job %s, which was never stored", job_id)
        return True

    async def _claim_idempotency_key(
        self, key: str, job_id: str, fingerprint: str
    ) -> tuple[str, bool]:
        """The job id that owns ``key``: ours if we claimed it first, else the first claimer's;
        ``idempotency_conflict`` if the first claimer's request was another one.

        Both racers then publish the same ``<job_id>.queued.0`` event, so the job is
        stored once even if the first claimer died before publishing.
        """
        slot = core.idempotency_slot(key)
        try:
            await self.idempotency.create(slot, f"{job_id} {fingerprint}".encode())
            return job_id, False
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await self.idempotency.get(slot)
            assert entry.value is not None
            owner, _, claimed = entry.value.decode().partition(" ")
            if claimed and claimed != fingerprint:
                raise DomedError(
                    ErrorCode.IDEMPOTENCY_CONFLICT,
                    f"idempotency_key was used for another request (job {owner}): a different "
                    "tool, params, timeout_s or labels",
                    {"job_id": owner},
                ) from None
            return owner, True

    async def cancel(self, req: CancelRequest) -> CancelReply:
        core.check_reason(req.reason, self.caps)
        if not subjects.is_job_id(req.job_id):
            raise DomedError(ErrorCode.UNKNOWN_JOB, f"no job has id {req.job_id!r}")
        try:
            return await self._cancel(req)
        except failures.UNAVAILABLE_ERRORS as exc:
            raise failures.unavailable(exc) from None

    async def _cancel(self, req: CancelRequest) -> CancelReply:
        deadline = time.monotonic() + self.settings.request_timeout_s * 2
        while True:
            last = await jobstream.last_event(self.js, req.job_id)
            if last is None:
                raise DomedError(ErrorCode.UNKNOWN_JOB, f"no job has id {req.job_id!r}")
            last_seq, event = last
            if isinstance(event, Terminal):
                raise DomedError(
                    ErrorCode.ALREADY_TERMINAL,
                    f"job {req.job_id} already ended {event.state}",
                    {"state": event.state},
                )
            # Canceled already: a second cancel would store nothing new. Looked up after the
            # job's newest event, so a cancel stored since is newer than last_seq and the
            # compare-and-set below refuses ours.
            if isinstance(event, Cancel) or await jobstream.last_event(
                self.js, req.job_id, "cancel"
            ):
                cancel_seq = last_seq
                break
            cancel = Cancel(job_id=req.job_id, requested_at=now_iso(), reason=req.reason)
            try:
                ack = await jobstream.publish_event(
                    self.js, cancel, last_seq, headers=jobstream.cas_headers(req.job_id, last_seq)
                )
            except nats.js.errors.APIError as exc:
                # Another event landed since we read; read again (bounded by the deadline).
                if failures.is_wrong_last_sequence(exc) and time.monotonic() < deadline:
                    continue
                raise
            cancel_seq = ack.seq
            break
        started = await jobstream.last_event(self.js, req.job_id, "started")
        if started is not None:
            return CancelReply(job_id=req.job_id, state="running")
        terminal = never_ran(job_id=req.job_id, state="canceled", finished_at=now_iso(), attempt=0)
        try:
            await jobstream.publish_event(
                self.js, terminal, headers=jobstream.cas_headers(req.job_id, cancel_seq)
            )
            # No executor will run it, so none will delete its secret parameters.
            with contextlib.suppress(*failures.UNAVAILABLE_ERRORS, nats.js.errors.APIError):
                await self.secrets.purge(req.job_id)
            return CancelReply(job_id=req.job_id, state="canceled")
        except nats.js.errors.APIError as exc:
            if not failures.is_wrong_last_sequence(exc):
                raise
        # An executor started the job (or ended it) between our reads: it acts on the cancel.
        now = await jobstream.last_event(self.js, req.job_id)
        if now is not None and isinstance(now[1], Terminal):
            return CancelReply(job_id=req.job_id, state=now[1].state)
        if now is not None and isinstance(now[1], Started):
            return CancelReply(job_id=req.job_id, state="running")
        return CancelReply(job_id=req.job_id, state="running")

    async def tools_list(self, _: ToolsListRequest) -> ToolsListReply:
        tools = [
            ToolSummary(t.id, t.manifest.version, t.manifest.description)
            for t in self.tools.values()
        ]
        return ToolsListReply(tools=sorted(tools, key=lambda t: t.id))

    async def tools_get(self, req: ToolsGetRequest) -> dict[str, Any]:
        tool = core.find_tool(self.tools, req.id)
        return {**tool.manifest.model_dump(mode="json"), "manifest_sha256": tool.sha256}

    async def tools_explain(self, req: ExplainRequest) -> ExplainReply:
        return core.explain(core.find_tool(self.tools, req.tool), req.params, self.caps)

    def endpoints(self) -> list[Endpoint]:
        endpoints = [
            Endpoint(
                "submit-tool",
                subjects.SUBMIT_TOOL,
                ToolSubmitRequest,
                self.submit_tool,
                concurrent=True,
                with_call=True,
            ),
            Endpoint(
                "submit",
                subjects.SUBMIT,
                SubmitRequest,
                self.submit,
                concurrent=True,
                with_call=True,
            ),
            Endpoint("cancel", subjects.CANCEL, CancelRequest, self.cancel, concurrent=True),
            Endpoint("tools-list", subjects.TOOLS_LIST, ToolsListRequest, self.tools_list),
            Endpoint("tools-get", subjects.TOOLS_GET, ToolsGetRequest, self.tools_get),
            Endpoint("tools-explain", subjects.TOOLS_EXPLAIN, ExplainRequest, self.tools_explain),
        ]

        def check_body(size: int) -> None:
            core.check_body(size, self.caps)

        return [dataclasses.replace(ep, check_body=check_body) for ep in endpoints]


async def ensure_secrets_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The ``domed-secrets`` bucket, with the router's TTL: secrets no executor ever
    deleted (a job lost with its executor) expire instead of staying in NATS forever. An
    executor may have created the bucket first, without one: the TTL is set then, if this
    user may (else a provisioning run must)."""
    ttl_s = settings.secrets_ttl_s
    bucket = await provisioning.ensure_kv(js, subjects.KV_SECRETS, settings.stream, ttl_s=ttl_s)
    info = await js.stream_info(f"KV_{subjects.KV_SECRETS}")
    if ttl_s and info.config.max_age != ttl_s:
        try:
            await js.update_stream(dataclasses.replace(info.config, max_age=ttl_s))
        except nats.js.errors.APIError as exc:
            log.warning("cannot set the TTL of bucket %s (%s)", subjects.KV_SECRETS, exc)
    return bucket


async def own_account(nc: Client, timeout_s: float) -> str | None:
    """The NATS account this connection is in, as the server says (``$SYS.REQ.USER.INFO``,
    which the deploy configs let the router publish); None if it will not say, and then
    no job records who submitted it."""
    try:
        reply = await nc.request("$SYS.REQ.USER.INFO", b"", timeout=timeout_s)
    except nats.errors.Error as exc:
        log.warning(
            "cannot learn this router's NATS account (%r): jobs will not record who submitted "
            "them; allow the router to publish $SYS.REQ.USER.INFO",
            exc,
        )
        return None
    account = identity.account_of(reply.data)
    if account is None:
        log.warning("the server did not name this router's account: no job records a submitter")
    return account


async def run_router(
    settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    """Serve until ``stop`` is set. Refuses to start on a catalogue with any problem."""
    tools = load_catalogue(settings.ssot)
    nc: Client = await connection.connect(
        settings, settings.name or "domed-router", service="router"
    )
    try:
        js = nc.jetstream(timeout=settings.request_timeout_s)
        await provisioning.ensure_stream(js, settings.stream)
        secrets = await ensure_secrets_bucket(js, settings)
        idem = await provisioning.ensure_kv(
            js, subjects.KV_IDEMPOTENCY, settings.stream, ttl_s=settings.stream.duplicate_window_s
        )
        account = await own_account(nc, settings.request_timeout_s)
        router = Router(settings, tools, js, secrets, idem, account=account)
        service = await serve(
            nc,
            subjects.SERVICE_ROUTER,
            VERSION,
            "validates job requests against tool manifests",
            router.endpoints(),
        )
        async with metrics.serving(settings.metrics_addr, router.metrics.registry):
            log.info("router ready: %d tools, NATS %s", len(tools), redact_url(settings.nats_url))
            if ready is not None:
                ready.set()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(router.settle_secrets(stop))
                tasks.create_task(router.deadlines.run(stop, router.expire_queued))
                await stop.wait()
        await service.stop()
    finally:
        await connection.disconnect(nc)
