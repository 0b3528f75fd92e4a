"""The seam between the executor and whatever runs a job's command: a ``Backend`` spawns
a ``SpawnRequest`` (built from the manifest) and hands back a ``JobHandle`` to open its
gate, read its output, stop it with the signal ladder, and wait for its exit and usage.

``LocalBackend`` runs the job as a local process group (``runner.py``). Isolation and
limits (another user, cgroups) belong behind this seam, so the rest of the executor
does not change with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.executor.runner import Exit, JobProcess, OutputCallback


@dataclass(frozen=True)
class SpawnRequest:
    """What to run for one attempt: argv (no shell), working dir and the whole environment."""

    argv: list[str]
    cwd: str
    env: dict[str, str]


class JobHandle(Protocol):
    """A spawned job, held at its gate until ``open_gate``."""

    @property
    def pid(self) -> int: ...

    @property
    def signals_sent(self) -> list[str]: ...

    def open_gate(self) -> None: ...

    def shut_gate(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def has_exited(self) -> bool: ...

    async def wait_exit(self) -> Exit: ...

    async def stop(self, grace_s: float) -> None: ...

    def kill_leftovers(self) -> None: ...

    async def drain(self, timeout_s: float) -> bool: ...

    def close(self) -> None: ...


class Backend(Protocol):
    def spawn(self, request: SpawnRequest, on_output: OutputCallback) -> JobHandle:
        """Start the job held at its gate; raises OSError if it cannot start."""
        ...


class LocalBackend:
    """Jobs as local process groups of the executor's own user."""

    def spawn(self, request: SpawnRequest, on_output: OutputCallback) -> JobHandle:
        return JobProcess.spawn(request.argv, cwd=request.cwd, env=request.env, on_output=on_output)
