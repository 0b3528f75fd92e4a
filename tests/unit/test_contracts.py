"""contracts/: committed schemas match the types; events round-trip; subjects build and parse."""

from __future__ import annotations

import gc
import json
import typing
from pathlib import Path

import msgspec
import pytest

from contracts import subjects
from contracts.api import JobState
from contracts.errors import STATUS, DomedError, ErrorCode
from contracts.events import (
    Cancel,
    Event,
    LineCounts,
    Log,
    Outcome,
    Progress,
    Queued,
    Retry,
    Rusage,
    Started,
    Terminal,
    TerminalError,
    decode_event,
    encode_event,
    never_ran,
)
from contracts.schemas import all_schemas
from services.cli.schemas import render

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "contracts" / "schemas"
TS = "2025-01-01T00:00:00.000000Z"
JOB = "01ARZ3NDEKTSV4RRFFQ69G5FAV"

# --- schema drift -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(all_schemas()))
def test_committed_schema_matches_the_types(name: str) -> None:
    path = SCHEMAS_DIR / f"{name}.json"
    assert path.is_file(), f"{path.name} is missing: run `just schemas`"
    expected = render(all_schemas()[name])
    assert path.read_text() == expected, f"{path.name} drifted from the types: run `just schemas`"


def test_no_stale_schema_files_are_committed() -> None:
    committed = {p.stem for p in SCHEMAS_DIR.glob("*.json")}
    stale = committed - set(all_schemas())
    assert not stale, f"schemas for no type {sorted(stale)}: run `just schemas`"


def test_every_schema_names_its_dialect_and_id() -> None:
    for name, schema in all_schemas().items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"https://domed.dev/schemas/{name}.json"
        json.dumps(schema)  # plain JSON data


# --- event round trip ---------------------------------------------------------------------

EVENTS: list[Event] = [
    Queued(
        job_id=JOB,
        tool="demo.echo",
        tool_version=1,
        manifest_sha256="ab" * 32,
        params={"text": "hi", "nested": {"list": [1, 2.5, None, True]}},
        submitted_at=TS,
        timeout_s=30.0,
        labels={"team": "x"},
        idempotency_key="key-1",
    ),
    Queued(
        job_id=JOB,
        tool="demo.echo",
        tool_version=1,
        manifest_sha256="ab" * 32,
        params={},
        submitted_at=TS,
        timeout_s=1.5,
        labels={},
    ),
    Cancel(job_id=JOB, requested_at=TS, reason="user asked"),
    Cancel(job_id=JOB, requested_at=TS),
    Started(job_id=JOB, executor="host-1.1234", pid=1234, attempt=1, started_at=TS),
    Log(job_id=JOB, attempt=1, stream="stdout", seq=0, lines=["a", "", "é漢🚀", "\x00"], ts=TS),
    Log(job_id=JOB, attempt=2, stream="stderr", seq=10, lines=[], ts=TS),
    Progress(job_id=JOB, attempt=1, ts=TS, current=1, total=4, percent=25.0, message="step"),
    Progress(job_id=JOB, attempt=1, ts=TS),
    Retry(
        job_id=JOB,
        attempt=1,
        outcome=Outcome("failed", exit_code=3),
        next_attempt=2,
        delay_s=2.5,
        ts=TS,
    ),
    Retry(
        job_id=JOB,
        attempt=2,
        outcome=Outcome("lost", error=TerminalError("executor_lost", "gone")),
        next_attempt=3,
        delay_s=0.0,
        ts=TS,
    ),
    Terminal(
        job_id=JOB,
        state="failed",
        finished_at=TS,
        attempt=2,
        exit_code=None,
        signal="KILL",
        started_at=TS,
        duration_s=1.25,
        error=TerminalError("executor_lost", "gone"),
        lines=LineCounts(5, 6),
        truncated=True,
        signals_sent=["TERM", "KILL"],
        rusage=Rusage(max_rss_kb=2048, user_s=0.25, sys_s=0.125),
    ),
    never_ran(JOB, "canceled", TS, 0),
]


def test_round_trip_samples_cover_every_event_type() -> None:
    assert {type(e) for e in EVENTS} == set(typing.get_args(Event))


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_round_trips_through_its_wire_form(event: Event) -> None:
    data = encode_event(event)
    assert decode_event(data) == event
    assert type(decode_event(data)) is type(event)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_decoded_events_are_left_to_reference_counting(event: Event) -> None:
    """A rebuild decodes 200k events and folds each into a new job state; neither is
    tracked by the garbage collector (the measured 2-3%: contracts.events._Event)."""
    assert not gc.is_tracked(decode_event(encode_event(event)))


def test_decoded_job_states_are_left_to_reference_counting() -> None:
    state = msgspec.json.decode(
        b'{"job_id": "j", "tool": "t", "params": {"a": [1]}, "labels": {}, "state": "queued",'
        b' "submitted_at": "s", "last_seq": 1, "lines": {}}',
        type=JobState,
    )
    assert not gc.is_tracked(state) and not gc.is_tracked(state.lines)


