"""The client's ``follow_job`` without consumer rights: the live subscription to ``job.<id>.*`` plus the
history paged through ``domed.jobs.events`` give every stored event exactly once, in order,
whatever lands between the subscription and the history read.

A fake client stands in for NATS: a stream (seq, subject, payload) that republishes what it
stores to the live subscription (unless told not to), and a projector that pages it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
import pytest

from contracts import subjects
from contracts.events import Event, LineCounts, Log, Queued, Started, Terminal, encode_event
from domed import follow
from domed.errors import UnknownJob
from domed.follow import follow_job

JOB = "01JTESTJOB0000000000000000"
OTHER = "01JOTHERJOB000000000000000"


def queued(job: str = JOB) -> Queued:
    return Queued(
        job_id=job,
        tool="demo.echo",
        tool_version=1,
        manifest_sha256="0" * 64,
        params={},
        submitted_at="t",
        timeout_s=1.0,
        labels={},
    )


def started() -> Started:
    return Started(job_id=JOB, executor="x", pid=1, attempt=1, started_at="t")


def log(n: int) -> Log:
    return Log(job_id=JOB, attempt=1, stream="stdout", seq=n, lines=[f"line {n}"], ts="t")


def terminal() -> Terminal:
    return Terminal(
        job_id=JOB,
        state="succeeded",
        finished_at="t",
        attempt=1,
        lines=LineCounts(),
        truncated=False,
        signals_sent=[],
    )


@dataclass
class Msg:
    subject: str
    data: bytes
    headers: dict[str, str] | None = None


@dataclass
class Sub:
    queue: asyncio.Queue[Msg] = field(default_factory=asyncio.Queue)
    closed: bool = False

    async def next_msg(self, timeout: float = 1.0) -> Msg:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise nats.errors.TimeoutError from None

    async def unsubscribe(self) -> None:
        self.closed = True


@dataclass
class FakeNats:
    stored: list[tuple[int, str, bytes]] = field(default_factory=list)
    subs: list[tuple[str, Sub]] = field(default_factory=list)
    page_size: int = 2
    projector: bool = True
    requests: int = 0
    # run before the projector answers request number n (1-based)
    before_reply: dict[int, Callable[[], None]] = field(default_factory=dict)

    def store(self, event: Event, republish: bool = True) -> int:
        seq = len(self.stored) + 1
        kind = type(event).__struct_config__.tag
        subject = f"job.{event.job_id}.{kind}"
        data = encode_event(event)
        self.stored.append((seq, subject, data))
        if republish:
            for pattern, sub in self.subs:
                if not sub.closed and pattern == f"job.{event.job_id}.*":
                    sub.queue.put_nowait(Msg(subject, data, {"Nats-Sequence": str(seq)}))
        return seq

    async def subscribe(self, subject: str) -> Sub:
        sub = Sub()
        self.subs.append((subject, sub))
        return sub

    async def flush(self) -> None:
        pass

    async def request(self, subject: str, payload: bytes, timeout: float = 1.0) -> Msg:
        assert subject == subjects.JOBS_EVENTS
        self.requests += 1
        if not self.projector:
            raise nats.errors.NoRespondersError
        if self.requests in self.before_reply:
            self.before_reply[self.requests]()
        req = msgspec.json.decode(payload)
        after = req.get("after_seq") or 0
        mine = [s for s in self.stored if s[1].startswith(f"job.{req['job_id']}.")]
        if not mine:
            body = {"error": {"code": "unknown_job", "message": "no such job"}}
            return Msg("reply", msgspec.json.encode(body), {"Nats-Service-Error": "404"})
        last_seq = mine[-1][0]
        ended = mine[-1][1].endswith(".terminal")
        page = [s for s in mine if s[0] > after][: self.page_size]
        reached = page[-1][0] if page else after
        more = reached < last_seq
        reply: dict[str, Any] = {
            "events": [
                {"subject": sub, "seq": seq, "data": msgspec.json.decode(data)}
                for seq, sub, data in page
            ],
            "complete": ended and not more,
            "projected_seq": 0,
        }
        if more:
            reply["next"] = reached
        return Msg("reply", msgspec.json.encode(reply))


async def collect(nc: FakeNats, **kw: Any) -> list[tuple[int, str]]:
    out = []
    async for seq, event in follow_job(nc, JOB, **kw):  # type: ignore[arg-type]
        out.append((seq, type(event).__struct_config__.tag))
    return out


def stored_of_job(nc: FakeNats) -> list[tuple[int, str]]:
    return [(seq, sub.rsplit(".", 1)[1]) for seq, sub, _ in nc.stored if f".{JOB}." in sub]


async def test_a_finished_job_comes_from_the_history_page_by_page() -> None:
    nc = FakeNats()
    for ev in (queued(), queued(OTHER), started(), log(0), log(1), terminal()):
        nc.store(ev)
    got = await collect(nc)
    assert got == stored_of_job(nc) and got[-1][1] == "terminal"
    assert nc.requests == 3  # pages of two
    assert nc.subs[0][1].closed


async def test_an_event_stored_between_subscription_and_history_is_yielded_once() -> None:
    nc = FakeNats(page_size=100)
    nc.store(queued())
    # after the subscription, before the projector reads: on both the live sub and in history
    nc.before_reply[1] = lambda: (nc.store(started()), nc.store(log(0)))

    async def later() -> None:
        await asyncio.sleep(0.05)
        nc.store(log(1))
        nc.store(queued(OTHER))
        nc.store(terminal())

    task = asyncio.create_task(later())
    got = await collect(nc)
    await task
    assert got == stored_of_job(nc)
    assert [k for _, k in got] == ["queued", "started", "log", "log", "terminal"]


async def test_events_the_subscription_missed_are_read_from_the_stream_in_order() -> None:
    """As in a cluster, where a new subscription reaches the stream's leader a little later."""
    nc = FakeNats(page_size=100)
    nc.store(queued())

    async def later() -> None:
        await asyncio.sleep(0.05)
        nc.store(started(), republish=False)  # missed by the live subscription
        nc.store(log(0), republish=False)
        nc.store(log(1))
        nc.store(terminal())

    task = asyncio.create_task(later())
    got = await collect(nc)
    await task
    assert got == stored_of_job(nc)


