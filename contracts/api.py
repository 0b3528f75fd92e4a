"""Request and reply bodies of the request/reply API, and job state (docs/reference/api.md)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from contracts.events import (
    Artifact,
    JobStateName,
    LineCounts,
    Rusage,
    SubmittedBy,
    TerminalError,
)


class _Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class _SubmitOptions(_Request, frozen=True, kw_only=True):
    """What a submit carries besides the tool (both submit subjects)."""

    params: Annotated[
        dict[str, Any],
        Meta(description="Parameters, checked against the manifest's `parameters` schema."),
    ] = {}
    timeout_s: Annotated[
        float | None,
        Meta(description="Seconds the job may run; default: the manifest's `timeout_s`."),
    ] = None
    labels: Annotated[
        dict[str, str],
        Meta(description="Free-form labels, stored on the job; `domed.jobs.list` filters on them."),
    ] = {}
    queue_timeout_s: Annotated[
        float | None,
        Meta(
            description="Seconds the job may wait to start; default and most: the manifest's "
            "`queue_timeout_s` (any, when the manifest has none)."
        ),
    ] = None
    idempotency_key: Annotated[
        str | None,
        Meta(
            description="A second submit with this key, within the stream's duplicate window, "
            "gets the first job; a different request (tool, params, timeout or labels) with it "
            "gets `idempotency_conflict`."
        ),
    ] = None


class SubmitRequest(_SubmitOptions, frozen=True, kw_only=True):
    """Run a tool named in the body (`domed.jobs.submit`, for trusted callers)."""

    tool: Annotated[str, Meta(description="The manifest id of the tool to run.")]


class ToolSubmitRequest(_SubmitOptions, frozen=True, kw_only=True):
    """Run the tool the subject names (`domed.jobs.submit.<tool_id>`)."""

    tool: Annotated[
        str | None,
        Meta(
            description="Optional; if given, it must equal the subject's tool id "
            "(else `invalid_request`)."
        ),
    ] = None


class SubmitReply(msgspec.Struct, frozen=True):
    """The job was stored as `queued`."""

    job_id: Annotated[str, Meta(description="The job's id (a ULID).")]
    state: Annotated[str, Meta(description="Always `queued`.")]
    duplicate: Annotated[
        bool,
        Meta(description="True when the idempotency key named an existing job, whose id this is."),
    ]


class CancelRequest(_Request, frozen=True):
    """Stop a queued or running job."""

    job_id: Annotated[str, Meta(description="The job to cancel.")]
    reason: Annotated[
        str | None,
        Meta(description="Recorded on the `cancel` event (at most the router's reason cap)."),
    ] = None


class CancelReply(msgspec.Struct, frozen=True):
    """What the cancel did."""

    job_id: Annotated[str, Meta(description="The job.")]
    state: Annotated[
        str,
        Meta(
            description="`canceled` if it had not started; `running` while its executor stops it. "
            "A job that already has a `cancel` event gets no second one: the reply gives its "
            "current state."
        ),
    ]


class ToolsListRequest(_Request, frozen=True):
    """An empty object."""


class ToolSummary(msgspec.Struct, frozen=True):
    """One tool of the catalogue."""

    id: Annotated[str, Meta(description="The manifest id.")]
    version: Annotated[int, Meta(description="The manifest's version.")]
    description: Annotated[str, Meta(description="The manifest's description.")]


class ToolsListReply(msgspec.Struct, frozen=True):
    """The catalogue, sorted by id."""

    tools: Annotated[list[ToolSummary], Meta(description="Every tool the router serves.")]


class ToolsGetRequest(_Request, frozen=True):
    """One tool's manifest."""

    id: Annotated[str, Meta(description="The manifest id.")]


class ExplainRequest(_Request, frozen=True):
    """What a submit would run, without running it."""

    tool: Annotated[str, Meta(description="The manifest id.")]
    params: Annotated[dict[str, Any], Meta(description="Parameters, as for a submit.")] = {}


