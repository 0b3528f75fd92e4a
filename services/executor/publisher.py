"""A job's event pipeline: batch log lines into ``log`` events and publish them
pipelined (acks awaited together at the end), because awaiting each ack would cap
a chatty job at ~8k events/s (one JetStream round trip each, about 120 µs here).

Lines are batched by count, bytes and a short time bound (a slow trickle is still
published within ``FLUSH_S``). A batch holds one stream's lines; ``seq`` counts
lines per attempt across both streams with no gaps, so a reader can prove it lost
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext

from contracts.events import Event, Log, Progress
from services.executor.core import ProgressReading
from services.executor.ownership import Ownership
from services.runtime import failures, jobstream

log = logging.getLogger("domed.executor.publisher")

MAX_BATCH_LINES = 512
MAX_BATCH_BYTES = 256 * 1024
FLUSH_S = 0.02
PROGRESS_EVERY_S = 0.05
HIGH_WATER = 64
LOW_WATER = 8
ACK_WAIT_S = 5.0  # for the acks still missing when the job ends, all together
REPUBLISH_TRY_S = 30.0  # an event's publish is retried in windows this long


@dataclass
class _Outgoing:
    subject: str
    payload: bytes
    headers: dict[str, str]


def _stored(fut: asyncio.Future[Any]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


class Superseded(Exception):
    """Another executor ended or re-ran this job while we could not publish."""


class EventPipeline:
    """Publishes one attempt's log and progress events in order, with back-pressure."""

    def __init__(
        self,
        js: JetStreamContext,
        job_id: str,
        attempt: int,
        now: Callable[[], str],
        pause: Callable[[], None],
        resume: Callable[[], None],
        ownership: Ownership,
        on_lost: Callable[[], None],
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.js = js
        self.ownership = ownership
        self.on_lost = on_lost
        # With it, a publish is retried past REPUBLISH_TRY_S until the executor stops: a
        # job's output is lost for good if we give up.
        self.stopping = stopping
        self.job_id = job_id
        self.attempt = attempt
        self.now = now
        self._pause = pause
        self._resume = resume
        self._queue: asyncio.Queue[_Outgoing | None] = asyncio.Queue()
        self._paused = False
        self._lines: list[str] = []
        self._bytes = 0
        self._stream = "stdout"
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        # Events sent, oldest first, until their ack: the stored ones are dropped as acks
        # come (a long job must not keep all its output), the rest retried in ``close``.
        self._futures: deque[tuple[asyncio.Future[Any], _Outgoing]] = deque()
        self._progress_pending: ProgressReading | None = None
        self._progress_last = 0.0
        self._progress_n = 0
        self._task: asyncio.Task[None] | None = None
        self._silenced = False
        self._checked = False  # has published checked (told the log once)
        # A checked event is stored only while the job has no terminal. Events sent while
        # our hold is fresh do not carry this check: log batches go out pipelined, and on
        # a replicated stream pipelined publishes with it were refused (the 3-node test
        # lost batches in every run).
        self._guard = jobstream.no_terminal_yet(job_id)

    def _start(self) -> None:
        """The publishing task, started with the first event (a silent job needs none)."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"publish-{self.job_id}"
        )

    def add_line(self, stream: str, line: str) -> None:
        if self._lines and (stream != self._stream):
            self.flush()
        self._stream = stream
        self._lines.append(line)
        self._bytes += len(line) + 16
        if len(self._lines) >= MAX_BATCH_LINES or self._bytes >= MAX_BATCH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def add_lines(self, stream: str, lines: list[str]) -> None:
        """Many lines of one stream at once (same result as ``add_line`` for each)."""
        if self._lines and stream != self._stream:
            self.flush()
        self._stream = stream
        i = 0
        while i < len(lines):
            room = MAX_BATCH_LINES - len(self._lines)
            part = lines[i : i + room]
            size = sum(map(len, part)) + 16 * len(part)
            if self._bytes + size >= MAX_BATCH_BYTES and len(part) > 1:
                for line in part:  # near the byte limit: one at a time keeps batches bounded
                    self.add_line(stream, line)
                i += len(part)
                continue
            self._lines.extend(part)
            self._bytes += size
            i += len(part)
            if len(self._lines) >= MAX_BATCH_LINES:
                self.flush()
        if self._lines and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def add_progress(self, reading: ProgressReading) -> None:
        now = time.monotonic()
        self._progress_pending = reading
        if now - self._progress_last >= PROGRESS_EVERY_S:
            self._emit_progress()

    def _emit_progress(self) -> None:
        reading = self._progress_pending
        if reading is None:
            return
        self.flush()
        self._progress_pending = None
        self._progress_last = time.monotonic()
        event = Progress(
            job_id=self.job_id,
            attempt=self.attempt,
            ts=self.now(),
            current=reading.current,
            total=reading.total,
            percent=reading.percent,
            message=reading.message,
        )
        self._enqueue(event, f"{self.attempt}-p{self._progress_n}")
        self._progress_n += 1

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        event = Log(
            job_id=self.job_id,
            attempt=self.attempt,
            stream=self._stream,  # type: ignore[arg-type]
            seq=self._seq,
            lines=self._lines,
            ts=self.now(),
        )
        self._enqueue(event, f"{self.attempt}-{self._seq}")
        self._seq += len(self._lines)
        self._lines = []
        self._bytes = 0

    def silence(self) -> None:
        """Publish nothing more (this attempt was superseded by another executor)."""
        self._silenced = True
        self._lines = []

    def _enqueue(self, event: Event, n: str) -> None:
        if self._silenced:
            return
        out = _Outgoing(*jobstream.event_message(event, n))
        if self._task is None:
            self._start()
        self._queue.put_nowait(out)
        if not self._paused and self._queue.qsize() >= HIGH_WATER:
            self._paused = True
            self._pause()

    async def _run(self) -> None:
        while True:
            out = await self._queue.get()
            if out is None:
                return
            if self._silenced:
                continue
            if self.ownership.fresh:
                try:
                    fut = await self.js.publish_async(out.subject, out.payload, headers=out.headers)
                    self._futures.append((fut, out))
                    self._forget_stored()
                except Exception as exc:  # failed before it was sent; retried in close
                    self._failed(out, exc)
            else:
                await self._publish_checked(out)
            if self._paused and self._queue.qsize() <= LOW_WATER:
                self._paused = False
                self._resume()

    async def _publish_checked(self, out: _Outgoing) -> None:
        """Publish while our hold on the job ran short (ownership.py): one at a time, each
        stored only while the job has no terminal. The pipeline waits meanwhile, and its
        back-pressure pauses the job's output."""
        if not self._checked:
            self._checked = True
            log.warning(
                "job %s attempt %d: the hold on its delivery ran short; its events are "
                "published one at a time, checked for a terminal",
                self.job_id,
                self.attempt,
            )
        try:
            await self._republish(out)
        except Superseded:
            self.silence()
            self.on_lost()
        except Exception as exc:
            self._failed(out, exc)

    def _failed(self, out: _Outgoing, exc: Exception) -> None:
        """Note an event whose publish failed; ``close`` publishes it again, checked."""
        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failed.set_exception(exc)
        self._futures.append((failed, out))

    async def close(self) -> None:
        """Publish what is left and wait until every event is stored (retrying failures).

        Raises Superseded if this attempt lost the job (silenced, or found so on a retry).
        """
        if self._silenced:
            raise Superseded(self.job_id)
        self._emit_progress()
        self.flush()
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task
        if self._silenced:
            raise Superseded(self.job_id)
        # Acks of events sent together come together: wait for all of them at once.
        if self._futures:
            await asyncio.wait([fut for fut, _ in self._futures], timeout=ACK_WAIT_S)
        unstored = [(fut, out) for fut, out in self._futures if not _stored(fut)]
        self._futures.clear()
        if unstored:
            first = unstored[0][0]
            why = repr(first.exception()) if first.done() and not first.cancelled() else "no ack"
            log.warning(
                "job %s: re-publishing %d events (%s, ...) after %s",
                self.job_id,
                len(unstored),
                unstored[0][1].headers["Nats-Msg-Id"],
                why,
            )
        for fut, out in unstored:  # in the order they were first sent
            fut.cancel()
            await self._republish(out)

    def _forget_stored(self) -> None:
        while self._futures and _stored(self._futures[0][0]):
            self._futures.popleft()

    async def _republish(self, out: _Outgoing) -> None:
        """Publish an event (one whose first try got no ack, or one sent while our hold ran
        short) only while this attempt still owns the job: no other attempt started (we
        may have been presumed dead while cut off), and no terminal, which the server
        checks as it stores the event. Retried while NATS is away: for REPUBLISH_TRY_S,
        then on (a warning each time) until the executor stops.
        """

        async def once() -> None:
            if await self.ownership.lost():
                raise Superseded(self.job_id)
            await self.js.publish(
                out.subject, out.payload, headers={**out.headers, **self._guard}, timeout=2.0
            )

        try:
            await failures.retry_until(
                REPUBLISH_TRY_S,
                once,
                until=self.stopping,
                what=f"job {self.job_id}: {out.headers['Nats-Msg-Id']}",
            )
        except nats.js.errors.APIError as exc:
            if failures.is_wrong_last_sequence(exc):
                raise Superseded(self.job_id) from None
            raise

    def abort(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        for fut, _ in self._futures:
            with contextlib.suppress(Exception):
                fut.cancel()
