"""The NATS shell every service shares: connect, provision the stream and buckets,
publish events idempotently, and read a job's events back.

Provisioning never deletes data: a stream that exists with settings domed can
update (limits, duplicate window) is updated; one whose shape differs (subjects,
transform, retention) stops the service with a message that says what differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
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


async def connect(settings: Settings, name: str, **options: Any) -> Client:
    """Connect with reconnects forever, so a NATS restart heals by itself."""
    kwargs: dict[str, Any] = {
        "servers": [u.strip() for u in settings.nats_url.split(",")],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 2,
        "allow_reconnect": True,
    }
    if settings.nats_creds:
        kwargs["user_credentials"] = settings.nats_creds

    async def _quiet(exc: Exception) -> None:
        log.debug("nats: %r", exc)

    kwargs.setdefault("error_cb", _quiet)
    kwargs.update(options)
    return await nats.connect(**kwargs)


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
        duplicate_window=ss.duplicate_window_s,
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


async def ensure_stream(js: JetStreamContext, ss: StreamSettings) -> None:
    """Create ``DOMED_JOBS`` if missing, else check its shape and update safe limits."""
    want = stream_config(ss)
    try:
        info = await js.stream_info(subjects.STREAM)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(want)
            return
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
    if any(getattr(have, k) != getattr(want, k) for k in safe):
        await js.update_stream(want)


async def ensure_kv(
    js: JetStreamContext, bucket: str, ss: StreamSettings, ttl_s: float = 0, history: int = 1
) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                history=history,
                ttl=ttl_s or None,
                replicas=ss.replicas,
                storage=StorageType.FILE,
            )
        )
    except nats.js.errors.BadRequestError:
        return await js.key_value(bucket)


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


async def retry_until(
    deadline_s: float, op: Callable[[], Awaitable[T]], *, pause_s: float = 0.1
) -> T:
    """Run ``op`` until it succeeds or the deadline passes; retry only bus unavailability.

    Retrying a publish with the same ``Nats-Msg-Id`` is safe: the stream stores it once.
    """
    end = time.monotonic() + deadline_s
    while True:
        try:
            return await op()
        except UNAVAILABLE_ERRORS:
            if time.monotonic() + pause_s >= end:
                raise
            await asyncio.sleep(pause_s)


async def publish_event(
    js: JetStreamContext,
    event: Event,
    n: int | str = 0,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 2.0,
) -> Any:
    """Publish one event, awaiting its ack; the stream dedupes on ``Nats-Msg-Id``."""
    kind = type(event).__struct_config__.tag
    assert isinstance(kind, str)
    hdrs = {"Nats-Msg-Id": subjects.msg_id(event.job_id, kind, n)}
    if headers:
        hdrs.update(headers)
    return await js.publish(
        subjects.ingest_subject(event.job_id, kind),
        encode_event(event),
        timeout=timeout_s,
        headers=hdrs,
    )


def cas_headers(job_id: str, last_seq: int) -> dict[str, str]:
    """Headers that make a publish succeed only if ``last_seq`` is still the job's newest event."""
    return {
        "Nats-Expected-Last-Subject-Sequence": str(last_seq),
        "Nats-Expected-Last-Subject-Sequence-Subject": subjects.job_events_filter(job_id),
    }


FIRST_TERMINAL = {"Nats-Expected-Last-Subject-Sequence": "0"}


def is_wrong_last_sequence(exc: BaseException) -> bool:
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code == WRONG_LAST_SEQUENCE


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
    return DomedError(ErrorCode.UNAVAILABLE, f"JetStream is not reachable: {type(exc).__name__}")


_json = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return _json.encode(value)