class ExplainReply(msgspec.Struct, frozen=True):
    """The command a submit with these parameters would run."""

    argv: Annotated[
        list[str], Meta(description="The rendered command, secret values masked as `***`.")
    ]
    working_dir_policy: Annotated[str, Meta(description="The manifest's working directory policy.")]
    env_names: Annotated[
        list[str], Meta(description="Names of the environment variables the job would get.")
    ]
    timeout_s: Annotated[float, Meta(description="The manifest's timeout.")]
    manifest_sha256: Annotated[str, Meta(description="SHA-256 (hex) of the manifest file.")]


class ProgressState(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """The job's last progress reading."""

    current: Annotated[float | None, Meta(description="As in the `progress` event.")] = None
    total: Annotated[float | None, Meta(description="As in the `progress` event.")] = None
    percent: Annotated[float | None, Meta(description="As in the `progress` event.")] = None
    message: Annotated[str | None, Meta(description="As in the `progress` event.")] = None


class JobState(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """A job as the projector knows it: the value of ``domed.jobs.get`` and the KV."""

    job_id: Annotated[str, Meta(description="The job.")]
    tool: Annotated[str, Meta(description="The tool's manifest id.")]
    params: Annotated[dict[str, Any], Meta(description="As in `queued` (secret values masked).")]
    labels: Annotated[dict[str, str], Meta(description="As in `queued`.")]
    state: Annotated[JobStateName, Meta(description="`queued`, `running`, or the terminal state.")]
    submitted_at: Annotated[str, Meta(description="As in `queued`.")]
    last_seq: Annotated[
        int, Meta(description="Stream sequence of the last event applied to this job.")
    ]
    lines: Annotated[
        LineCounts, Meta(description="Lines printed so far by the current (or last) attempt.")
    ]
    tool_version: Annotated[int | None, Meta(description="As in `queued`.")] = None
    timeout_s: Annotated[float | None, Meta(description="As in `queued`.")] = None
    attempt: Annotated[
        int, Meta(description="The current (or last) attempt; 0 before any started.")
    ] = 0
    started_at: Annotated[
        str | None, Meta(description="When the current (or last) attempt started.")
    ] = None
    finished_at: Annotated[str | None, Meta(description="As in `terminal`.")] = None
    duration_s: Annotated[float | None, Meta(description="As in `terminal`.")] = None
    exit_code: Annotated[int | None, Meta(description="As in `terminal`.")] = None
    signal: Annotated[str | None, Meta(description="As in `terminal`.")] = None
    executor: Annotated[
        str | None, Meta(description="The executor running (or that ran) the current attempt.")
    ] = None
    pid: Annotated[int | None, Meta(description="The process id of the current attempt.")] = None
    progress: Annotated[ProgressState | None, Meta(description="The last progress reading.")] = None
    error: Annotated[TerminalError | None, Meta(description="As in `terminal`.")] = None
    truncated: Annotated[bool, Meta(description="As in `terminal`.")] = False
    signals_sent: Annotated[list[str], Meta(description="As in `terminal`.")] = []
    rusage: Annotated[Rusage | None, Meta(description="As in `terminal`.")] = None
    result: Annotated[Any, Meta(description="As in `terminal`.")] = None
    artifacts: Annotated[list[Artifact] | None, Meta(description="As in `terminal`.")] = None
    cancel_requested: Annotated[
        bool, Meta(description="True once a `cancel` event was stored.")
    ] = False
    submitted_by: Annotated[SubmittedBy | None, Meta(description="As in `queued`.")] = None


class JobsGetRequest(_Request, frozen=True):
    """One job's state."""

    job_id: Annotated[str, Meta(description="The job.")]


class JobsGetReply(JobState, frozen=True):
    """The job's state, flat, plus how far the projection has read the stream."""

    projected_seq: Annotated[
        int,
        Meta(
            description="The stream sequence the projection has reached: a client can wait until its own write is visible."
        ),
    ] = 0


class JobsListRequest(_Request, frozen=True):
    """Jobs, newest first, filtered."""

    state: Annotated[str | None, Meta(description="Only jobs in this state.")] = None
    tool: Annotated[str | None, Meta(description="Only jobs of this tool.")] = None
    label: Annotated[
        str | None, Meta(description="Only jobs with this label, written `key=value`.")
    ] = None
    submitted_by: Annotated[
        str | None,
        Meta(description="Only jobs submitted by this NATS user (`submitted_by.user`)."),
    ] = None
    limit: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        Meta(description="At most this many jobs (default 50, at most 500)."),
    ] = None
    cursor: Annotated[str | None, Meta(description="The previous page's `next_cursor`.")] = None


class JobsListReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """One page of jobs."""

    jobs: Annotated[
        list[JobState],
        Meta(
            description="The jobs, newest first; fewer than `limit` when more would not fit "
            "under the server's max payload (then `next_cursor` is present)."
        ),
    ]
    projected_seq: Annotated[
        int, Meta(description="The stream sequence the projection has reached.")
    ]
    next_cursor: Annotated[
        str | None, Meta(description="Present when there may be more: pass it as `cursor`.")
    ] = None


class JobsEventsRequest(_Request, frozen=True):
    """One job's stored events, in stream order."""

    job_id: Annotated[str, Meta(description="The job.")]
    after_seq: Annotated[
        Annotated[int, Meta(ge=0)] | None,
        Meta(description="Only events after this stream sequence."),
    ] = None
    limit: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        Meta(description="At most this many events (default 1000, at most 10000)."),
    ] = None


