"""The executor's Prometheus metrics, read from its own state at each scrape.

``domed_jobs_running{tool}``: the jobs whose attempt runs on this executor (every tool of
its catalogue is listed, 0 when idle); ``domed_executor_slots{state}``: its ``--slots``,
``busy`` (running a job) and ``free``. Each executor exports its own: sum them over
instances for the whole system. Nothing is counted on the job's path; a scrape looks at
``ExecutorContext.running`` and nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.executor.context import ExecutorContext


class ExecutorMetrics(Collector):
    def __init__(self, ctx: ExecutorContext) -> None:
        self.ctx = ctx
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(self)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ctx = self.ctx
        by_tool = Counter(job.tool for job in ctx.running.values())
        running = GaugeMetricFamily(
            "domed_jobs_running", "Jobs running on this executor, by tool.", labels=["tool"]
        )
        for tool in sorted(set(ctx.tools) | set(by_tool)):
            running.add_metric([tool], by_tool.get(tool, 0))
        yield running
        busy = len(ctx.running)
        slots = GaugeMetricFamily(
            "domed_executor_slots", "This executor's job slots, busy or free.", labels=["state"]
        )
        slots.add_metric(["busy"], busy)
        slots.add_metric(["free"], max(0, ctx.settings.slots - busy))
        yield slots