async def test_a_quiet_subscription_is_checked_against_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(follow, "FOLLOW_RESYNC_S", 0.05)
    nc = FakeNats()
    nc.store(queued())

    async def later() -> None:
        await asyncio.sleep(0.02)
        nc.store(started(), republish=False)
        nc.store(terminal(), republish=False)  # even the terminal never comes live

    task = asyncio.create_task(later())
    got = await asyncio.wait_for(collect(nc), 5)
    await task
    assert got == stored_of_job(nc)


async def test_messages_that_are_not_stored_events_are_ignored() -> None:
    nc = FakeNats()
    nc.store(queued())

    async def later() -> None:
        await asyncio.sleep(0.02)
        sub = nc.subs[0][1]
        forged = encode_event(terminal())
        sub.queue.put_nowait(Msg(f"job.{JOB}.terminal", forged))  # no Nats-Sequence
        nc.store(started())
        nc.store(terminal())

    task = asyncio.create_task(later())
    got = await collect(nc)
    await task
    assert got == stored_of_job(nc) and [k for _, k in got] == ["queued", "started", "terminal"]


async def test_idle_timeout_raises() -> None:
    nc = FakeNats()
    nc.store(queued())
    with pytest.raises(nats.errors.TimeoutError):
        await collect(nc, idle_timeout=0.1)


async def test_an_unknown_job_is_an_api_error() -> None:
    nc = FakeNats()
    with pytest.raises(UnknownJob) as info:
        await collect(nc)
    assert info.value.code == "unknown_job"


async def test_without_a_projector_it_reads_the_stream_with_a_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    used: list[str] = []

    async def with_consumer(
        nc: Any, job_id: str, idle_timeout: float | None
    ) -> AsyncIterator[tuple[int, Event]]:
        used.append(job_id)
        yield 1, queued()
        yield 2, terminal()

    monkeypatch.setattr(follow, "_follow_with_consumer", with_consumer)
    nc = FakeNats(projector=False)
    assert await collect(nc) == [(1, "queued"), (2, "terminal")]
    assert used == [JOB] and nc.subs[0][1].closed
