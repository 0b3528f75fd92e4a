"""The six job events, as one tagged union (docs/reference/events.md lists their fields).

Each payload carries ``kind`` (the same as the subject's last token), so a reader
decodes any stored event with ``decode_event(data)`` and gets the right class.
Timestamps are RFC 3339 strings in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from contracts.errors import TerminalErrorCode

TerminalState = Literal["succeeded", "failed", "canceled", "timed_out", "lost"]
"""The state a terminal event ends a job in."""
JobStateName = Literal["queued", "running", "succeeded", "failed", "canceled", "timed_out", "lost"]
"""Every state a job can be in: ``queued``, ``running``, then one terminal state."""
TERMINAL_STATES: frozenset[str] = frozenset(
    {"succeeded", "failed", "canceled", "timed_out", "lost"}
)
"""The states a job never leaves (``TerminalState`` as a set, for membership tests)."""


class _Event(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="kind", gc=False):
    """``gc=False`` here and on the job state types (``contracts.api``): values decoded
    from JSON cannot form reference cycles, so the garbage collector need not track
    them. A projector rebuild makes two or three of these per event; untracked, it
    spends 2-3% less CPU (docs/benchmarks.md)."""

    job_id: Annotated[str, Meta(description="The job, as in the subject's middle token.")]


class SubmittedBy(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Who submitted a job, as nats-server told the router (header `Nats-Request-Info`
    of a request that came through a service import with `share: true`). The client
    cannot set it; a job submitted from the router's own account has none."""

    account: Annotated[str, Meta(description="The NATS account the request came from.")]
    user: Annotated[
        str | None, Meta(description="The NATS user (or nkey) that sent it, if any.")
    ] = None
    name: Annotated[str | None, Meta(description="The client's connection name, if set.")] = None
    host: Annotated[
        str | None, Meta(description="The client's IP address, as the server saw it.")
    ] = None


class Queued(_Event, frozen=True, tag="queued"):
    """The router accepted a job: the first event of every job."""

    tool: Annotated[str, Meta(description="The tool's manifest id.")]
    tool_version: Annotated[int, Meta(description="The manifest's `version` at submit time.")]
    manifest_sha256: Annotated[
        str, Meta(description="SHA-256 (hex) of the manifest file the job was checked against.")
    ]
    params: Annotated[
        dict[str, Any], Meta(description="The job's parameters, secret ones masked as `***`.")
    ]
    submitted_at: Annotated[str, Meta(description="When the router accepted it (RFC 3339, UTC).")]
    timeout_s: Annotated[
        float, Meta(description="Seconds the job may run: the request's, else the manifest's.")
    ]
    labels: Annotated[dict[str, str], Meta(description="The caller's labels, for filtering.")]
    idempotency_key: Annotated[
        str | None, Meta(description="The caller's idempotency key, if it gave one.")
    ] = None
    queue_timeout_s: Annotated[
        float | None,
        Meta(
            description="Seconds the job may wait to start: the request's, else the "
            "manifest's; then it ends `timed_out` (`queue_timeout`) and never starts."
        ),
    ] = None
    submitted_by: Annotated[
        SubmittedBy | None,
        Meta(
            description="Who submitted it, from nats-server (never from the client); absent "
            "when the request did not come through a service import with `share: true`."
        ),
    ] = None


class Cancel(_Event, frozen=True, tag="cancel"):
    """Someone asked to cancel the job; its executor stops it (or the router ends it
    `canceled` if it had not started)."""

    requested_at: Annotated[str, Meta(description="When the cancel was accepted (RFC 3339).")]
    reason: Annotated[str | None, Meta(description="The caller's reason, if given.")] = None


class Started(_Event, frozen=True, tag="started"):
    """An executor won the job and started an attempt."""

    executor: Annotated[str, Meta(description="The executor's name (unique per process).")]
    pid: Annotated[int, Meta(description="The job's process id on the executor's host.")]
    attempt: Annotated[int, Meta(description="1 for the first attempt, then 2, 3...")]
    started_at: Annotated[str, Meta(description="When the attempt started (RFC 3339).")]


