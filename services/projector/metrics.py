"""The projector's Prometheus metrics: what the stream says about jobs, counted once.

The projector sees every event of every job, so the job-level counts are its own:
``domed_jobs_finished_total{tool,state}``, ``domed_job_duration_seconds{tool,state}``
(the terminal's ``duration_s``; a job that never started has none),
``domed_job_queue_wait_seconds{tool}`` (``submitted_at`` to the first ``started``) and
``domed_log_lines_total{stream}``. It counts an event as the fold applies it (a
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

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contracts.api import JobState
from contracts.events import TERMINAL_STATES, Event, Log, Started, Terminal
from services.projector.projection import Projection
from services.projector.retention import timestamp
from services.runtime.metrics import DURATION_BUCKETS


class ProjectorMetrics(Collector):
    def __init__(self, projection: Projection, tools: Iterable[str] = ()) -> None:
        self.projection = projection
        self.count_from = 0  # events at or below this seq are not counted
        self.stream_last_seq: int | None = None
        self.queue_pending: int | None = None
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(self)
        self.finished = Counter(
            "domed_jobs_finished",
            "Jobs that reached a terminal state, by tool and state.",
            ["tool", "state"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "domed_job_duration_seconds",
            "How long finished jobs ran (the terminal's duration_s), by tool and state.",
            ["tool", "state"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "domed_job_queue_wait_seconds",
            "From submitted_at to the job's first started_at, by tool.",
            ["tool"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        lines = Counter(
            "domed_log_lines",
            "Output lines stored in log events, by stream (stdout, stderr).",
            ["stream"],
            registry=self.registry,
        )
        self.lines = {name: lines.labels(name) for name in ("stdout", "stderr")}
        # label children looked up once: the observer runs for every event
        self._finished: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._waits: dict[str, Histogram] = {}
        for tool in tools:
            self._wait_of(tool)

    def observe(self, seq: int, event: Event, before: JobState | None, after: JobState) -> None:
        """``Projection.observe``: count what the event did to the job."""
        if seq <= self.count_from:
            return
        kind = type(event)
        if kind is Log:
            assert isinstance(event, Log)
            self.lines[event.stream].inc(len(event.lines))
        elif kind is Terminal:
            assert isinstance(event, Terminal)
            if before is None or before.state in TERMINAL_STATES:
                return
            counter, histogram = self._finished_of(after.tool, after.state)
            counter.inc()
            if event.duration_s is not None:
                histogram.observe(event.duration_s)
        elif kind is Started:
            assert isinstance(event, Started)
            if before is not None and before.state == "queued":
                try:
                    wait = timestamp(event.started_at) - timestamp(before.submitted_at)
                except ValueError:
                    return
                self._wait_of(after.tool).observe(max(0.0, wait))

    def _finished_of(self, tool: str, state: str) -> tuple[Counter, Histogram]:
        pair = self._finished.get((tool, state))
        if pair is None:
            pair = self._finished[(tool, state)] = (
                self.finished.labels(tool, state),
                self.duration.labels(tool, state),
            )
        return pair

    def _wait_of(self, tool: str) -> Histogram:
        histogram = self._waits.get(tool)
        if histogram is None:
            histogram = self._waits[tool] = self.queue_wait.labels(tool)
        return histogram

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges read at the scrape (see the module doc)."""
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
