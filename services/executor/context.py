"""What the executor's parts share: its connections and buckets, its settings, and the
jobs running on it. Built once by ``app.run_executor``; nothing in it reads the
environment."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from services.catalogue.loader import Tool
from services.executor import core
from services.executor.backend import Backend
from services.executor.holds import Holds
from services.executor.jobuser import JobUser
from services.runtime.settings import Settings


@dataclass
class RunningJob:
    """A job whose attempt runs on this executor, and why it was asked to stop, if it was."""

    job_id: str
    attempt: int = 1
    started_seq: int = 0  # where its `started` is stored, once it is
    stop_reason: core.StopReason | None = None
    tool: str = ""  # the job's tool (the metrics count running jobs by it)
    stop_requested: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def request_stop(self, reason: core.StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if not self.stop_requested.done():
            self.stop_requested.set_result(None)


@dataclass
class ExecutorContext:
    settings: Settings
    tools: Mapping[str, Tool]
    nc: Client
    js: JetStreamContext
    secrets: KeyValue
    slots_kv: KeyValue
    holds: Holds
    backend: Backend
    name: str
    records: Path  # the private dir of job records and kept terminals (records.py)
    environ: dict[str, str]  # what env_allowlist passes through
    heartbeat_s: float
    job_user: JobUser | None = None  # whom jobs run as, if not this process's user
    artifacts: ObjectStore | None = None  # opened when a tool names artifacts
    running: dict[str, RunningJob] = field(default_factory=dict)
    leaders: set[int] = field(default_factory=set)  # the running jobs' own processes
    subreaper: bool = False
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_watch: core.CancelWatch = field(default_factory=core.CancelWatch)

    @property
    def accepting(self) -> bool:
        """Whether this executor still takes work: until it is told to stop."""
        return not self.stopping.is_set()

    def stop_accepting(self) -> None:
        self.stopping.set()
