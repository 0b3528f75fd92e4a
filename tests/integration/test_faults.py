"""Faults and hostile input: a NATS restart, an executor cut off from NATS, a burst of bad and
good requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats.errors
import pytest

from contracts import subjects
from services.executor import publisher
from services.executor import terminals as executor_terminals
from services.runtime.natsserver import NatsServer
from tests.integration.test_soak import assert_gap_free
from tests.support import CutProxy, Domed, run_cli, terminal_of, wait_until


@contextlib.asynccontextmanager
async def behind_a_cut(
    server: NatsServer, ssot: Path, tmp_path: Path, service: str, ack_wait_s: float = 30.0
) -> AsyncIterator[tuple[CutProxy, Domed]]:
    """All three services, the others connected to ``server``, ``service`` through a proxy
    the test can cut (a partition of that service alone)."""
    others = tuple(name for name in ("router", "executor", "projector") if name != service)
    async with (
        CutProxy.running(server.port) as proxy,
        Domed.running(
            server.url, ssot, tmp_path / "d", services=others, ack_wait_s=ack_wait_s
        ) as d,
    ):
        await d.start_service(service, nats_url=proxy.url)
        yield proxy, d


def executor_behind_a_cut(
    server: NatsServer, ssot: Path, tmp_path: Path, ack_wait_s: float = 30.0
) -> contextlib.AbstractAsyncContextManager[tuple[CutProxy, Domed]]:
    return behind_a_cut(server, ssot, tmp_path, "executor", ack_wait_s)


@pytest.fixture
def short_retry_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor's windows for storing a run's last events and its terminal, short:
    a test can see it retry past one."""
    monkeypatch.setattr(executor_terminals, "TERMINAL_TRY_S", 0.3)
    monkeypatch.setattr(publisher, "REPUBLISH_TRY_S", 0.3)


async def late_job_across_a_cut(
    d: Domed,
    proxy: CutProxy,
    params: dict[str, float],
    cut_from: str,
    until: Callable[[str], Awaitable[None]],
) -> None:
    """Run ``test.late`` (quiet, one line, quiet again, then it ends), cut its executor
    off once the job has its first ``cut_from`` event, restore it once ``until(job_id)``
    returns, and check that the job ended as if nothing had happened: its line, then its
    terminal, ``succeeded``."""
    job_id = await d.submit("test.late", params)
    await d.until_kind(job_id, cut_from)
    proxy.cut()
    await until(job_id)
    proxy.restore()
    events = await d.events(job_id, timeout=20)
    term = terminal_of(events)
    assert term.state == "succeeded" and term.exit_code == 0, [e.event for e in events]
    assert [e.kind for e in events] == ["queued", "started", "log", "terminal"]


async def test_services_reconnect_after_nats_restarts(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(fresh_server.url, ssot, tmp_path / "d") as d:
        before, events = await d.run("demo.echo", {"text": "before"})
        assert terminal_of(events).state == "succeeded"
        fresh_server.kill()
        down = await run_cli("submit", "demo.echo", "-p", "text=x", "--nats-url", d.url, timeout=30)
        assert down.returncode == 3 and "cannot reach NATS" in down.stderr
        fresh_server.start()
        deadline = time.monotonic() + 30
        reply = None
        while time.monotonic() < deadline:  # until the router has re-subscribed after reconnecting
            try:
                reply = await d.request(
                    subjects.SUBMIT, {"tool": "demo.echo", "params": {"text": "after"}}, timeout=1
                )
                break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)
        assert reply is not None and reply.error is None, reply
        after = reply.data["job_id"]
        assert terminal_of(await d.events(after, timeout=30)).state == "succeeded"
        assert (await d.projected(after, timeout=30))["state"] == "succeeded"
        assert (await d.projected(before))["state"] == "succeeded"


BAD_BODIES: list[tuple[bytes, str]] = [
    (b"{", "invalid_request"),
    (b"\xff\xfe\x00", "invalid_request"),
    (b'"just a string"', "invalid_request"),
    (b"null", "invalid_request"),
    (b'{"tool": null}', "invalid_request"),
    (b'{"tool": "demo.echo", "params": []}', "invalid_request"),
    (b'{"tool": "demo.echo", "params": {"text": "x"}, "labels": {"a": 1}}', "invalid_request"),
    (b'{"tool": "demo.echo", "params": {"text": "x"}, "timeout_s": "soon"}', "invalid_request"),
    (b'{"tool": "demo.echo", "params": {"text": "x"}, "timeout_s": -1}', "invalid_request"),
    (b'{"tool": "demo.echo", "params": {"text": "x"}, "surprise": true}', "invalid_request"),
    (b'{"tool": "../../etc/passwd", "params": {}}', "unknown_tool"),
    (b'{"tool": "demo.echo", "params": {"text": 5}}', "invalid_params"),
    (b'{"tool": "demo.echo", "params": {"text": "x", "extra": "y"}}', "invalid_params"),
    (
        json.dumps({"tool": "demo.echo", "params": {"text": "y" * 900_000}}).encode(),
        "too_large",
    ),
    (
        json.dumps({"tool": "python.script", "params": {"script": "/etc/passwd"}}).encode(),
        "invalid_params",
    ),
    (
        json.dumps({"tool": "files.checksum", "params": {"root": "relative/../path"}}).encode(),
        "invalid_params",
    ),
]


