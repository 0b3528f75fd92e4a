"""The router's Prometheus metrics: the jobs it stored, by tool.

``domed_jobs_submitted_total{tool}`` counts submits whose ``queued`` event the stream
stored; one that stored nothing (an idempotency key used again, a publish the stream
had already stored) is not counted. Every tool of the catalogue starts at 0, so ``rate()`` sees its first job.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, ProcessCollector


class RouterMetrics:
    def __init__(self, tools: Iterable[str]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.submitted = Counter(
            "domed_jobs_submitted",
            "Jobs stored by the router (queued events acknowledged), by tool.",
            ["tool"],
            registry=self.registry,
        )
        self._by_tool = {tool: self.submitted.labels(tool) for tool in tools}

    def job_submitted(self, tool: str) -> None:
        counter = self._by_tool.get(tool)
        if counter is None:
            counter = self._by_tool[tool] = self.submitted.labels(tool)
        counter.inc()
