"""A handle on one job: its events, its end, its artifacts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from contracts.api import CancelReply, JobsGetReply
from contracts.events import Event, Terminal
from domed import artifacts
from domed.artifacts import ArtifactRef

if TYPE_CHECKING:
    from domed.client import Client


class Job:
    """A job, by id, on a :class:`~domed.client.Client`. Nothing is read until asked:
    ``events()`` follows it, ``wait()`` returns its terminal, ``artifact()`` reads a file
    it produced."""

    def __init__(
        self, client: Client, job_id: str, *, tool: str | None = None, duplicate: bool = False
    ) -> None:
        self.client = client
        self.id = job_id
        self.tool = tool
        self.duplicate = duplicate
        """True when the submit's idempotency key named this existing job."""
        self.terminal: Terminal | None = None
        """The terminal, once ``events()`` or ``wait()`` has seen it."""

    def __repr__(self) -> str:
        return f"Job({self.id!r}, tool={self.tool!r})"

    async def events(self, *, idle_timeout: float | None = None) -> AsyncIterator[Event]:
        """Every event of the job, typed (``contracts.events``), from its first to its
        terminal, each once and in stream order, live. ``idle_timeout``: raise
        ``TimeoutError`` after that many seconds without an event."""
        async for event in self.client.events(self.id, idle_timeout=idle_timeout):
            if isinstance(event, Terminal):
                self.terminal = event
            yield event

    async def history(self) -> AsyncIterator[Event]:
        """The job's events stored so far, without waiting for more."""
        async for event in self.client.events(self.id, follow=False):
            if isinstance(event, Terminal):
                self.terminal = event
            yield event

    async def wait(self, *, timeout: float | None = None) -> Terminal:
        """The job's terminal: ``state``, ``exit_code``, ``error``... once it has ended.
        ``timeout``: raise ``TimeoutError`` after that many seconds without an event."""
        if self.terminal is None:
            self.terminal = await self.client.wait(self.id, timeout=timeout)
        return self.terminal

    async def get(self) -> JobsGetReply:
        """The job's state as the projector has it."""
        return await self.client.get(self.id)

    async def cancel(self, reason: str | None = None) -> CancelReply:
        """Ask for the job to be canceled (``AlreadyTerminal`` if it has ended)."""
        return await self.client.cancel(self.id, reason)

    async def artifacts(self) -> list[ArtifactRef]:
        """The artifacts the job's terminal lists; it waits for the terminal."""
        return artifacts.listed(await self.wait())

    async def artifact(self, name: str) -> bytes:
        """The bytes of artifact ``name``, checked against the terminal's size and SHA-256
        (``DigestMismatch`` otherwise); it waits for the terminal."""
        entry = artifacts.find(self.id, await self.artifacts(), name)
        return await self.client.read_artifact(entry)

    async def save_artifact(self, name: str, path: str | Path) -> Path:
        """Artifact ``name`` written to ``path`` once its bytes check out."""
        entry = artifacts.find(self.id, await self.artifacts(), name)
        return await artifacts.save(self.client.nc, entry, Path(path))
