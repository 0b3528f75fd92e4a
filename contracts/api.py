"""Request and reply bodies of the request/reply API (SPEC.md part 3), and job state."""

from __future__ import annotations

from typing import Any

import msgspec

from contracts.events import JobStateName, LineCounts, Rusage, TerminalError


class _Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class SubmitRequest(_Request, frozen=True):
    tool: str
    params: dict[str, Any] = {}
    timeout_s: float | None = None
    labels: dict[str, str] = {}
    idempotency_key: str | None = None


class SubmitReply(msgspec.Struct, frozen=True):
    job_id: str
    state: str
    duplicate: bool


class CancelRequest(_Request, frozen=True):
    job_id: str
    reason: str | None = None


class CancelReply(msgspec.Struct, frozen=True):
    job_id: str
    state: str


class ToolsListRequest(_Request, frozen=True):
    pass


class ToolSummary(msgspec.Struct, frozen=True):
    id: str
    version: int
    description: str


class ToolsListReply(msgspec.Struct, frozen=True):
    tools: list[ToolSummary]


class ToolsGetRequest(_Request, frozen=True):
    id: str


class ExplainRequest(_Request, frozen=True):
    tool: str
    params: dict[str, Any] = {}


class ExplainReply(msgspec.Struct, frozen=True):
    argv: list[str]
    working_dir_policy: str
    env_names: list[str]
    timeout_s: float
    manifest_sha256: str


class ProgressState(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    current: float | None = None
    total: float | None = None
    percent: float | None = None
    message: str | None = None


class JobState(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """A job as the projector knows it: the value of ``domed.jobs.get`` and the KV."""

    job_id: str
    tool: str
    params: dict[str, Any]
    labels: dict[str, str]
    state: JobStateName
    submitted_at: str
    last_seq: int
    lines: LineCounts
    tool_version: int | None = None
    timeout_s: float | None = None
    attempt: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    signal: str | None = None
    executor: str | None = None
    pid: int | None = None
    progress: ProgressState | None = None
    error: TerminalError | None = None
    truncated: bool = False
    signals_sent: list[str] = []
    rusage: Rusage | None = None
    cancel_requested: bool = False


class JobsGetRequest(_Request, frozen=True):
    job_id: str


class JobsGetReply(JobState, frozen=True):
    """The job's state, flat, plus how far the projection has read the stream."""

    projected_seq: int = 0


class JobsListRequest(_Request, frozen=True):
    state: str | None = None
    tool: str | None = None
    label: str | None = None
    limit: int | None = None
    cursor: str | None = None


class JobsListReply(msgspec.Struct, frozen=True, omit_defaults=True):
    jobs: list[JobState]
    projected_seq: int
    next_cursor: str | None = None


class JobsEventsRequest(_Request, frozen=True):
    job_id: str
    after_seq: int | None = None
    limit: int | None = None


class StoredEvent(msgspec.Struct, frozen=True):
    subject: str
    seq: int
    data: dict[str, Any]


class JobsEventsReply(msgspec.Struct, frozen=True, omit_defaults=True):
    events: list[StoredEvent]
    complete: bool
    projected_seq: int
    next: int | None = None