KIND_OF = {
    Queued: "queued",
    Cancel: "cancel",
    Started: "started",
    Log: "log",
    Progress: "progress",
    Retry: "retry",
    Terminal: "terminal",
}


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_encoded_event_carries_its_kind(event: Event) -> None:
    payload = json.loads(encode_event(event))
    assert payload["kind"] == KIND_OF[type(event)]
    assert payload["job_id"] == JOB


def test_every_event_kind_is_a_subject_kind() -> None:
    assert sorted(KIND_OF.values()) == sorted(subjects.EVENT_KINDS)


def test_unset_optional_fields_are_left_out_of_the_wire_form() -> None:
    payload = json.loads(encode_event(Cancel(job_id=JOB, requested_at=TS)))
    assert payload == {"kind": "cancel", "job_id": JOB, "requested_at": TS}


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"job_id": "x"}',
        b'{"kind": "nope", "job_id": "x"}',
        b'{"kind": "cancel", "job_id": "x"}',
        b'{"kind": "log", "job_id": "x", "attempt": 1, "stream": "stdin", "seq": 0, "lines": [], "ts": "t"}',
        b'{"kind": "terminal", "job_id": "x", "state": "running", "finished_at": "t"}',
    ],
)
def test_bad_payload_is_refused_on_decode(data: bytes) -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        decode_event(data)


# --- subjects -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", subjects.EVENT_KINDS)
def test_event_subject_round_trips_through_the_parser(kind: str) -> None:
    subject = subjects.event_subject(JOB, kind)
    assert subject == f"job.{JOB}.{kind}"
    assert subjects.parse_event_subject(subject) == (JOB, kind)
    assert subjects.job_of_event_subject(subject.encode()) == JOB


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "job",
        f"job.{JOB}",
        f"job.{JOB}.nope",
        f"jobs.{JOB}.queued",
        f"ingest.job.{JOB}.queued",
        f"job.{JOB}.log.extra",
        "job.a.b.log",
    ],
)
def test_parse_event_subject_refuses_other_subjects(subject: str) -> None:
    with pytest.raises(ValueError):
        subjects.parse_event_subject(subject)
    with pytest.raises(ValueError):
        subjects.job_of_event_subject(subject.encode())


def test_ingest_subject_is_the_stored_subject_under_the_ingest_prefix() -> None:
    assert subjects.ingest_subject(JOB, "log") == f"ingest.job.{JOB}.log"
    assert subjects.ingest_subject(JOB, "log") == "ingest." + subjects.event_subject(JOB, "log")


def test_job_events_filter_matches_one_jobs_events() -> None:
    assert subjects.job_events_filter(JOB) == f"job.{JOB}.*"


@pytest.mark.parametrize(
    ("n", "expected"), [(0, f"{JOB}.log.0"), (17, f"{JOB}.log.17"), ("a1", f"{JOB}.log.a1")]
)
def test_msg_id_names_job_kind_and_number(n: int | str, expected: str) -> None:
    assert subjects.msg_id(JOB, "log", n) == expected


def test_stream_subjects_are_the_ingest_and_stored_wildcards() -> None:
    assert subjects.STREAM_SUBJECTS == "ingest.job.*.*"
    assert subjects.STORED_SUBJECTS == "job.*.*"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (JOB, True),
        ("a", True),
        ("A-b_9", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("a.b", False),
        ("*", False),
        (">", False),
        ("a b", False),
        pytest.param("a\n", False),
        ("é", False),
        ("a/b", False),
    ],
)
def test_job_id_is_a_single_url_safe_subject_token(value: str, ok: bool) -> None:
    assert subjects.is_job_id(value) is ok


# --- errors -------------------------------------------------------------------------------


def test_every_error_code_has_a_status() -> None:
    assert set(STATUS) == set(ErrorCode)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.INVALID_REQUEST, 400),
        (ErrorCode.INVALID_PARAMS, 400),
        (ErrorCode.UNKNOWN_TOOL, 404),
        (ErrorCode.UNKNOWN_JOB, 404),
        (ErrorCode.ALREADY_TERMINAL, 409),
        (ErrorCode.UNAVAILABLE, 503),
    ],
)
def test_domed_error_carries_the_spec_status_and_body(code: ErrorCode, status: int) -> None:
    error = DomedError(code, "why", [{"path": "$.n"}])
    assert error.status == status
    body = json.loads(msgspec.json.encode(error.body()))
    assert body == {"error": {"code": code.value, "message": "why", "details": [{"path": "$.n"}]}}


def test_error_body_without_details_leaves_them_out() -> None:
    body = json.loads(msgspec.json.encode(DomedError(ErrorCode.UNKNOWN_JOB, "no job").body()))
    assert body == {"error": {"code": "unknown_job", "message": "no job"}}
