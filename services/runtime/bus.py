"""The NATS shell every service shares: connect, provision the stream and buckets,
publish events idempotently, and read a job's events back.

Provisioning never deletes data: a stream that exists with settings domed can
update (limits, duplicate window) is updated; one whose shape differs (subjects,
transform, retention) stops the service with a message that says what differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.client import KV_PRE_TEMPLATE, KV_STREAM_TEMPLATE
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.errors import DomedError, ErrorCode
from contracts.events import Event, decode_event, encode_event
from services.runtime.settings import Settings, StreamSettings

log = logging.getLogger("domed.bus")

T = TypeVar("T")

WRONG_LAST_SEQUENCE = 10071

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
)


class ProvisioningError(Exception):
    """The stream or a bucket exists with settings domed cannot safely reconcile."""


class NotProvisionedError(Exception):
    """The stream, a bucket or the consumer is missing and this user may not create it.

    Unlike :class:`ProvisioningError` this can heal by itself: once the admin has
    provisioned (deploy/provision.sh), a restart succeeds.
    """


PROVISION_HINT = "provision it as admin: deploy/provision.sh"

SERVICE_KINDS = ("router", "executor", "projector")

_NOT_A_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def inbox_prefix(name: str, service: str = "") -> str:
    """The inbox prefix of a service's connection: ``_INBOX_domed-<service>``.

    Each service gets its own, so the deployment (deploy/nats/accounts.conf) can allow a
    service to subscribe to its own replies only; with the shared ``_INBOX`` any service's
    credentials could read the replies to another's requests (the executor reads secret
    parameters back from a KV bucket). ``service`` is the kind (``router``, ``executor``,
    ``projector``), never a custom ``--name``, which may differ per executor. Without it a
    connection named ``domed-<kind>`` gets that kind's prefix, any other name its own.
    The prefix is one subject token: characters other than letters, digits, ``_`` and ``-``
    become ``_``.
    """
    if not service:
        kind = name.removeprefix("domed-")
        service = kind if kind in SERVICE_KINDS and name == f"domed-{kind}" else ""
    label = f"domed-{service}" if service else name
    return "_INBOX_" + _NOT_A_TOKEN.sub("_", label)


async def connect(
    settings: Settings,
    name: str,
    *,
    service: str = "",
    client: Client | None = None,
    **options: Any,
) -> Client:
    """Connect with reconnects forever, so a NATS restart heals by itself.

    ``client`` is the (unconnected) client to connect, nats-py's own unless given: the
    projector passes the one that reads a stream raw (``services.runtime.ordered``).

    ``service`` (or ``settings.service``) is the service kind that names the inbox prefix;
    see :func:`inbox_prefix`.
    """
    kwargs: dict[str, Any] = {
        "servers": [u.strip() for u in settings.nats_url.split(",")],
        "name": name,
        "inbox_prefix": inbox_prefix(name, service or settings.service),
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 2,
        "allow_reconnect": True,
    }
    if settings.nats_creds:
        kwargs["user_credentials"] = settings.nats_creds

    async def _report(exc: Exception) -> None:
        # A permissions violation means this user's allowlist and what domed does disagree
        # (deploy/nats/accounts.conf): an operator must see it. The rest is reconnect noise.
        if "permissions violation" in str(exc).lower():
            log.error("nats refused: %s (%s)", exc, name)
        else:
            log.debug("nats: %r", exc)

    kwargs.setdefault("error_cb", _report)
    kwargs.update(options)
    nc = client if client is not None else Client()
    await nc.connect(**kwargs)
    return nc


async def subscriptions_sent(nc: Client) -> None:
    """Return once the server has every subscription this connection made.

    ``nc.flush()`` alone does not do it in nats-py 2.16: its PING goes straight to the
    socket while new subscriptions wait in a buffer for the flusher task, so its PONG can
    come back before the server has seen them (measured: a request right after a
    projector said "ready" found no responders in about one restart in eight). By the
    time a first round trip ends the flusher has written them, so a second PING follows
    them.
    """
    await nc.flush()
    await nc.flush()


async def disconnect(nc: Client) -> None:
    """Drain the connection (what was published goes out, subscriptions end cleanly), or
    just close it when it cannot drain: a service stopped while NATS is away (drain
    refuses to run on a reconnecting connection) must still exit."""
    try:
        await nc.drain()
    except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError):
        await nc.close()


def stream_config(ss: StreamSettings) -> StreamConfig:
    return StreamConfig(
        name=subjects.STREAM,
        description="domed job events (event-sourced; never rewritten)",
        subjects=[subjects.STREAM_SUBJECTS],
        subject_transform=SubjectTransform(
            src=subjects.STREAM_SUBJECTS, dest="job.{{wildcard(1)}}.{{wildcard(2)}}"
        ),
        republish=RePublish(src="job.>", dest="job.>"),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        num_replicas=ss.replicas,
        max_age=ss.max_age_s,
        max_bytes=ss.max_bytes,
        # The server refuses a duplicate window longer than max_age.
        duplicate_window=min(ss.duplicate_window_s, ss.max_age_s)
        if ss.max_age_s
        else ss.duplicate_window_s,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        allow_direct=True,
    )


def _shape(cfg: StreamConfig) -> dict[str, Any]:
    return {
        "subjects": sorted(cfg.subjects or []),
        "subject_transform": cfg.subject_transform.as_dict() if cfg.subject_transform else None,
        "republish": {"src": cfg.republish.src, "dest": cfg.republish.dest}
        if cfg.republish
        else None,
        "retention": getattr(cfg.retention, "value", cfg.retention),
        "storage": getattr(cfg.storage, "value", cfg.storage),
    }


# What a create or update refused by the user's permissions looks like to nats-py: the server
# drops the request (and reports the violation to the error callback), so it times out.
_REFUSED = (nats.errors.TimeoutError, nats.errors.NoRespondersError, asyncio.TimeoutError)


async def ensure_stream(js: JetStreamContext, ss: StreamSettings) -> None:
    """Create ``DOMED_JOBS`` if missing, else check its shape and update safe limits.

    A user without the right to create or update the stream (every service user of
    deploy/nats) gets :class:`NotProvisionedError` for a missing stream and
    :class:`ProvisioningError` for one whose limits differ from ``ss``.
    """
    want = stream_config(ss)
    try:
        info = await js.stream_info(subjects.STREAM)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(want)
            return
        except _REFUSED:
            raise NotProvisionedError(
                f"stream {subjects.STREAM} is missing and this user may not create it; "
                f"{PROVISION_HINT}"
            ) from None
        except nats.js.errors.BadRequestError as exc:
            if "already in use" not in str(exc.description):
                raise
            info = await js.stream_info(subjects.STREAM)
    have = info.config
    if _shape(have) != _shape(want):
        raise ProvisioningError(
            f"stream {subjects.STREAM} exists with a different shape: {_shape(have)} != {_shape(want)}; "
            "domed will not change it (that could lose events). Fix or migrate it by hand."
        )
    safe = (
        "max_age",
        "max_bytes",
        "duplicate_window",
        "deny_delete",
        "deny_purge",
        "discard",
        "allow_direct",
    )
    differ = {
        k: (getattr(have, k), getattr(want, k))
        for k in safe
        if getattr(have, k) != getattr(want, k)
    }
    if differ:
        try:
            await js.update_stream(want)
        except _REFUSED:
            raise ProvisioningError(
                f"stream {subjects.STREAM} has other settings than this service "
                f"(setting: stream's, this service's): {differ}; this user may not update it. "
                "Start every service and deploy/provision.sh with the same --replicas --max-age "
                "--max-bytes (DOMED_STREAM_ARGS; deploy/README.md, Provisioning)."
            ) from None


async def ensure_kv(
    js: JetStreamContext,
    bucket: str,
    ss: StreamSettings,
    ttl_s: float = 0,
    history: int = 1,
    direct: bool = False,
) -> KeyValue:
    """Open ``bucket``, creating it if missing; :class:`NotProvisionedError` if it is missing
    and this user may not create it.

    ``direct``: its values can be read by direct get (``services.runtime.directget``), which
    needs no consumer. A bucket created without it gets it when this user may update it (a
    provisioning run); otherwise a warning says so, and what would read it that way cannot."""
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    else:
        if direct:
            await _allow_direct(js, bucket)
        return kv
    try:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                history=history,
                ttl=ttl_s or None,
                replicas=ss.replicas,
                storage=StorageType.FILE,
                direct=direct or None,
            )
        )
    except _REFUSED:
        raise NotProvisionedError(
            f"KV bucket {bucket} is missing and this user may not create it; {PROVISION_HINT}"
        ) from None
    except nats.js.errors.BadRequestError:
        return await js.key_value(bucket)


async def _allow_direct(js: JetStreamContext, bucket: str) -> None:
    info = await js.stream_info(kv_stream(bucket))
    if info.config.allow_direct:
        return
    try:
        await js.update_stream(replace(info.config, allow_direct=True))
    except _REFUSED:
        log.warning(
            "KV bucket %s cannot be read by direct get, and this user may not allow it; %s",
            bucket,
            PROVISION_HINT,
        )


def kv_stream(bucket: str) -> str:
    """The stream that holds a KV bucket."""
    return KV_STREAM_TEMPLATE.format(bucket=bucket)


def kv_prefix(bucket: str) -> str:
    """What a KV bucket's subjects start with; the key follows."""
    return KV_PRE_TEMPLATE.format(bucket=bucket)