class Log(_Event, frozen=True, tag="log"):
    """Output lines of one attempt, in order."""

    attempt: Annotated[int, Meta(description="The attempt that printed them.")]
    stream: Annotated[Literal["stdout", "stderr"], Meta(description="Which output stream.")]
    seq: Annotated[
        int,
        Meta(
            description="Number of the first line, counted per attempt from 0 across both "
            "streams: no gaps, no repeats."
        ),
    ]
    lines: Annotated[list[str], Meta(description="The lines, without their newline.")]
    ts: Annotated[str, Meta(description="When the batch was published (RFC 3339).")]


class Progress(_Event, frozen=True, tag="progress"):
    """An output line matched the manifest's `progress.regex`. Readings may be coalesced
    in time; the last one of an attempt is always published."""

    attempt: Annotated[int, Meta(description="The attempt that reported it.")]
    ts: Annotated[str, Meta(description="When it was reported (RFC 3339).")]
    current: Annotated[float | None, Meta(description="The `current` group, if matched.")] = None
    total: Annotated[float | None, Meta(description="The `total` group, if matched.")] = None
    percent: Annotated[
        float | None, Meta(description="The `percent` group, or current/total as a percentage.")
    ] = None
    message: Annotated[str | None, Meta(description="The `message` group, if matched.")] = None


ResourceLimit = Literal["memory", "cpu", "pids", "file_size", "open_files"]
"""The manifest limits (``limits.memory_mb``, ``cpu_s``, ``pids``, ``file_size_mb``,
``open_files``) a job can be stopped for."""


class TerminalError(msgspec.Struct, frozen=True, omit_defaults=True):
    """Why a job ended without a normal exit."""

    code: Annotated[
        str,
        Meta(
            description="`spawn_failed`, `executor_shutdown`, `executor_lost` or `limit_exceeded`."
        ),
    ]
    message: Annotated[str, Meta(description="A sentence for people.")]
    limit: Annotated[
        ResourceLimit | None,
        Meta(description="With `limit_exceeded`: the manifest limit the job went past."),
    ] = None


class LineCounts(msgspec.Struct, frozen=True, gc=False):
    """Lines printed by the job's last attempt."""

    stdout: Annotated[int, Meta(description="Lines on standard output.")] = 0
    stderr: Annotated[int, Meta(description="Lines on standard error.")] = 0


class Rusage(msgspec.Struct, frozen=True, omit_defaults=True):
    """Resources the job used. Where the executor confines jobs in a cgroup, the CPU times
    and ``memory_peak_kb`` cover the whole process tree; otherwise the process and the
    descendants it waited for."""

    max_rss_kb: Annotated[int, Meta(description="Peak resident memory of one process, KiB.")]
    user_s: Annotated[float, Meta(description="CPU seconds in user mode.")]
    sys_s: Annotated[float, Meta(description="CPU seconds in the kernel.")]
    memory_peak_kb: Annotated[
        int | None,
        Meta(description="Peak memory of the whole process tree (its cgroup's), KiB."),
    ] = None


class Artifact(msgspec.Struct, frozen=True):
    """A file of the job's stored in the Object Store: ``nats obj get BUCKET OBJECT``."""

    name: Annotated[str, Meta(description="Its path relative to the job's working dir.")]
    size: Annotated[int, Meta(description="Bytes.")]
    sha256: Annotated[str, Meta(description="SHA-256 of its content, hex.")]
    bucket: Annotated[str, Meta(description="The Object Store bucket: `domed-artifacts`.")]
    object: Annotated[str, Meta(description="The object's name: `<job_id>/<name>`.")]


class Outcome(msgspec.Struct, frozen=True, omit_defaults=True):
    """How an attempt that is retried ended."""

    state: Annotated[
        Literal["failed", "timed_out", "lost"], Meta(description="As a terminal would say.")
    ]
    exit_code: Annotated[int | None, Meta(description="The process's exit status.")] = None
    signal: Annotated[str | None, Meta(description="The signal that ended it.")] = None
    error: Annotated[TerminalError | None, Meta(description="As a terminal would say.")] = None


