"""Provisioning the stream, the buckets and the executors' consumer. It never deletes
data: a stream that exists with settings domed can update (limits, duplicate window) is
updated; one whose shape differs (subjects, transform, retention) stops the service with
a message that says what differs."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.client import KV_PRE_TEMPLATE, KV_STREAM_TEMPLATE
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from contracts import subjects
from services.runtime.settings import StreamSettings

log = logging.getLogger("domed.bus")


class ProvisioningError(Exception):
    """The stream or a bucket exists with settings domed cannot safely reconcile."""


class NotProvisionedError(Exception):
    """The stream, a bucket or the consumer is missing and this user may not create it.

    Unlike :class:`ProvisioningError` this can heal by itself: once the admin has
    provisioned (deploy/provision.sh), a restart succeeds.
    """


PROVISION_HINT = "provision it as admin: deploy/provision.sh"


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


async def ensure_object_store(js: JetStreamContext, bucket: str, ss: StreamSettings) -> ObjectStore:
    """Open Object Store ``bucket``, creating it if missing (its objects live as long as the
    stream's events, ``max_age``); :class:`NotProvisionedError` if it is missing and this
    user may not create it. A bucket whose TTL differs from ``max_age`` (the stream's was
    changed since) gets it when this user may update it (a provisioning run); otherwise a
    warning says so."""
    try:
        store = await js.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    else:
        await _set_max_age(js, f"OBJ_{bucket}", ss.max_age_s)
        return store
    try:
        return await js.create_object_store(
            bucket,
            ObjectStoreConfig(
                bucket=bucket,
                ttl=ss.max_age_s or None,
                replicas=ss.replicas,
                storage=StorageType.FILE,
            ),
        )
    except _REFUSED:
        raise NotProvisionedError(
            f"Object Store bucket {bucket} is missing and this user may not create it; "
            f"{PROVISION_HINT}"
        ) from None
    except nats.js.errors.BadRequestError:
        return await js.object_store(bucket)


async def _set_max_age(js: JetStreamContext, stream: str, max_age_s: float) -> None:
    info = await js.stream_info(stream)
    if abs((info.config.max_age or 0.0) - max_age_s) < 1e-3:
        return
    try:
        await js.update_stream(replace(info.config, max_age=max_age_s))
    except (*_REFUSED, nats.js.errors.APIError) as exc:
        log.warning(
            "stream %s keeps messages for %ss, not %ss like the event stream, and this user "
            "may not change it (%s); %s",
            stream,
            info.config.max_age or 0,
            max_age_s,
            exc,
            PROVISION_HINT,
        )


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


async def allow_msg_ttl(js: JetStreamContext, bucket: str) -> bool:
    """Whether KV ``bucket`` takes per-key TTLs (nats-server >= 2.11; every bucket nats-py
    2.16 creates does). One made without them gets them when this user may update it (a
    provisioning run); otherwise a warning, and False."""
    info = await js.stream_info(kv_stream(bucket))
    if info.config.allow_msg_ttl:
        return True
    try:
        await js.update_stream(replace(info.config, allow_msg_ttl=True))
    except (*_REFUSED, nats.js.errors.APIError) as exc:
        log.warning(
            "KV bucket %s does not take per-key TTLs and this user may not allow them (%s); %s",
            bucket,
            exc,
            PROVISION_HINT,
        )
        return False
    return True


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