def executors_consumer_config(ss: StreamSettings) -> ConsumerConfig:
    """The durable pull consumer every executor shares: one delivery of each queued job at a time."""
    return ConsumerConfig(
        durable_name=subjects.EXECUTORS_CONSUMER,
        filter_subject="job.*.queued",
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ss.ack_wait_s,
        max_deliver=-1,
        max_ack_pending=ss.max_ack_pending,
        max_waiting=512,
        num_replicas=ss.replicas,
    )


def executors_consumer_differences(
    have: ConsumerConfig, want: ConsumerConfig
) -> dict[str, tuple[Any, Any]]:
    """The settings of the shared consumer that differ from ``want``: name -> (have, want)."""

    def filt(c: ConsumerConfig) -> str | None:
        return c.filter_subject or (",".join(c.filter_subjects) if c.filter_subjects else None)

    out: dict[str, tuple[Any, Any]] = {}
    if have.ack_wait is None or want.ack_wait is None or abs(have.ack_wait - want.ack_wait) > 1e-3:
        out["ack_wait"] = (have.ack_wait, want.ack_wait)
    if have.max_ack_pending != want.max_ack_pending:
        out["max_ack_pending"] = (have.max_ack_pending, want.max_ack_pending)
    if filt(have) != filt(want):
        out["filter_subject"] = (filt(have), filt(want))
    return out


