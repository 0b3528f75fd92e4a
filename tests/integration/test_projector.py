"""The projector: queries, pagination, read-your-writes, and rebuilds that agree with the live view."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sqlite3
from pathlib import Path

import msgspec
import pytest

from contracts import subjects
from contracts.events import Log
from services.projector import follow, mirror, projection
from services.projector.app import store_path
from services.projector.rebuild import decode_report
from services.projector.store import INDEXES, Store
from services.runtime import provisioning
from services.runtime.natsserver import NatsServer
from services.runtime.settings import Settings
from tests.support import (
    Domed,
    ServiceProcess,
    log_lines,
    run_cli,
    terminal_of,
    wait_until,
)


async def test_get_list_filters_and_pagination(domed: Domed) -> None:
    label = f"batch={id(object())}"
    ids = []
    for i in range(7):
        job_id = await domed.submit(
            "demo.echo", {"text": f"n{i}"}, labels={"batch": label.split("=")[1]}
        )
        ids.append(job_id)
    failed = await domed.submit("test.exit", {"code": 1}, labels={"batch": label.split("=")[1]})
    for job_id in [*ids, failed]:
        await domed.projected(job_id)
    seen: list[str] = []
    cursor = None
    while True:
        body = {"label": label, "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await domed.request(subjects.JOBS_LIST, body)).data
        assert len(page["jobs"]) <= 3 and page["projected_seq"] > 0
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert seen == sorted([*ids, failed], reverse=True)  # newest first
    only_failed = (
        await domed.request(subjects.JOBS_LIST, {"label": label, "state": "failed"})
    ).data["jobs"]
    assert [j["job_id"] for j in only_failed] == [failed]
    by_tool = (await domed.request(subjects.JOBS_LIST, {"label": label, "tool": "test.exit"})).data[
        "jobs"
    ]
    assert [j["job_id"] for j in by_tool] == [failed]
    r = await domed.request(subjects.JOBS_GET, {"job_id": "01NOSUCHJOB0000000000000000"})
    assert r.error["code"] == "unknown_job" and r.headers["Nats-Service-Error-Code"] == "404"
    r = await domed.request(subjects.JOBS_LIST, {"cursor": "!!!"})
    assert r.error["code"] == "invalid_request"


async def test_read_your_writes_through_projected_seq(domed: Domed) -> None:
    job_id, events = await domed.run("demo.echo", {"text": "ryw"})
    target = events[-1].seq
    for _ in range(200):
        reply = await domed.request(subjects.JOBS_GET, {"job_id": job_id})
        if reply.error is None and reply.data["projected_seq"] >= target:
            assert reply.data["state"] == "succeeded"
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the projection never reached the job's terminal")


async def test_events_of_a_big_job_come_back_complete_across_pages(domed: Domed) -> None:
    job_id, events = await domed.run("test.spew", {"lines": 100_000, "width": 60}, timeout=120)
    assert terminal_of(events).state == "succeeded"
    got: list[dict] = []
    after = 0
    pages = 0
    while True:
        page = (
            await domed.request(subjects.JOBS_EVENTS, {"job_id": job_id, "after_seq": after})
        ).data
        pages += 1
        got += page["events"]
        if page.get("next") is None:
            assert page["complete"] is True
            break
        after = page["next"]
    assert pages > 1
    assert [e["seq"] for e in got] == [e.seq for e in events]
    lines = [line for e in got if e["data"]["kind"] == "log" for line in e["data"]["lines"]]
    assert len(lines) == 100_000 and lines[-1].startswith("line 99999")
    r = await domed.request(subjects.JOBS_EVENTS, {"job_id": "01NOSUCHJOB0000000000000000"})
    assert r.error["code"] == "unknown_job"


async def _mixed_workload(d: Domed, tmp_path: Path) -> list[str]:
    jobs = [
        await d.submit("demo.echo", {"text": "ok"}),
        await d.submit("test.exit", {"code": 2}),
        await d.submit("test.spew", {"lines": 20_000, "stderr_every": 7}),
        await d.submit("test.sleep", {"seconds": 30}, timeout_s=0.5),
        await d.submit("test.missing"),
        await d.submit("demo.countdown", {"n": 3, "interval": 0.01}),
    ]
    to_cancel = await d.submit("test.sleep", {"seconds": 30})
    await d.until_kind(to_cancel, "started")
    await d.request(subjects.CANCEL, {"job_id": to_cancel})
    jobs.append(to_cancel)
    for job_id in jobs:
        await d.events(job_id, timeout=60)
    return jobs


def _rows(path: Path) -> list[dict]:
    store = Store(path)
    try:
        return [msgspec.to_builtins(s) for s in store.all_jobs()]
    finally:
        store.close()


async def test_rebuild_equals_the_live_projection(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(fresh_server.url, ssot, tmp_path / "live") as d:
        jobs = await _mixed_workload(d, tmp_path)
        for job_id in jobs:
            await d.projected(job_id)
        states = {
            j: (await d.request(subjects.JOBS_GET, {"job_id": j})).data["state"] for j in jobs
        }
        assert sorted(states.values()) == sorted(
            ["succeeded", "failed", "succeeded", "timed_out", "failed", "succeeded", "canceled"]
        )
        await d.stop_service("projector")
        await d.start_service("projector", data_dir=tmp_path / "rebuilt", rebuild=True)
        info = await d.nc.jetstream().stream_info(subjects.STREAM)
        # A reply that says the projection reached the stream's end comes after the
        # commit that reached it, and after the indexes a rebuild builds last.
        for _ in range(1000):
            reply = await d.request(subjects.JOBS_GET, {"job_id": jobs[-1]})
            if reply.error is None and reply.data["projected_seq"] >= info.state.last_seq:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the rebuilt projection never reached the stream's end")
        rebuilt_path = store_path(Settings(data_dir=tmp_path / "rebuilt"))
        with contextlib.closing(sqlite3.connect(rebuilt_path)) as db:
            indexes = {
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            }
            plan = " ".join(
                str(r[-1])
                for r in db.execute(
                    "EXPLAIN QUERY PLAN SELECT doc FROM jobs WHERE state = 'failed'"
                )
            )
    assert set(INDEXES) <= indexes and "jobs_state" in plan
    live = _rows(store_path(Settings(data_dir=tmp_path / "live")))
    rebuilt = _rows(rebuilt_path)
    assert len(live) == len(jobs) and live == rebuilt


async def test_a_rebuild_reports_its_figures_as_json_lines_on_stdout(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    """``domed projector --rebuild`` writes one JSON line once the store is rebuilt and
    one once the KV is, and nothing else on stdout (the bench reads them)."""
    async with Domed.running(fresh_server.url, ssot, tmp_path / "live") as d:
        jobs = await _projected_then_stopped(d, 3)
        info = await d.nc.jetstream().stream_info(subjects.STREAM)
    done = await run_cli(
        "projector",
        "--rebuild",
        "--nats-url",
        fresh_server.url,
        "--ssot",
        str(ssot),
        "--data-dir",
        str(tmp_path / "rebuilt"),
        until="rebuild: KV mirror caught up",
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 2, (done.stdout, done.stderr)
    store, kv = (decode_report(line) for line in lines)
    assert (store.stage, kv.stage) == ("store", "kv")
    assert store.events == info.state.messages and store.to_seq == info.state.last_seq
    assert store.store_s > 0 and store.events_per_s > 0 and store.cpu_us_per_event > 0
    assert store.kv_s is None and store.kv_jobs_put is None and store.kv_jobs_right is None
    assert kv.kv_s is not None and kv.kv_s >= 0
    assert (kv.kv_jobs_put, kv.kv_jobs_right) == (len(jobs), 0)
    assert (
        msgspec.structs.replace(kv, stage="store", kv_s=None, kv_jobs_put=None, kv_jobs_right=None)
        == store
    )


async def test_projector_killed_mid_burst_neither_skips_nor_double_counts(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "d", services=("router", "executor")
    ) as d:
        proj = ServiceProcess("projector", d.url, ssot, tmp_path / "p").start()
        await proj.wait_ready()
        jobs = [await d.submit("test.spew", {"lines": 30_000, "stderr_every": 3}) for _ in range(4)]
        await d.until_kind(jobs[0], "log")  # mid-burst: the output has begun
        proj.signal(signal.SIGKILL)
        proj.wait()
        expected = {}
        for job_id in jobs:
            events = await d.events(job_id, timeout=60)
            expected[job_id] = (
                terminal_of(events).state,
                len(log_lines(events, "stdout")),
                len(log_lines(events, "stderr")),
            )
        proj2 = ServiceProcess("projector", d.url, ssot, tmp_path / "p").start()
        try:
            await proj2.wait_ready()
            for job_id, (state, out, err) in expected.items():
                got = await d.projected(job_id)
                assert (got["state"], got["lines"]["stdout"], got["lines"]["stderr"]) == (
                    state,
                    out,
                    err,
                )
                assert (await d.kv_value(job_id))["lines"] == {"stdout": out, "stderr": err}
        finally:
            proj2.kill()


async def test_a_projector_that_says_it_is_ready_answers_at_once(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    """ "Ready" means its endpoints are subscribed on the server. A bare ``nc.flush()``
    can return before nats-py has even sent the subscriptions (see
    ``connection.subscriptions_sent``): then about one restart in eight answered its first
    request with "no responders"."""
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "d", services=("router", "executor")
    ) as d:
        for _ in range(30):
            await d.start_service("projector")
            r = await d.request(subjects.JOBS_GET, {"job_id": "01JZZZZZZZZZZZZZZZZZZZZZZZ"})
            assert r.error is not None and r.error["code"] == "unknown_job", r.data
            await d.stop_service("projector")


async def test_a_lost_stream_consumer_is_replaced_and_the_projection_goes_on(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projector's consumer vanishes while its connection stays up (in a cluster: the
    node that held it died): no more deliveries, no more heartbeats. The projector makes a
    new one from where it was and misses nothing."""
    monkeypatch.setattr(follow, "READ_HEARTBEAT_S", 0.2)
    async with Domed.running(fresh_server.url, ssot, tmp_path / "d") as d:
        before = await d.submit("demo.echo", {"text": "before"})
        await d.projected(before)
        js = d.nc.jetstream()

        async def projectors_consumers() -> list[str]:
            return [
                c.name
                for c in await js.consumers_info(subjects.STREAM)
                if (c.config.deliver_subject or "").startswith("_INBOX_domed-projector.")
            ]

        [lost] = await projectors_consumers()
        await js.delete_consumer(subjects.STREAM, lost)
        after = [await d.submit("demo.echo", {"text": f"after {i}"}) for i in range(3)]
        for job_id in after:
            got = await d.projected(job_id)
            assert got["state"] == "succeeded" and got["lines"]["stdout"] == 1
        replacement = await projectors_consumers()
        assert replacement and lost not in replacement