class Retry(_Event, frozen=True, tag="retry"):
    """An attempt ended in a state the manifest's `retry.when` names, and another will
    start after `delay_s`. Not a terminal: the job's one terminal is its last attempt's."""

    attempt: Annotated[int, Meta(description="The attempt that ended.")]
    outcome: Annotated[Outcome, Meta(description="How it ended.")]
    next_attempt: Annotated[int, Meta(description="The attempt that will start.")]
    delay_s: Annotated[float, Meta(description="Seconds from `ts` until it may start.")]
    ts: Annotated[str, Meta(description="When the retry was decided (RFC 3339).")]


class Terminal(_Event, frozen=True, tag="terminal"):
    """The job's one and last event. ``attempt`` is 0 for a job that never started."""

    state: Annotated[TerminalState, Meta(description="How the job ended.")]
    finished_at: Annotated[str, Meta(description="When it ended (RFC 3339).")]
    attempt: Annotated[int, Meta(description="The attempt that ended it; 0 if none started.")]
    lines: Annotated[LineCounts, Meta(description="Lines the last attempt printed.")]
    truncated: Annotated[
        bool, Meta(description="True when output past `limits.max_output_bytes` was dropped.")
    ]
    signals_sent: Annotated[
        list[str],
        Meta(
            description="Signals sent to stop it, in order: the manifest's `stop_signal` "
            '(`"TERM"` unless it says otherwise), then `"KILL"`.'
        ),
    ]
    exit_code: Annotated[int | None, Meta(description="The process's exit status.")] = None
    signal: Annotated[
        str | None, Meta(description="The signal that ended the process, e.g. `KILL`.")
    ] = None
    started_at: Annotated[str | None, Meta(description="When the last attempt started.")] = None
    duration_s: Annotated[
        float | None, Meta(description="Seconds from start to end of the last attempt.")
    ] = None
    error: Annotated[
        TerminalError | None, Meta(description="Why, when it did not end by a normal exit.")
    ] = None
    rusage: Annotated[Rusage | None, Meta(description="Resources used, when the process ran.")] = (
        None
    )
    result: Annotated[
        Any,
        Meta(description="The JSON value the job wrote to `$DOMED_RESULT`, if it wrote one."),
    ] = None
    artifacts: Annotated[
        list[Artifact] | None,
        Meta(description="The files stored for the job, when its manifest names `artifacts`."),
    ] = None


def never_ran(
    job_id: str,
    state: TerminalState,
    finished_at: str,
    attempt: int,
    error: TerminalError | None = None,
    started_at: str | None = None,
) -> Terminal:
    """The terminal of a job (or attempt) that produced no output: canceled before it
    started, could not start, or lost with its executor."""
    return Terminal(
        job_id=job_id,
        state=state,
        finished_at=finished_at,
        attempt=attempt,
        lines=LineCounts(),
        truncated=False,
        signals_sent=[],
        error=error,
        started_at=started_at,
    )


def queue_timed_out(job_id: str, queue_timeout_s: float) -> Terminal:
    """The terminal of a job that waited to start longer than its ``queue_timeout_s``."""
    waited = f"it waited to start longer than its queue timeout ({queue_timeout_s:g}s)"
    error = TerminalError(TerminalErrorCode.QUEUE_TIMEOUT, waited)
    return never_ran(job_id, "timed_out", now_iso(), 0, error)


Event = Queued | Cancel | Started | Log | Progress | Retry | Terminal
"""Any job event; ``kind`` tells them apart on the wire (a tagged union)."""


def now_iso() -> str:
    """Now, in the contract's timestamp format: RFC 3339, UTC, microseconds, ``Z``."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def timestamp(text: str) -> float:
    """An RFC 3339 timestamp of the contract (``...Z`` or with an offset) as epoch seconds;
    ValueError for anything else."""
    return datetime.fromisoformat(text).timestamp()


_encoder = msgspec.json.Encoder()

# The decoder's own method, not a function around it: a projector rebuild calls it once
# per event, and the extra Python frame cost 5% of the decode.
decode_event = msgspec.json.Decoder(Event).decode
"""Decode one stored event payload (bytes) into its class; msgspec.ValidationError (a
msgspec.DecodeError) for a payload that is not an event."""


def encode_event(event: Event) -> bytes:
    """The JSON payload of ``event``, as it is published and stored."""
    return _encoder.encode(event)