async def create_executors_consumer(js: JetStreamContext, ss: StreamSettings) -> ConsumerConfig:
    """Create the missing consumer ``executors`` (what provisioning does); its config.

    :class:`NotProvisionedError` if this user may not create it (deploy/nats: only admin).
    """
    try:
        info = await js.add_consumer(subjects.STREAM, executors_consumer_config(ss))
    except _REFUSED:
        raise NotProvisionedError(
            f"consumer {subjects.EXECUTORS_CONSUMER} on stream {subjects.STREAM} is missing and "
            f"this user may not create it; {PROVISION_HINT}"
        ) from None
    return info.config


async def retry_until(
    deadline_s: float,
    op: Callable[[], Awaitable[T]],
    *,
    pause_s: float = 0.1,
    until: asyncio.Event | None = None,
    what: str = "",
    full_pause_s: float = 1.0,
) -> T:
    """Run ``op`` until it succeeds or the deadline passes; retry only bus unavailability.

    Retrying a publish with the same ``Nats-Msg-Id`` is safe: the stream stores it once.

    With ``until``, a deadline that passes starts another window of ``deadline_s`` (with
    a warning that ``what`` cannot be stored yet), until that event is set: for what only
    this process can store, such as how a run ended. A stream at its limits is then
    retried every ``full_pause_s``; without ``until``, or once it is set, it is not.
    """
    end = time.monotonic() + deadline_s
    while True:
        try:
            return await op()
        except UNAVAILABLE_ERRORS as exc:
            full = is_stream_full(exc)
            if until is None or until.is_set():
                if time.monotonic() + pause_s >= end or full:
                    raise
                await asyncio.sleep(pause_s)
                continue
            if time.monotonic() >= end:
                log.warning("%s cannot be stored yet (%r); still trying", what, exc)
                end = time.monotonic() + deadline_s
            with contextlib.suppress(TimeoutError):  # a long pause ends when ``until`` is set
                await asyncio.wait_for(until.wait(), full_pause_s if full else pause_s)


