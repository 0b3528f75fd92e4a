"""Writing and reading a job's events in ``DOMED_JOBS``: idempotent publishes (each event
has a ``Nats-Msg-Id``), compare-and-set on the job's subjects, and the newest event of a job."""

from __future__ import annotations

from typing import Any

import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from contracts import subjects
from contracts.events import Event, decode_event, encode_event
from contracts.headers import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
    MSG_ID,
)
from services.runtime.failures import is_wrong_last_sequence, retry_until


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
        {MSG_ID: subjects.msg_id(event.job_id, kind, n)},
    )


def cas_headers(job_id: str, last_seq: int) -> dict[str, str]:
    """Headers that make a publish succeed only if ``last_seq`` is still the job's newest event."""
    return {
        EXPECTED_LAST_SUBJECT_SEQUENCE: str(last_seq),
        EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: subjects.job_events_filter(job_id),
    }


FIRST_TERMINAL = {EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}


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
        EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
        EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: subjects.event_subject(job_id, "terminal"),
    }


async def last_event(
    js: JetStreamContext, job_id: str, kind: str = "*"
) -> tuple[int, Event] | None:
    """The newest stored event of a job (of one kind, or of any with ``*``), with its stream seq."""
    try:
        msg = await js.get_last_msg(
            subjects.STREAM, subjects.event_subject(job_id, kind), direct=True
        )
    except nats.js.errors.NotFoundError:
        return None
    assert msg.data is not None and msg.seq is not None
    return msg.seq, decode_event(msg.data)


_json = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return _json.encode(value)
