"""The router's whole API through real NATS: every error code, injection safety,
idempotency under a race, cancel before start, explain, and a broken catalogue."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import nats.js.errors
import pytest

from contracts import subjects
from contracts.events import encode_event
from services.catalogue.loader import CatalogueError
from services.router import app as router_app
from services.router.app import Router, run_router
from services.runtime import sealing
from services.runtime.natsserver import NatsServer
from services.runtime.settings import Settings
from tests.support import ROOT, Domed, log_lines, run_cli, terminal_of


async def test_invalid_request_bodies_are_refused(domed: Domed) -> None:
    for raw in (
        b"not json",
        b"[1,2]",
        b'{"params": {}}',
        b'{"tool": 5}',
        b'{"tool": "demo.echo", "nope": 1}',
    ):
        r = await domed.request(subjects.SUBMIT, None, raw=raw)
        assert r.error is not None and r.error["code"] == "invalid_request", (raw, r.data)
        assert r.headers["Nats-Service-Error-Code"] == "400"


async def test_invalid_params_lists_every_failure_with_its_path(domed: Domed) -> None:
    r = await domed.request(
        subjects.SUBMIT,
        {"tool": "python.script", "params": {"script": "../x", "args": [1, "ok", 2]}},
    )
    assert r.error["code"] == "invalid_params"
    paths = sorted(d["path"] for d in r.error["details"])
    assert paths == ["$.args[0]", "$.args[2]", "$.script"]


async def test_injection_strings_reach_the_process_as_single_literal_arguments(
    domed: Domed,
) -> None:
    hostile = [
        "; rm -rf / #",
        "$(id)",
        "`id`",
        "a b  c",
        "*",
        "-rf",
        "'quoted'",
        '"dq"',
        "x\ny",
        "&& echo pwned |",
    ]
    for value in hostile:
        _, events = await domed.run("test.argv", {"value": value, "items": ["$HOME", "two words"]})
        assert terminal_of(events).state == "succeeded"
        argv = json.loads("\n".join(log_lines(events)))
        assert argv == [value, f"x{value}y", "$HOME", "two words"], value


async def test_leading_dash_without_double_dash_is_refused(domed: Domed) -> None:
    r = await domed.request(subjects.SUBMIT, {"tool": "demo.echo", "params": {"text": "-n"}})
    assert r.error["code"] == "invalid_params" and r.error["details"][0]["path"] == "$.text"


async def test_timeout_above_the_manifest_limit_is_refused(domed: Domed) -> None:
    r = await domed.request(
        subjects.SUBMIT, {"tool": "demo.echo", "params": {"text": "x"}, "timeout_s": 10_000}
    )
    assert r.error["code"] == "invalid_request"


async def test_queued_event_carries_manifest_identity_and_masks_secrets(domed: Domed) -> None:
    tool = await domed.request(subjects.TOOLS_GET, {"id": "test.secret"})
    job_id, events = await domed.run(
        "test.secret", {"token": "hunter2-secret"}, labels={"team": "a"}
    )
    queued = events[0].event
    assert queued.tool_version == 1 and queued.manifest_sha256 == tool.data["manifest_sha256"]
    assert queued.params == {"token": "***"} and queued.labels == {"team": "a"}
    assert log_lines(events) == ["the token is ***!"]
    assert all(b"hunter2" not in encode_event(e.event) for e in events)
    state = await domed.projected(job_id)
    assert state["params"] == {"token": "***"} and state["state"] == "succeeded"


async def test_idempotency_key_returns_the_first_job_even_when_racing(domed: Domed) -> None:
    body = {
        "tool": "demo.echo",
        "params": {"text": "once"},
        "idempotency_key": f"race-{id(domed)}-{asyncio.get_running_loop().time()}",
    }
    replies = await asyncio.gather(*(domed.request(subjects.SUBMIT, body) for _ in range(8)))
    ids = {r.data["job_id"] for r in replies}
    assert len(ids) == 1
    assert sorted(r.data["duplicate"] for r in replies) == [False] + [True] * 7
    job_id = ids.pop()
    events = await domed.events(job_id)
    assert [e.kind for e in events].count("queued") == 1
    again = await domed.request(subjects.SUBMIT, body)
    assert again.data == {"job_id": job_id, "state": "queued", "duplicate": True}


async def test_cancel_of_a_queued_job_never_starts_it(domed: Domed) -> None:
    # Fill the limited tool's only slot, so the next job of it waits in the queue.
    blocker = await domed.submit("test.limited", {"seconds": 30})
    await domed.until_kind(blocker, "started")
    waiting = await domed.submit("test.limited", {"seconds": 0})
    r = await domed.request(subjects.CANCEL, {"job_id": waiting, "reason": "changed my mind"})
    assert r.data == {"job_id": waiting, "state": "canceled"}
    events = await domed.events(waiting)
    assert [e.kind for e in events] == ["queued", "cancel", "terminal"]
    assert terminal_of(events).state == "canceled" and events[1].event.reason == "changed my mind"
    r = await domed.request(subjects.CANCEL, {"job_id": waiting})
    assert r.error["code"] == "already_terminal" and r.headers["Nats-Service-Error-Code"] == "409"
    r = await domed.request(subjects.CANCEL, {"job_id": blocker})
    assert r.data["state"] in ("running", "canceled")
    assert terminal_of(await domed.events(blocker)).state == "canceled"
    assert (await domed.projected(waiting))["state"] == "canceled"


async def test_cancel_of_an_unknown_job(domed: Domed) -> None:
    for job_id in ("01NOSUCHJOB0000000000000000", "not a job", "a.b"):
        r = await domed.request(subjects.CANCEL, {"job_id": job_id})
        assert r.error["code"] == "unknown_job" and r.headers["Nats-Service-Error-Code"] == "404"


async def test_tools_list_get_and_explain(domed: Domed) -> None:
    listed = (await domed.request(subjects.TOOLS_LIST, {})).data["tools"]
    ids = [t["id"] for t in listed]
    assert ids == sorted(ids) and "demo.echo" in ids and "files.checksum" in ids
    got = (await domed.request(subjects.TOOLS_GET, {"id": "demo.countdown"})).data
    assert got["entrypoint"][0] == "python3" and got["parameters"]["required"] == ["n"]
    assert (await domed.request(subjects.TOOLS_GET, {"id": "nope"})).error["code"] == "unknown_tool"
    explained = (
        await domed.request(
            subjects.TOOLS_EXPLAIN, {"tool": "test.secret", "params": {"token": "abcd1234"}}
        )
    ).data
    assert explained["argv"][-2:] == ["--env", "API_TOKEN"]
    assert "abcd1234" not in json.dumps(explained)
    assert (
        explained["env_names"] == ["API_TOKEN", "DOMED_JOB_ID", "DOMED_RESULT", "PATH"]
        and explained["working_dir_policy"] == "temp"
    )
    assert len(explained["manifest_sha256"]) == 64
    bad = await domed.request(
        subjects.TOOLS_EXPLAIN, {"tool": "demo.countdown", "params": {"n": "x"}}
    )
    assert bad.error["code"] == "invalid_params"


async def test_router_refuses_a_broken_catalogue_listing_every_problem(
    tmp_path: Path, nats_server
) -> None:
    root = tmp_path / "ssot"
    shutil.copytree(ROOT / "ssot", root)
    (root / "tools" / "bad1.yaml").write_text("id: Bad Id\nversion: -1\nentrypoint: []\n")
    (root / "tools" / "bad2.yaml").write_text(
        "id: demo.echo\nversion: 1\nentrypoint: ['x', '{nope}']\n"
    )
    (root / "tools" / "bad3.yaml").write_text("id: [unclosed\n")
    with pytest.raises(CatalogueError) as caught:
        await run_router(Settings(nats_url=nats_server.url, ssot=root), asyncio.Event())
    text = str(caught.value)
    for fragment in (
        "bad1.yaml",
        "id",
        "version",
        "entrypoint",
        "bad2.yaml",
        "{nope}",
        "bad3.yaml",
        "YAML syntax",
    ):
        assert fragment in text, fragment
    cli = await run_cli("router", "--ssot", str(root), "--nats-url", nats_server.url, timeout=30)
    assert cli.returncode == 2 and "bad1.yaml" in cli.stderr and "refusing to start" in cli.stderr
    val = await run_cli("tools", "validate", str(root), timeout=30)
    assert val.returncode == 1 and val.stderr.count("error") >= 5


async def test_submit_answers_unavailable_when_jetstream_is_gone(
    fresh_domed: Domed, fresh_server
) -> None:
    js = fresh_domed.nc.jetstream()
    await js.delete_stream(subjects.STREAM)  # the stream is gone: nothing can be stored
    r = await fresh_domed.request(subjects.SUBMIT, {"tool": "demo.echo", "params": {"text": "x"}})
    assert r.error["code"] == "unavailable" and r.headers["Nats-Service-Error-Code"] == "503"


async def test_a_duplicate_submit_after_the_job_ended_does_not_store_its_secrets_again(
    domed: Domed,
) -> None:
    body = {
        "tool": "test.secret",
        "params": {"token": "first-token"},
        "idempotency_key": f"secret-{asyncio.get_running_loop().time()}",
    }
    first = await domed.request(subjects.SUBMIT, body)
    job_id = first.data["job_id"]
    assert terminal_of(await domed.events(job_id)).state == "succeeded"
    again = await domed.request(subjects.SUBMIT, {**body, "params": {"token": "second-token"}})
    assert again.data == {"job_id": job_id, "state": "queued", "duplicate": True}
    kv = await domed.nc.jetstream().key_value(subjects.KV_SECRETS)
    with pytest.raises(nats.js.errors.KeyNotFoundError):  # KeyDeletedError is one
        await kv.get(job_id)


async def test_a_job_canceled_before_it_started_leaves_no_secrets_behind(
    fresh_domed: Domed,
) -> None:
    d = fresh_domed
    await d.stop_service("executor")  # so the job waits in the queue
    job_id = await d.submit("test.secret", {"token": "never-used"})
    r = await d.request(subjects.CANCEL, {"job_id": job_id})
    assert r.data["state"] == "canceled"
    assert terminal_of(await d.events(job_id)).state == "canceled"
    kv = await d.nc.jetstream().key_value(subjects.KV_SECRETS)
    with pytest.raises(nats.js.errors.KeyNotFoundError):  # KeyDeletedError is one
        await kv.get(job_id)


async def test_a_full_event_stream_refuses_submits_saying_so(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "d", services=("router",), max_bytes=16_384
    ) as d:
        body = {"tool": "demo.echo", "params": {"text": "x" * 500}}
        for _ in range(100):  # about 20 fit
            r = await d.request(subjects.SUBMIT, body)
            if r.error is not None:
                break
        assert r.error is not None and r.error["code"] == "unavailable", r.data
        assert "maximum bytes exceeded" in r.error["message"], r.error
        assert r.headers["Nats-Service-Error-Code"] == "503"


async def test_secrets_of_a_submit_that_could_not_store_its_job_are_deleted(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router stores a job's secret parameters, then its ``queued``. When the stream
    refuses the ``queued`` (here: full), no executor will ever delete them."""
    monkeypatch.setattr(router_app, "UNSURE_SECRETS_AFTER_S", 0.2)
    monkeypatch.setattr(router_app, "UNSURE_RECHECK_S", 0.1)
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "d", services=("router",), max_bytes=16_384
    ) as d:
        body = {"tool": "demo.echo", "params": {"text": "x" * 500}}
        for _ in range(100):  # about 20 fit
            if (await d.request(subjects.SUBMIT, body)).error is not None:
                break
        kv = await d.nc.jetstream().key_value(subjects.KV_SECRETS)
        watcher = await kv.watchall()
        try:
            assert await watcher.updates(timeout=2) is None  # nothing stored yet
            r = await d.request(
                subjects.SUBMIT, {"tool": "test.secret", "params": {"token": "never-run"}}
            )
            assert r.error is not None and r.error["code"] == "unavailable", r.data
            put = await watcher.updates(timeout=5)
            assert put is not None and put.value and b"never-run" not in put.value  # sealed
            key = sealing.executor_key(None, tmp_path / "d")
            assert b"never-run" in sealing.unseal(key, put.value)
            deleted = await watcher.updates(timeout=10)
            assert deleted is not None and deleted.key == put.key
            assert deleted.operation == "DEL"
        finally:
            await watcher.stop()
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get(put.key)


async def test_secrets_are_kept_for_a_stored_job_and_for_a_later_submit(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    """What the router checks before it deletes secrets it was unsure of."""
    async with Domed.running(fresh_server.url, ssot, tmp_path / "d", services=("router",)) as d:
        js = d.nc.jetstream()
        secrets = await js.key_value(subjects.KV_SECRETS)
        idempotency = await js.key_value(subjects.KV_IDEMPOTENCY)
        router = Router(d.settings, {}, js, secrets, idempotency)
        stored = await d.submit("test.secret", {"token": "for-a-stored-job"})
        rev = (await secrets.get(stored)).revision
        assert not await router.settle_secret(stored, rev)
        assert (await secrets.get(stored)).value is not None

        never = "01JZZZZZZZZZZZZZZZZZZZZZZZ"
        first = await secrets.put(never, b'{"token": "first"}')
        again = await secrets.put(never, b'{"token": "again"}')  # a retried submit's
        assert not await router.settle_secret(never, first)
        assert (await secrets.get(never)).value == b'{"token": "again"}'
        assert await router.settle_secret(never, again)
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await secrets.get(never)