async def publish_event(
    js: JetStreamContext,
    event: Event,
    n: int | str = 0,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 2.0,
) -> Any:
    """Publish one event, awaiting its ack; the stream dedupes on ``Nats-Msg-Id``."""
    subject, payload, hdrs = event_message(event, n)
    if headers:
        hdrs.update(headers)
    return await js.publish(subject, payload, timeout=timeout_s, headers=hdrs)


def event_message(event: Event, n: int | str = 0) -> tuple[str, bytes, dict[str, str]]:
    """The ingest subject, payload and ``Nats-Msg-Id`` header of one event."""
    kind = type(event).__struct_config__.tag
    assert isinstance(kind, str)
    return (
        subjects.ingest_subject(event.job_id, kind),
        encode_event(event),
        {"Nats-Msg-Id": subjects.msg_id(event.job_id, kind, n)},
    )


def cas_headers(job_id: str, last_seq: int) -> dict[str, str]:
    """Headers that make a publish succeed only if ``last_seq`` is still the job's newest event."""
    return {
        "Nats-Expected-Last-Subject-Sequence": str(last_seq),
        "Nats-Expected-Last-Subject-Sequence-Subject": subjects.job_events_filter(job_id),
    }


FIRST_TERMINAL = {"Nats-Expected-Last-Subject-Sequence": "0"}


async def publish_if_newest(
    js: JetStreamContext, event: Event, n: int | str, last_seq: int, deadline_s: float = 30
) -> int | None:
    """Publish ``event`` only while ``last_seq`` is still its job's newest event
    (compare-and-set), retrying while JetStream is unreachable. Returns its stream seq, or
    None if another event got there first.

    A retry after a lost ack finds the first try stored, and the server then refuses
    the retry (the check runs before the duplicate check): the job's newest event of
    that kind being ``event`` itself means it was stored.
    """
    try:
        ack = await retry_until(
            deadline_s,
            lambda: publish_event(js, event, n, headers=cas_headers(event.job_id, last_seq)),
        )
        return int(ack.seq)
    except nats.js.errors.APIError as exc:
        if not is_wrong_last_sequence(exc):
            raise
    kind = type(event).__struct_config__.tag
    assert isinstance(kind, str)
    found = await last_event(js, event.job_id, kind)
    return found[0] if found is not None and found[1] == event else None


def no_terminal_yet(job_id: str) -> dict[str, str]:
    """Headers that make a publish succeed only while the job has no terminal, so the
    server refuses an event that would land after a job's end. Publish them one at a
    time: on a replicated stream, pipelined publishes with this check were refused."""
    return {
        "Nats-Expected-Last-Subject-Sequence": "0",
        "Nats-Expected-Last-Subject-Sequence-Subject": subjects.event_subject(job_id, "terminal"),
    }


def is_wrong_last_sequence(exc: BaseException) -> bool:
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code == WRONG_LAST_SEQUENCE


def is_stream_full(exc: BaseException) -> bool:
    """A write refused because the stream is at a limit (``max_bytes``, ``max_msgs``; its
    ``discard: new`` keeps old events). It answers 503 like a cluster electing a leader,
    but retrying soon does not help: only expiring events or a raised limit do."""
    description = getattr(exc, "description", None) or ""
    return (
        isinstance(exc, nats.js.errors.APIError)
        and description.startswith("maximum ")
        and description.endswith(" exceeded")
    )


async def last_event(
    js: JetStreamContext, job_id: str, kind: str = "*"
) -> tuple[int, Event] | None:
    """The newest stored event of a job (of one kind, or of any with ``*``), with its stream seq."""
    try:
        msg = await js.get_last_msg(subjects.STREAM, f"job.{job_id}.{kind}", direct=True)
    except nats.js.errors.NotFoundError:
        return None
    assert msg.data is not None and msg.seq is not None
    return msg.seq, decode_event(msg.data)


def unavailable(exc: BaseException) -> DomedError:
    """The ``unavailable`` reply for a bus error: JetStream unreachable, or (503 from the
    server itself, e.g. a stream at its ``max_bytes``) refusing, with the server's words."""
    if isinstance(exc, nats.js.errors.APIError) and exc.description:
        return DomedError(
            ErrorCode.UNAVAILABLE,
            f"JetStream refused it: {exc.description} (err_code {exc.err_code})",
        )
    return DomedError(ErrorCode.UNAVAILABLE, f"JetStream is not reachable: {type(exc).__name__}")


_json = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return _json.encode(value)
