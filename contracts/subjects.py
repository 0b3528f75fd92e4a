"""Subject names, stream and bucket names, and the pure functions that build them.

Services publish events to the internal ``ingest.job.<id>.<kind>`` subjects; the
``DOMED_JOBS`` stream stores them as ``job.<id>.<kind>`` and republishes each stored
event on that public subject, so a plain subscriber sees exactly the stored,
deduplicated events (docs/reference/events.md).
"""

from __future__ import annotations

import re
from typing import Final, Literal

STREAM: Final = "DOMED_JOBS"
"""The JetStream stream that stores every job event."""
INGEST_PREFIX: Final = "ingest"
"""The first token of the internal subjects services publish events to."""
STREAM_SUBJECTS: Final = "ingest.job.*.*"
"""What the stream captures: ``ingest.job.<job_id>.<kind>``, published by the services."""
STORED_SUBJECTS: Final = "job.*.*"
"""What the stream stores (and republishes) each event as: ``job.<job_id>.<kind>``."""
KV_JOBS: Final = "domed-jobs"
"""KV bucket: each job's state as the projector last committed it, keyed by job id."""
KV_SECRETS: Final = "domed-secrets"
"""KV bucket: a job's secret parameters, kept out of the stream; the job's end clears them."""
KV_IDEMPOTENCY: Final = "domed-idempotency"
"""KV bucket: submit idempotency keys, claimed atomically, kept one duplicate window."""
KV_SLOTS: Final = "domed-slots"
"""KV bucket: the concurrency slots of tools with ``limits.concurrency``, across executors."""
KV_HOLDS: Final = "domed-holds"
"""KV bucket: a hold per running attempt, renewed every heartbeat, lapsing one lease after the last."""
OBJ_ARTIFACTS: Final = "domed-artifacts"
"""The Object Store bucket of jobs' artifacts: objects ``<job_id>/<path>``."""
EXECUTORS_CONSUMER: Final = "executors"
"""The durable work consumer on the stream that every executor pulls jobs from."""

SUBMIT: Final = "domed.jobs.submit"
"""Request/reply: submit a job, the tool named in the body (the router answers). For
trusted callers: a NATS permission on it cannot tell one tool from another."""
SUBMIT_TOOL: Final = "domed.jobs.submit.>"
"""Request/reply: submit a job of the tool the subject names,
``domed.jobs.submit.<tool_id>`` (the router answers), so that NATS permissions decide
who may run which tool."""
CANCEL: Final = "domed.jobs.cancel"
"""Request/reply: ask for a job to be canceled (the router answers)."""
TOOLS_LIST: Final = "domed.tools.list"
"""Request/reply: the catalogue's tools (the router answers)."""
TOOLS_GET: Final = "domed.tools.get"
"""Request/reply: one tool's manifest (the router answers)."""
TOOLS_EXPLAIN: Final = "domed.tools.explain"
"""Request/reply: the command a submit would run, without running it (the router answers)."""
JOBS_GET: Final = "domed.jobs.get"
"""Request/reply: one job's state (the projector answers)."""
JOBS_LIST: Final = "domed.jobs.list"
"""Request/reply: a page of jobs, newest first (the projector answers)."""
JOBS_EVENTS: Final = "domed.jobs.events"
"""Request/reply: one job's stored events, in stream order (the projector answers)."""
JOBS_ARTIFACT: Final = "domed.jobs.artifact"
"""Request/reply: one chunk of one of a job's artifacts (the projector answers)."""

SERVICE_ROUTER: Final = "domed-router"
"""The router's name on the NATS Services API (``$SRV.*``)."""
SERVICE_EXECUTOR: Final = "domed-executor"
"""The executors' name on the NATS Services API (``$SRV.*``)."""
SERVICE_PROJECTOR: Final = "domed-projector"
"""The projector's name on the NATS Services API (``$SRV.*``)."""

EventKind = Literal["queued", "cancel", "started", "log", "progress", "retry", "terminal"]
"""The kind of an event: its subject's last token and its payload's ``kind``."""
EVENT_KINDS: Final[tuple[str, ...]] = (
    "queued",
    "cancel",
    "started",
    "log",
    "progress",
    "retry",
    "terminal",
)
"""Every event kind, in the order a job's events usually come."""

_JOB_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_SUBJECT_TOKENS = re.compile(r"[0-9A-Za-z_-]+(\.[0-9A-Za-z_-]+)*")


def is_job_id(value: str) -> bool:
    """True when ``value`` is a single URL-safe subject token usable as a job id."""
    return bool(_JOB_ID.fullmatch(value))


def submit_subject(tool_id: str) -> str:
    """The per-tool submit subject of a tool: ``domed.jobs.submit.<tool_id>`` (a tool id's
    dots are subject tokens, so ``domed.jobs.submit.demo.>`` covers the ``demo`` family).
    ValueError for an id that cannot be a subject's tokens (see ``is_subject_tokens``)."""
    if not is_subject_tokens(tool_id):
        raise ValueError(f"tool id {tool_id!r} cannot be written as subject tokens")
    return f"{SUBMIT}.{tool_id}"


def is_subject_tokens(value: str) -> bool:
    """True when ``value`` is one or more dot-separated subject tokens of letters, digits,
    ``_`` and ``-`` (no wildcard, no empty token), as a tool id must be to have a
    per-tool submit subject."""
    return bool(_SUBJECT_TOKENS.fullmatch(value))


def tool_of_submit_subject(subject: str) -> str | None:
    """The tool id a per-tool submit subject names; None for any other subject."""
    prefix = SUBMIT + "."
    if not subject.startswith(prefix) or len(subject) == len(prefix):
        return None
    return subject[len(prefix) :]


def event_subject(job_id: str, kind: str) -> str:
    """The public, stored subject of one event: ``job.<job_id>.<kind>``."""
    return f"job.{job_id}.{kind}"


def ingest_subject(job_id: str, kind: str) -> str:
    """The internal subject a service publishes an event to."""
    return f"{INGEST_PREFIX}.job.{job_id}.{kind}"


def job_events_filter(job_id: str) -> str:
    """A filter matching every stored event of one job (for reads and per-job CAS)."""
    return f"job.{job_id}.*"


def parse_event_subject(subject: str) -> tuple[str, str]:
    """Split ``job.<job_id>.<kind>`` into ``(job_id, kind)``; ValueError otherwise."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "job" or parts[2] not in EVENT_KINDS:
        raise ValueError(f"not a domed event subject: {subject!r}")
    return parts[1], parts[2]


_EVENT_KINDS_BYTES: Final[frozenset[bytes]] = frozenset(k.encode() for k in EVENT_KINDS)


def job_of_event_subject(subject: bytes) -> str:
    """The job id of ``job.<job_id>.<kind>`` as read off the wire; ValueError otherwise.
    (What ``parse_event_subject`` checks, without decoding the whole subject first: a
    projector rebuild calls it once per event.)"""
    try:
        head, job_id, kind = subject.split(b".")
    except ValueError:
        raise ValueError(f"not a domed event subject: {subject!r}") from None
    if head != b"job" or kind not in _EVENT_KINDS_BYTES:
        raise ValueError(f"not a domed event subject: {subject!r}")
    return job_id.decode()


def msg_id(job_id: str, kind: str, n: int | str = 0) -> str:
    """The ``Nats-Msg-Id`` of an event, so a retried publish is stored once."""
    return f"{job_id}.{kind}.{n}"
