"""The projector's Prometheus metrics: what the stream says about jobs, counted once.

The projector sees every event of every job, so the job-level counts are its own:
``domed_jobs_finished_total{tool,state}``, ``domed_job_duration_seconds{tool,state}``
(the terminal's ``duration_s``; a job that never started has none),
``domed_job_queue_wait_seconds{tool}`` (``submitted_at`` to the first ``started``) and
``domed_log_lines_total{stream}`` and ``domed_job_retries_total{tool,outcome}`` (``retry``
events, by how the retried attempt ended). It counts an event as the fold applies it (a
duplicate or replayed delivery changes no job and is not counted), and only events the
store had not applied when the process started; after a rebuild or on an empty store
only events stored after the start, so a rebuild does not count the history again.

Two gauges are read at each scrape, a NATS round trip each: ``domed_queue_pending`` (the
``executors`` consumer's jobs not yet delivered, what ``domed status`` shows as queued)
and ``domed_projector_lag_events`` (the stream's last sequence minus the projected one,
the ``projected_seq`` of every projector reply). A gauge that could not be read is left
out of that scrape rather than shown stale.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from contracts.api import JobState
from contracts.events import TERMINAL_STATES, Event, Log, Retry, Started, Terminal, timestamp
from services.projector.projection import Projection
from services.runtime.metrics import DURATION_BUCKETS

_BOUNDS = [*DURATION_BUCKETS, float("inf")]
_LE = [str(b) if b != float("inf") else "+Inf" for b in _BOUNDS]


class Observations:
    """A histogram's counts per bucket (not cumulative) and sum: plain numbers, so an
    observation is a bisect and two additions (prometheus_client's take a lock and walk
    every bucket, which doubled the fold's cost per event)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(_BOUNDS)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(_BOUNDS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for le, n in zip(_LE, self.counts, strict=True):
            running += n
            out.append((le, float(running)))
        return out


class Finished:
    __slots__ = ("count", "durations")

    def __init__(self) -> None:
        self.count = 0
        self.durations = Observations()


class ProjectorMetrics(Collector):
    def __init__(self, projection: Projection, tools: Iterable[str] = ()) -> None:
        self.projection = projection
        self.count_from = 0  # events at or below this seq are not counted
        self.stream_last_seq: int | None = None
        self.queue_pending: int | None = None
        self.finished: dict[tuple[str, str], Finished] = {}
        self.waits: dict[str, Observations] = {tool: Observations() for tool in tools}
        self.lines = {"stdout": 0, "stderr": 0}
        self.retries: dict[tuple[str, str], int] = {}
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(self)

    def observe(self, seq: int, event: Event, before: JobState | None, after: JobState) -> None:
        """``Projection.observe``: count what the event did to the job."""
        if seq <= self.count_from:
            return
        kind = type(event)
        if kind is Log:
            assert isinstance(event, Log)
            self.lines[event.stream] += len(event.lines)
        elif kind is Terminal:
            assert isinstance(event, Terminal)
            if before is None or before.state in TERMINAL_STATES:
                return
            key = (after.tool, after.state)
            finished = self.finished.get(key)
            if finished is None:
                finished = self.finished[key] = Finished()
            finished.count += 1
            if event.duration_s is not None:
                finished.durations.observe(event.duration_s)
        elif kind is Retry:
            assert isinstance(event, Retry)
            key = (after.tool, event.outcome.state)
            self.retries[key] = self.retries.get(key, 0) + 1
        elif kind is Started:
            assert isinstance(event, Started)
            if before is not None and before.state == "queued":
                try:
                    wait = timestamp(event.started_at) - timestamp(before.submitted_at)
                except ValueError:
                    return
                waits = self.waits.get(after.tool)
                if waits is None:
                    waits = self.waits[after.tool] = Observations()
                waits.observe(max(0.0, wait))

    def collect(self) -> Iterator[Metric]:
        finished = CounterMetricFamily(
            "domed_jobs_finished",
            "Jobs that reached a terminal state, by tool and state.",
            labels=["tool", "state"],
        )
        durations = HistogramMetricFamily(
            "domed_job_duration_seconds",
            "How long finished jobs ran (the terminal's duration_s), by tool and state.",
            labels=["tool", "state"],
        )
        for (tool, state), f in sorted(self.finished.items()):
            finished.add_metric([tool, state], f.count)
            durations.add_metric([tool, state], f.durations.buckets(), f.durations.total)
        yield finished
        yield durations
        waits = HistogramMetricFamily(
            "domed_job_queue_wait_seconds",
            "From submitted_at to the job's first started_at, by tool.",
            labels=["tool"],
        )
        for tool, w in sorted(self.waits.items()):
            waits.add_metric([tool], w.buckets(), w.total)
        yield waits
        lines = CounterMetricFamily(
            "domed_log_lines",
            "Output lines stored in log events, by stream (stdout, stderr).",
            labels=["stream"],
        )
        for stream, n in self.lines.items():
            lines.add_metric([stream], n)
        yield lines
        retries = CounterMetricFamily(
            "domed_job_retries",
            "Attempts retried (retry events), by tool and how the attempt ended.",
            labels=["tool", "outcome"],
        )
        for (tool, outcome), n in sorted(self.retries.items()):
            retries.add_metric([tool, outcome], n)
        yield retries
        # read at the scrape (see the module doc)
        if self.queue_pending is not None:
            yield GaugeMetricFamily(
                "domed_queue_pending",
                "Jobs in the executors consumer not yet delivered to an executor.",
                value=self.queue_pending,
            )
        if self.stream_last_seq is not None:
            lag = max(0, self.stream_last_seq - self.projection.committed_seq)
            yield GaugeMetricFamily(
                "domed_projector_lag_events",
                "Stream last sequence minus the sequence the projection has committed.",
                value=lag,
            )
