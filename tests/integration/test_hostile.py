"""Issue #16 replayed through real NATS, as an attacker with one client would: nothing a
client sends can inject an option, leak a secret, get a 500 or grow the stream without
bound."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

from ulid import ULID

from contracts import subjects
from contracts.events import Queued, encode_event, now_iso
from services.runtime.natsserver import NatsServer
from tests.support import Domed, log_lines, terminal_of


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


async def stream_last_seq(d: Domed) -> int:
    info = await d.nc.jetstream().stream_info(subjects.STREAM)
    return int(info.state.last_seq)


# ---- option injection -------------------------------------------------------------------


async def test_a_value_cannot_become_an_option_through_a_prefix_placeholder(
    domed: Domed,
) -> None:
    """``"{prefix}{value}"`` with an empty prefix put ``--evil-option`` at the start of an
    element: the guard looked at the placeholder's place in the template."""
    for params in (
        {"prefix": "", "value": "--evil-option"},
        {"prefix": "-", "value": "x"},
        {"value": "ok", "n": -1},
        {"value": "ok", "n": -9},
    ):
        r = await domed.request(subjects.SUBMIT, {"tool": "test.prefixed", "params": params})
        assert r.error is not None and r.error["code"] == "invalid_params", (params, r.data)
    _, events = await domed.run("test.prefixed", {"prefix": "a", "value": "-b", "n": 3})
    assert json.loads("\n".join(log_lines(events))) == ["a-b", "--count=3", "3"]


async def test_the_executor_refuses_an_option_in_a_job_the_router_never_checked(
    domed: Domed,
) -> None:
    """A ``queued`` event written past the router (by anyone who may publish it) is checked
    again by the executor before the spawn: the job fails, the tool never runs."""
    job_id = str(ULID())
    tool = await domed.request(subjects.TOOLS_GET, {"id": "test.prefixed"})
    queued = Queued(
        job_id=job_id,
        tool="test.prefixed",
        tool_version=1,
        manifest_sha256=tool.data["manifest_sha256"],
        params={"prefix": "", "value": "--evil-option"},
        submitted_at=now_iso(),
        timeout_s=30,
        labels={},
    )
    await domed.nc.jetstream().publish(
        f"{subjects.INGEST_PREFIX}.job.{job_id}.queued",
        encode_event(queued),
        headers={"Nats-Msg-Id": f"{job_id}.queued.0"},
    )
    events = await domed.events(job_id)
    terminal = terminal_of(events)
    assert terminal.state == "failed" and "option" in terminal.error.message
    assert "started" not in [e.kind for e in events] and log_lines(events) == []


# ---- secrets ------------------------------------------------------------------------------


async def test_secrets_reach_the_job_by_env_and_by_a_private_file_never_argv(
    domed: Domed,
) -> None:
    token = unique("env-token")
    _, events = await domed.run("test.secret", {"token": token})
    assert log_lines(events) == ["the token is ***!"]
    key = unique("file-key")
    _, events = await domed.run("test.secret_file", {"key": key})
    assert terminal_of(events).state == "succeeded"
    report, line = log_lines(events)
    seen = json.loads(report)
    assert seen["token_in_argv"] is False and seen["mode"] == "0o400"
    assert line == "the token is ***!" and not Path(seen["path"]).exists()
    assert all(key.encode() not in encode_event(e.event) for e in events)


async def test_a_secret_longer_than_the_split_point_is_masked_whole(domed: Domed) -> None:
    """With ``max_line_bytes: 64``, a 62-character secret printed across the split point
    leaked 51 of its characters: masking ran after splitting. Progress messages too."""
    token = "T" + secrets.token_hex(31)[:61]
    for pad in (1, 20, 40, 63):
        job_id, events = await domed.run("test.secret_split", {"token": token, "pad": pad})
        text = "".join(log_lines(events))
        assert all(token[i : i + 6] not in text for i in range(len(token) - 6)), text
        assert "***" in text
        progress = [e.event for e in events if e.kind == "progress"]
        assert progress and all(token[:6] not in (p.message or "") for p in progress)
        assert all(token[:6].encode() not in encode_event(e.event) for e in events)