async def test_a_cancel_sent_while_the_executor_was_cut_off_stops_the_job_once_it_is_back(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with executor_behind_a_cut(fresh_server, ssot, tmp_path) as (proxy, d):
        job_id = await d.submit("test.sleep", {"seconds": 60})
        await d.until_kind(job_id, "log")  # it runs
        proxy.cut()  # the cancel below cannot reach the executor
        r = await d.request(subjects.CANCEL, {"job_id": job_id, "reason": "while cut off"})
        assert r.data == {"job_id": job_id, "state": "running"}
        proxy.restore()
        term = terminal_of(await d.events(job_id, timeout=20))
        assert term.state == "canceled" and term.signals_sent[:1] == ["TERM"], term


async def test_a_job_outlives_its_executor_being_cut_off_for_longer_than_ack_wait(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    """The job's delivery expires while the executor is cut off, and comes back to it: the
    job is still running there, so it keeps it (nothing else could have run it)."""
    async with executor_behind_a_cut(fresh_server, ssot, tmp_path, ack_wait_s=1) as (proxy, d):

        async def handed_out_again(job_id: str) -> None:
            """Until the consumer hands the job out again (here, to the test), then put it
            back: its delivery to the executor expired."""
            js = d.nc.jetstream()
            psub = await js.pull_subscribe_bind(subjects.EXECUTORS_CONSUMER, subjects.STREAM)
            try:
                [msg] = await psub.fetch(1, timeout=15)
                assert msg.subject == f"job.{job_id}.queued"
                await msg.nak()
            finally:
                await psub.unsubscribe()

        await late_job_across_a_cut(
            d, proxy, {"quiet": 7.0, "seconds": 0}, "started", handed_out_again
        )


@pytest.mark.parametrize(
    ("params", "cut_from", "warning"),
    [
        # its line is stored, then it ends silently during the cut
        ({"quiet": 0, "seconds": 0.5}, "log", "its terminal cannot be stored yet"),
        # it prints its line during the cut, then ends
        ({"quiet": 0.5, "seconds": 0}, "started", ".log.1-0 cannot be stored yet"),
    ],
)
@pytest.mark.usefixtures("short_retry_windows")
async def test_a_job_that_ends_while_its_executor_is_cut_off_keeps_its_result(
    fresh_server: NatsServer,
    ssot: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    params: dict[str, float],
    cut_from: str,
    warning: str,
) -> None:
    """Only the executor knows what the run printed and how it ended: it keeps trying to
    store them, window after window, until NATS is back (here the windows are short)."""

    async def retried_past_a_window(_: str) -> None:
        await wait_until(
            lambda: any(warning in r.getMessage() for r in caplog.records),
            20,
            f"a warning containing {warning!r}",
        )

    async with executor_behind_a_cut(fresh_server, ssot, tmp_path) as (proxy, d):
        await late_job_across_a_cut(d, proxy, params, cut_from, retried_past_a_window)


@pytest.mark.parametrize(
    ("params", "cut_from", "kinds"),
    [
        # its line is stored, then it ends silently during the cut
        ({"quiet": 0, "seconds": 0.5}, "log", ["queued", "started", "log", "terminal"]),
        # it prints its line during the cut: the line is lost with the executor, its
        # count in the terminal is not
        ({"quiet": 0.5, "seconds": 0}, "started", ["queued", "started", "terminal"]),
    ],
)
@pytest.mark.usefixtures("short_retry_windows")
async def test_a_result_an_executor_stopped_while_cut_off_is_stored_by_the_next_one(
    fresh_server: NatsServer,
    ssot: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    params: dict[str, float],
    cut_from: str,
    kinds: list[str],
) -> None:
    """The job ends while its executor is cut off, and the executor is stopped before
    NATS is back: it keeps the terminal on the host, and the next executor started
    there stores it. Without that the job would end ``lost`` on its next delivery."""
    async with executor_behind_a_cut(fresh_server, ssot, tmp_path) as (proxy, d):
        job_id = await d.submit("test.late", params)
        await d.until_kind(job_id, cut_from)
        proxy.cut()
        await wait_until(
            lambda: any("cannot be stored yet" in r.getMessage() for r in caplog.records),
            20,
            "the executor retrying what the job left",
        )
        await d.stop_service("executor")
        assert any("kept in" in r.getMessage() for r in caplog.records)
        proxy.restore()
        await d.start_service("executor", nats_url=proxy.url)
        events = await d.events(job_id, timeout=20)
    term = terminal_of(events)
    assert term.state == "succeeded" and term.exit_code == 0 and term.attempt == 1, term
    assert term.lines.stdout == 1
    assert [e.kind for e in events] == kinds


async def test_output_sent_while_the_executor_was_cut_off_is_all_stored_in_good_time(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    """Log batches sent just before and during a short cut get no ack; they are
    published again together when the job ends (one wait for all the missing acks, not
    one per batch), every line once, the terminal last."""
    async with executor_behind_a_cut(fresh_server, ssot, tmp_path, ack_wait_s=2) as (proxy, d):
        jobs = [await d.submit("test.spew", {"lines": 300_000}) for _ in range(2)]
        await d.until_kind(jobs[0], "log")
        proxy.cut()
        await proxy.until_refused()  # the executor noticed: its publishes fail from now on
        proxy.restore()
        for job_id in jobs:
            events = await d.events(job_id, timeout=20)
            term = terminal_of(events)
            assert term.state == "succeeded" and term.lines.stdout == 300_000
            assert_gap_free(job_id, [e.event for e in events])
            last = await d.nc.jetstream().get_last_msg(subjects.STREAM, f"job.{job_id}.*")
            assert last.subject == f"job.{job_id}.terminal"


async def test_a_projector_cut_off_catches_up_once_it_is_back(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with behind_a_cut(fresh_server, ssot, tmp_path, "projector") as (proxy, d):
        before, _ = await d.run("demo.echo", {"text": "before"})
        assert (await d.projected(before))["state"] == "succeeded"
        proxy.cut()
        during = [(await d.run("demo.echo", {"text": f"during {i}"}))[0] for i in range(3)]
        proxy.restore()
        for job_id in during:  # the KV mirror, and the endpoint
            assert (await d.projected(job_id))["state"] == "succeeded"
            r = await d.request(subjects.JOBS_GET, {"job_id": job_id})
            assert r.data["state"] == "succeeded" and r.data["lines"]["stdout"] == 1


async def test_bad_input_gets_typed_errors_and_crashes_nothing(domed: Domed) -> None:
    for raw, code in BAD_BODIES:
        r = await domed.request(subjects.SUBMIT, None, raw=raw)
        assert r.error is not None and r.error["code"] == code, (raw[:80], r.data)
    for subject in (
        subjects.CANCEL,
        subjects.JOBS_GET,
        subjects.JOBS_LIST,
        subjects.JOBS_EVENTS,
        subjects.TOOLS_GET,
        subjects.TOOLS_EXPLAIN,
    ):
        r = await domed.request(subject, None, raw=b"{not json")
        assert r.error["code"] == "invalid_request", subject
    try:
        await domed.nc.request(subjects.SUBMIT, b"x" * (domed.nc.max_payload + 1), timeout=2)
        raise AssertionError("an over-size body was sent")
    except nats.errors.MaxPayloadError:
        pass
    _, events = await domed.run("demo.echo", {"text": "still alive"})
    assert terminal_of(events).state == "succeeded"


async def test_a_burst_of_submits_is_all_served_and_nothing_accepted_is_lost(domed: Domed) -> None:
    n = 10_000
    terminals: set[str] = set()
    done = asyncio.Event()
    accepted: set[str] = set()

    async def on_terminal(msg) -> None:
        terminals.add(msg.subject.split(".")[1])
        if accepted and accepted <= terminals:
            done.set()

    sub = await domed.nc.subscribe("job.*.terminal", cb=on_terminal)
    sem = asyncio.Semaphore(256)

    async def one(i: int) -> str | None:
        async with sem:
            body = (
                {"tool": "test.true", "params": {}}
                if i % 3 == 0
                else {"tool": "test.true", "params": {"x": i}}
            )
            r = await domed.request(subjects.SUBMIT, body, timeout=30)
            if r.error is None:
                return str(r.data["job_id"])
            assert r.error["code"] == "invalid_params"
            return None

    results = await asyncio.gather(*(one(i) for i in range(n)))
    accepted.update(j for j in results if j)
    assert len(accepted) == len(range(0, n, 3))
    if not accepted <= terminals:
        await asyncio.wait_for(done.wait(), 120)
    await sub.unsubscribe()
    js = domed.nc.jetstream()
    sample = sorted(accepted)[:: max(1, len(accepted) // 50)]
    for job_id in sample:
        msg = await js.get_last_msg(subjects.STREAM, subjects.event_subject(job_id, "terminal"))
        assert json.loads(msg.data)["state"] == "succeeded"
