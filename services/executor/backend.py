"""The seam between the executor and whatever runs a job's command: a ``Backend`` spawns
a ``SpawnRequest`` (built from the manifest) and hands back a ``JobHandle`` to open its
gate, read its output, stop it with the signal ladder, and wait for its exit and usage.

``LocalBackend`` runs the job as a local process group (``runner.py``). Isolation and
limits (another user, cgroups) belong behind this seam, so the rest of the executor
does not change with them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from contracts.events import ResourceLimit
from services.executor.cgroups import CgroupPool, Hierarchy, remove_dead_pools
from services.executor.jobuser import JobUser
from services.executor.limits import JobLimits, TreeUsage
from services.executor.runner import Exit, JobProcess, OutputCallback, gate_script


@dataclass(frozen=True)
class SpawnRequest:
    """What to run for one attempt: argv (no shell), working dir and the whole environment."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    # what was made for this job alone (a ``temp`` working dir, its secret files' dir and
    # files): handed to the job's user when it runs as another
    owned: tuple[str, ...] = ()
    limits: JobLimits = JobLimits()
    name: str = ""  # unique per attempt on this host: names its cgroup


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

    async def stop(self, grace_s: float, first: str = "TERM") -> None: ...

    def kill_leftovers(self) -> None: ...

    def breach(self) -> ResourceLimit | None: ...

    def tree_usage(self) -> TreeUsage | None: ...

    async def reap_tree(self, timeout_s: float) -> None: ...

    def discard(self) -> None: ...

    @property
    def confined_in(self) -> list[str]: ...

    async def drain(self, timeout_s: float) -> bool: ...

    def close(self) -> None: ...


class Backend(Protocol):
    def spawn(self, request: SpawnRequest, on_output: OutputCallback) -> JobHandle:
        """Start the job held at its gate; raises OSError if it cannot start."""
        ...

    def prepare(self) -> None:
        """Before the first job: remove what backends of dead executors left behind."""
        ...

    def close(self) -> None:
        """After the last job."""
        ...


class LocalBackend:
    """Jobs as local process groups, of the executor's own user or of ``job_user`` (with
    only its group; what was made for the job is given to it)."""

    def __init__(
        self, job_user: JobUser | None = None, cgroups: Hierarchy | None = None, slots: int = 1
    ) -> None:
        self.job_user = job_user
        self.cgroups = cgroups
        # v1 cgroups are reused; a reused v2 one would report the last job's memory peak
        self.pool = (
            CgroupPool(cgroups, slots) if cgroups is not None and cgroups.version == 1 else None
        )

    def spawn(self, request: SpawnRequest, on_output: OutputCallback) -> JobHandle:
        user = self.job_user
        if user is not None:
            for path in request.owned:
                os.chown(path, user.uid, user.gid, follow_symlinks=False)
        cgroup = None
        if self.pool is not None:
            cgroup = self.pool.take(request.limits)
        elif self.cgroups is not None:
            cgroup = self.cgroups.create(request.name or f"{os.getpid()}", request.limits)
        try:
            proc = JobProcess.spawn(
                request.argv,
                cwd=request.cwd,
                env=request.env,
                on_output=on_output,
                user=user.uid if user else None,
                group=user.gid if user else None,
                script=gate_script(request.env, request.limits, cgroup is not None),
            )
        except BaseException:
            if cgroup is not None:
                cgroup.release()
            raise
        try:
            proc.confine(cgroup, request.limits)
        except OSError:
            proc.shut_gate()
            proc.kill_leftovers()
            proc.close()
            proc.discard()
            raise
        return proc

    def prepare(self) -> None:
        if self.pool is not None:
            remove_dead_pools(self.pool.hierarchy)

    def close(self) -> None:
        """Remove the cgroups kept for reuse."""
        if self.pool is not None:
            self.pool.close()