class StoredEvent(msgspec.Struct, frozen=True):
    """An event as the stream stored it."""

    subject: Annotated[str, Meta(description="`job.<job_id>.<kind>`.")]
    seq: Annotated[int, Meta(description="Its stream sequence.")]
    data: Annotated[dict[str, Any], Meta(description="The event's payload.")]


class JobsEventsReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """One page of a job's events."""

    events: Annotated[list[StoredEvent], Meta(description="The events, in stream order.")]
    complete: Annotated[bool, Meta(description="True when the job's terminal has been returned.")]
    projected_seq: Annotated[
        int, Meta(description="The stream sequence the projection has reached.")
    ]
    next: Annotated[
        int | None, Meta(description="Present when there are more: pass it as `after_seq`.")
    ] = None


class JobsArtifactRequest(_Request, frozen=True):
    """One chunk of one of a job's artifacts, in order: the first with ``chunk`` 0, each
    next one with the ``chunk`` and ``seq`` of the reply before it, until ``chunks``."""

    job_id: Annotated[str, Meta(description="The job.")]
    name: Annotated[str, Meta(description="The artifact's name, as the job's terminal lists it.")]
    chunk: Annotated[int, Meta(ge=0, description="Which chunk, from 0.")] = 0
    after_seq: Annotated[
        int, Meta(ge=0, description="The `seq` of the previous chunk's reply; 0 for the first.")
    ] = 0


class JobsArtifactReply(msgspec.Struct, frozen=True):
    """One chunk of an artifact. Concatenated in order, the chunks' bytes are the file, of
    `size` bytes with SHA-256 `sha256` as the terminal lists it (check it)."""

    name: Annotated[str, Meta(description="The artifact.")]
    size: Annotated[int, Meta(description="The whole file's size in bytes.")]
    sha256: Annotated[str, Meta(description="The whole file's SHA-256 (hex), as listed.")]
    chunks: Annotated[int, Meta(description="How many chunks the file is stored in.")]
    chunk: Annotated[int, Meta(description="Which chunk this is.")]
    seq: Annotated[int, Meta(description="Where it is stored: the next request's `after_seq`.")]
    data: Annotated[str, Meta(description="The chunk's bytes, base64.")]