async def test_an_error_about_a_secret_never_repeats_its_value(domed: Domed) -> None:
    """A too-short secret was echoed in ``invalid_params`` (any ``_INBOX.>`` reader sees it)."""
    for body in (
        {"tool": "test.secret", "params": {"token": "zq7"}},
        {"tool": "test.secret", "params": {"token": ["zq7x9"]}},
        {"tool": "test.secret", "params": {"token": "zq7x9", "zq7x9": "zq7x9"}},
    ):
        for subject in (subjects.SUBMIT, subjects.TOOLS_EXPLAIN):
            r = await domed.request(subject, body)
            assert r.error is not None and r.error["code"] == "invalid_params", r.data
            assert "zq7" not in json.dumps(r.data) and "zq7" not in json.dumps(r.headers)


async def test_secrets_are_sealed_at_rest_and_the_bucket_expires_them(
    fresh_domed: Domed, fresh_server: NatsServer, tmp_path: Path
) -> None:
    """Purged secrets stayed in clear text in the ``KV_domed-secrets`` block files, and the
    bucket had no TTL."""
    d = fresh_domed
    js = d.nc.jetstream()
    kv = await js.key_value(subjects.KV_SECRETS)
    assert (await kv.status()).ttl > 0
    blocker = await d.submit("test.limited", {"seconds": 30})
    await d.until_kind(blocker, "started")
    token = unique("at-rest")
    # The only slot is taken, so this job waits with its secrets stored.
    waiting = await d.submit("test.secret", {"token": token})
    stored = (await kv.get(waiting)).value
    assert stored and token.encode() not in stored
    await d.request(subjects.CANCEL, {"job_id": blocker})
    assert log_lines(await d.events(waiting)) == ["the token is ***!"]
    store = tmp_path / "nats"
    leaked = [p for p in store.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaked == []


# ---- unbounded writes ------------------------------------------------------------------


async def test_cancel_is_idempotent(domed: Domed) -> None:
    """300 cancels of one running job stored 300 ``cancel`` events."""
    job_id = await domed.submit("test.sleep", {"seconds": 30})
    await domed.until_kind(job_id, "started")
    replies = await asyncio.gather(
        *(domed.request(subjects.CANCEL, {"job_id": job_id, "reason": str(i)}) for i in range(60))
    )
    states = {r.data.get("state") if r.error is None else r.error["code"] for r in replies}
    assert states <= {"running", "canceled", "already_terminal"}, states
    events = await domed.events(job_id)
    assert [e.kind for e in events].count("cancel") == 1
    assert terminal_of(events).state == "canceled"


async def test_oversized_requests_are_too_large_and_store_nothing(fresh_domed: Domed) -> None:
    """900 KB of labels went into the stream, KV and SQLite; params and reasons had no cap."""
    domed = fresh_domed  # nothing else writes to its stream meanwhile
    running = await domed.submit("test.sleep", {"seconds": 30})
    await domed.until_kind(running, "started")
    before = await stream_last_seq(domed)
    big = "x" * 900_000
    for subject, body in (
        (subjects.SUBMIT, {"tool": "test.argv", "params": {"value": "a"}, "labels": {"a": big}}),
        (
            subjects.SUBMIT,
            {"tool": "test.argv", "params": {"value": "a"}, "labels": {"a": "x" * 20_000}},
        ),
        (subjects.SUBMIT, {"tool": "test.argv", "params": {"value": "y" * 100_000}}),
        (
            subjects.SUBMIT,
            {"tool": "test.argv", "params": {"value": "a", "items": ["z" * 40_000] * 2}},
        ),
        (subjects.CANCEL, {"job_id": running, "reason": "r" * 5000}),
        (subjects.TOOLS_EXPLAIN, {"tool": "test.argv", "params": {"value": "y" * 100_000}}),
    ):
        r = await domed.request(subject, body)
        assert r.error is not None and r.error["code"] == "too_large", (subject, r.data)
        assert r.headers["Nats-Service-Error-Code"] == "413"
    assert await stream_last_seq(domed) == before
    await domed.request(subjects.CANCEL, {"job_id": running})


async def test_a_job_list_page_stays_under_the_max_payload(domed: Domed) -> None:
    """Two jobs with big labels made ``domed.jobs.list`` fail for every client."""
    label = unique("big")
    big = "v" * 60_000
    jobs = [
        await domed.submit(
            "test.argv", {"value": big, "items": [big]}, labels={"t": label, "pad": "p" * 15_000}
        )
        for _ in range(12)
    ]
    for job_id in jobs:
        await domed.projected(job_id)
    seen: list[str] = []
    cursor = None
    for _ in range(12):
        body = {"label": f"t={label}", "limit": 500, **({"cursor": cursor} if cursor else {})}
        msg = await domed.nc.request(subjects.JOBS_LIST, json.dumps(body).encode(), timeout=10)
        assert len(msg.data) < domed.nc.max_payload and not msg.headers, msg.data[:300]
        page = json.loads(msg.data)
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page.get("next_cursor")
        if cursor is None:
            break
    assert seen == jobs[::-1]


# ---- no 500s ------------------------------------------------------------------------------


async def test_malformed_bodies_get_a_typed_4xx_never_internal(domed: Domed) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    shallow_but_deep = b"[" * 500 + b"]" * 500
    for subject, raw, code in (
        (
            subjects.SUBMIT,
            b'{"tool":"demo.echo","params":{"text":' + deep + b"}}",
            "invalid_request",
        ),
        (
            subjects.SUBMIT,
            b'{"tool":"test.argv","params":{"value":' + shallow_but_deep + b"}}",
            "invalid_params",
        ),
        (
            subjects.TOOLS_EXPLAIN,
            b'{"tool":"test.argv","params":{"value":' + shallow_but_deep + b"}}",
            "invalid_params",
        ),
        (subjects.JOBS_EVENTS, b'{"job_id":"01JOBX","after_seq":-5}', "invalid_request"),
        (subjects.JOBS_EVENTS, b'{"job_id":"01JOBX","limit":-1}', "invalid_request"),
        (subjects.JOBS_LIST, b'{"limit":-3}', "invalid_request"),
        (subjects.CANCEL, b'{"job_id":' + deep + b"}", "invalid_request"),
        (subjects.SUBMIT, b'{"tool":"x' + b"y" * 200_000 + b'"}', "unknown_tool"),
    ):
        r = await domed.request(subject, None, raw=raw)
        assert r.error is not None and r.error["code"] == code, (subject, raw[:60], r.data)


# ---- idempotency --------------------------------------------------------------------------


async def test_an_idempotency_key_is_bound_to_its_request(fresh_domed: Domed) -> None:
    """The same key with another tool and params silently returned the first job."""
    domed = fresh_domed  # nothing else writes to its stream meanwhile
    key = unique("idem")
    first = await domed.request(
        subjects.SUBMIT, {"tool": "demo.echo", "params": {"text": "a"}, "idempotency_key": key}
    )
    assert first.error is None and first.data["duplicate"] is False
    same = await domed.request(
        subjects.SUBMIT, {"tool": "demo.echo", "params": {"text": "a"}, "idempotency_key": key}
    )
    assert same.data == {**first.data, "duplicate": True}
    await domed.events(first.data["job_id"])  # it has ended: it stores nothing more
    before = await stream_last_seq(domed)
    for body in (
        {"tool": "demo.echo", "params": {"text": "b"}},
        {"tool": "test.argv", "params": {"value": "a"}},
        {"tool": "demo.echo", "params": {"text": "a"}, "labels": {"x": "y"}},
        {"tool": "demo.echo", "params": {"text": "a"}, "timeout_s": 3},
    ):
        r = await domed.request(subjects.SUBMIT, {**body, "idempotency_key": key})
        assert r.error is not None and r.error["code"] == "idempotency_conflict", (body, r.data)
        assert r.headers["Nats-Service-Error-Code"] == "409"
    assert await stream_last_seq(domed) == before
