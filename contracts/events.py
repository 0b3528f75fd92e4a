"""The six job events of SPEC.md part 2, as one tagged union.

Each payload carries ``kind`` (the same as the subject's last token), so a reader
decodes any stored event with ``decode_event(data)`` and gets the right class.
Timestamps are RFC 3339 strings in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

TerminalState = Literal["succeeded", "failed", "canceled", "timed_out", "lost"]
JobStateName = Literal["queued", "running", "succeeded", "failed", "canceled", "timed_out", "lost"]
TERMINAL_STATES: frozenset[str] = frozenset(
    {"succeeded", "failed", "canceled", "timed_out", "lost"}
)


class _Event(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="kind", gc=False):
    """``gc=False`` here and on the job state types (``contracts.api``): values decoded
    from JSON cannot form reference cycles, so the garbage collector need not track
    them. A projector rebuild makes two or three of these per event; untracked, it
    spends 2-3% less CPU (docs/benchmarks.md)."""

    job_id: str


class Queued(_Event, frozen=True, tag="queued"):
    tool: str
    tool_version: int
    manifest_sha256: str
    params: dict[str, Any]
    submitted_at: str
    timeout_s: float
    labels: dict[str, str]
    idempotency_key: str | None = None


class Cancel(_Event, frozen=True, tag="cancel"):
    requested_at: str
    reason: str | None = None


class Started(_Event, frozen=True, tag="started"):
    executor: str
    pid: int
    attempt: int
    started_at: str


class Log(_Event, frozen=True, tag="log"):
    attempt: int
    stream: Literal["stdout", "stderr"]
    seq: int
    lines: list[str]
    ts: str


class Progress(_Event, frozen=True, tag="progress"):
    attempt: int
    ts: str
    current: float | None = None
    total: float | None = None
    percent: float | None = None
    message: str | None = None


class TerminalError(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str
    message: str


class LineCounts(msgspec.Struct, frozen=True, gc=False):
    stdout: int = 0
    stderr: int = 0


class Rusage(msgspec.Struct, frozen=True):
    max_rss_kb: int
    user_s: float
    sys_s: float


class Terminal(_Event, frozen=True, tag="terminal"):
    """The job's one and last event. ``attempt`` is 0 for a job that never started."""

    state: TerminalState
    finished_at: str
    attempt: int
    lines: LineCounts
    truncated: bool
    signals_sent: list[str]
    exit_code: int | None = None
    signal: str | None = None
    started_at: str | None = None
    duration_s: float | None = None
    error: TerminalError | None = None
    rusage: Rusage | None = None


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


Event = Queued | Cancel | Started | Log | Progress | Terminal


def now_iso() -> str:
    """Now, in the contract's timestamp format: RFC 3339, UTC, microseconds, ``Z``."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_encoder = msgspec.json.Encoder()

# Decode one stored event payload (bytes); raises msgspec.ValidationError on a bad one.
# The decoder's own method, not a function around it: a projector rebuild calls it once
# per event, and the extra Python frame cost 5% of the decode.
decode_event = msgspec.json.Decoder(Event).decode


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)