async def test_projector_down_while_jobs_run_catches_up_and_kv_matches(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "d", services=("router", "executor")
    ) as d:
        jobs = [await d.submit("demo.echo", {"text": str(i)}) for i in range(5)]
        for job_id in jobs:
            await d.events(job_id)
        await d.start_service("projector")
        for job_id in jobs:
            got = await d.projected(job_id)
            kv = await d.kv_value(job_id)
            assert got["state"] == kv["state"] == "succeeded"
            assert {k: v for k, v in got.items() if k != "projected_seq"} == kv

    _ = Log


async def test_events_removed_by_retention_keep_projected_jobs_and_are_reported(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(fresh_server.url, ssot, tmp_path / "d", max_age_s=1.0) as d:
        old, events = await d.run("demo.echo", {"text": "old"})
        assert (await d.projected(old))["state"] == "succeeded"
        js = d.nc.jetstream()
        for _ in range(100):  # until retention has removed every event
            if (await js.stream_info(subjects.STREAM)).state.messages == 0:
                break
            await asyncio.sleep(0.1)
        assert (await js.stream_info(subjects.STREAM)).state.messages == 0
        assert (await d.request(subjects.JOBS_GET, {"job_id": old})).data["state"] == "succeeded"
        await d.stop_service("projector")
        await d.start_service("projector", data_dir=tmp_path / "fresh", rebuild=True)
        r = await d.request(subjects.JOBS_GET, {"job_id": old})
        info = await js.stream_info(subjects.STREAM)
        assert r.error["code"] == "unknown_job" and "retention" in r.error["message"], (
            r.data,
            info.state,
        )
        # Nothing is left to read: the rebuilt projection has caught up as far as it can.
        assert r.error["details"]["projected_seq"] == info.state.last_seq
        new, _ = await d.run("demo.echo", {"text": "new"})
        assert (await d.projected(new))["state"] == "succeeded"


@pytest.fixture
def read_kv_first(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> pytest.LogCaptureFixture:
    """A rebuild reads the KV first however few jobs there are (the bench covers the
    sizes); the projector's log is captured."""
    monkeypatch.setattr(mirror, "REPAIR_READ_FIRST", 1)
    caplog.set_level(logging.INFO, logger="domed.projector")
    return caplog


async def _projected_then_stopped(d: Domed, n: int) -> list[str]:
    jobs = [(await d.run("demo.echo", {"text": f"n{i}"}))[0] for i in range(n)]
    for job_id in jobs:
        await d.projected(job_id)
    await d.stop_service("projector")  # its last commit mirrors everything
    return jobs


async def _rebuilt_and_kv_repaired(
    d: Domed, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await d.start_service("projector", data_dir=data_dir, rebuild=True)
    await wait_until(
        lambda: any("KV repaired" in r.getMessage() for r in caplog.records),
        what="the KV repair after the rebuild",
    )


async def test_a_rebuild_puts_only_the_kv_values_that_differ(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path, read_kv_first: pytest.LogCaptureFixture
) -> None:
    async with Domed.running(fresh_server.url, ssot, tmp_path / "live") as d:
        jobs = await _projected_then_stopped(d, 5)
        kv = await d.nc.jetstream().key_value(subjects.KV_JOBS)
        before = {j: await kv.get(j) for j in jobs}
        await kv.delete(jobs[0])
        await kv.put(jobs[1], b'{"state": "garbage"}')
        await _rebuilt_and_kv_repaired(d, tmp_path / "rebuilt", read_kv_first)
        after = {j: await kv.get(j) for j in jobs}
        for j in jobs[2:]:
            assert after[j].revision == before[j].revision, "a value already right was put again"
        for j in jobs:
            assert after[j].value == before[j].value
        assert after[jobs[0]].revision > before[jobs[0]].revision


async def test_a_bucket_that_cannot_be_read_back_is_repaired_by_putting_every_job(
    fresh_server: NatsServer,
    ssot: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    read_kv_first: pytest.LogCaptureFixture,
) -> None:
    """A bucket made before domed read it by direct get, with a projector whose user may
    not allow that: the rebuild cannot read the KV first, and puts every job instead."""
    async with Domed.running(fresh_server.url, ssot, tmp_path / "live") as d:
        jobs = await _projected_then_stopped(d, 3)
        js = d.nc.jetstream()
        info = await js.stream_info(provisioning.kv_stream(subjects.KV_JOBS))
        await js.update_stream(dataclasses.replace(info.config, allow_direct=False))
        kv = await js.key_value(subjects.KV_JOBS)
        before = {j: await kv.get(j) for j in jobs}
        await kv.put(jobs[0], b'{"state": "garbage"}')

        async def may_not_update(js: object, bucket: str) -> None:
            return None

        monkeypatch.setattr(provisioning, "_allow_direct", may_not_update)
        await _rebuilt_and_kv_repaired(d, tmp_path / "rebuilt", read_kv_first)
        assert any("putting every job instead" in r.getMessage() for r in read_kv_first.records)
        for j in jobs:
            entry = await kv.get(j)
            assert entry.value == before[j].value
            assert entry.revision > before[j].revision  # put again: nothing was read first


async def test_a_backlog_bigger_than_the_projectors_memory_is_projected_right(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(projection, "CACHE_MAX", 2)  # live jobs held in memory
    # Commit once a second, so jobs leave memory before their states are in the store.
    monkeypatch.setattr(follow, "COMMIT_S", 1.0)
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "d", services=("router", "projector")
    ) as d:
        jobs = [await d.submit("demo.echo", {"text": f"n{i}"}) for i in range(6)]
        await d.start_service("executor")
        for job_id in jobs:
            state = await d.projected(job_id)
            assert state["state"] == "succeeded" and state["lines"] == {"stdout": 1, "stderr": 0}
            assert state == {**await d.kv_value(job_id), "projected_seq": state["projected_seq"]}


async def test_a_running_projector_has_not_loaded_the_catalogues_libraries(
    nats_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    """The projector never reads a manifest; jsonschema, pydantic and yaml would cost it
    about 11 MB of its 60 MB (#5)."""
    proj = ServiceProcess("projector", nats_server.url, ssot, tmp_path / "p").start()
    try:
        await proj.wait_ready()
        assert proj.proc is not None
        maps = Path(f"/proc/{proj.proc.pid}/maps").read_text()
        for library in ("pydantic_core", "rpds", "_yaml"):
            assert library not in maps, f"the projector loaded {library}"
    finally:
        proj.signal(signal.SIGTERM)
        proj.wait()
