"""A job's resource limits, and the pure decisions about them: which rlimits a process
gets, and which limit a job went past given what its cgroup counted and how it exited.

The cgroup I/O is ``cgroups.py``'s. Three modes, best first:

- ``cgroup2`` and ``cgroup1``: memory and pids are bounded by the kernel for the whole
  process tree (also while no executor runs); CPU seconds of the tree are counted there
  and the executor stops the job once past ``cpu_s``. A job stopped by any of them is
  told apart from one that failed.
- ``rlimit``: each process gets its own bounds (address space for memory, the job
  user's process count for pids), which a tree of processes can add up past; a process
  that hits one usually sees an error (ENOMEM, EAGAIN) and fails in its own way, so
  only the limits that end it by a signal (CPU, file size) are named.

``open_files`` and ``file_size_mb`` are rlimits in every mode: no cgroup bounds them.
"""

from __future__ import annotations

import resource
import signal
from dataclasses import dataclass

from contracts.events import ResourceLimit
from contracts.manifest import Limits

MIB = 1024 * 1024
# A process past RLIMIT_CPU's soft limit gets SIGXCPU each second, and SIGKILL at the
# hard limit: one second of grace for a tool that handles SIGXCPU.
CPU_HARD_GRACE_S = 1


@dataclass(frozen=True)
class JobLimits:
    """The resource limits of one job, in the units the kernel takes."""

    memory_bytes: int | None = None
    cpu_s: float | None = None
    pids: int | None = None
    open_files: int | None = None
    file_size_bytes: int | None = None

    @classmethod
    def of(cls, limits: Limits) -> JobLimits:
        return cls(
            memory_bytes=limits.memory_mb * MIB if limits.memory_mb else None,
            cpu_s=limits.cpu_s,
            pids=limits.pids,
            open_files=limits.open_files,
            file_size_bytes=limits.file_size_mb * MIB if limits.file_size_mb else None,
        )


@dataclass(frozen=True)
class TreeUsage:
    """What a job's cgroup counted for its whole process tree."""

    memory_peak_bytes: int | None
    user_s: float
    sys_s: float
    oom_kills: int  # processes the kernel killed for the memory limit
    pids_refused: int  # forks refused for the pids limit

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


RLIMIT_UNITS = {
    resource.RLIMIT_CPU: ("t", 1),  # seconds
    resource.RLIMIT_NOFILE: ("n", 1),
    resource.RLIMIT_FSIZE: ("f", 512),  # 512-byte blocks (dash, and bash as sh)
    resource.RLIMIT_AS: ("v", 1024),  # KiB
}


def rlimits(limits: JobLimits, cgroup: bool) -> list[tuple[int, int, int]]:
    """``(resource, soft, hard)`` for the job's first process; its children inherit them.

    ``RLIMIT_CPU`` is set in every mode: a single process past the tree's budget is past
    it anyway, and it holds while no executor watches. Without a cgroup, memory becomes
    the address space (``RLIMIT_AS``: virtual, so stricter than resident memory) and
    pids the job user's process count (``RLIMIT_NPROC``: per user, not per job, and
    ignored for root).
    """
    out: list[tuple[int, int, int]] = []
    if limits.cpu_s is not None:
        soft = max(1, int(limits.cpu_s + 0.999))
        out.append((resource.RLIMIT_CPU, soft, soft + CPU_HARD_GRACE_S))
    if limits.open_files is not None:
        out.append((resource.RLIMIT_NOFILE, limits.open_files, limits.open_files))
    if limits.file_size_bytes is not None:
        out.append((resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes))
    if not cgroup:
        if limits.memory_bytes is not None:
            out.append((resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes))
        if limits.pids is not None:
            out.append((resource.RLIMIT_NPROC, limits.pids, limits.pids))
    return out


def ulimit_commands(
    wanted: list[tuple[int, int, int]], own_hard: dict[int, int], nproc_flag: str
) -> str:
    """The gate shell's ``ulimit`` commands that set ``wanted`` on itself, and so on the
    tool it then execs, joined with ``&&`` (a refused one runs nothing). Set by the job's
    own process, after the switch to the job user: lowering one's own limits needs no
    privilege, unlike setting another user's. Never above the executor's own hard limits
    (``own_hard``, in bytes or counts; absent: unlimited); soft first, so it never
    exceeds the hard limit in between."""
    commands = []
    for which, soft, hard in wanted:
        flag, unit = RLIMIT_UNITS.get(which, (nproc_flag, 1))
        if (ceiling := own_hard.get(which)) is not None:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        soft, hard = -(-soft // unit), -(-hard // unit)
        commands += [f"ulimit -S -{flag} {soft}", f"ulimit -H -{flag} {hard}"]
    return " && ".join(commands)


def breach(
    limits: JobLimits, usage: TreeUsage | None, returncode: int | None
) -> ResourceLimit | None:
    """The limit the job went past, if any: from its cgroup's counters while it runs,
    and also from how its first process ended once it has (``returncode`` as subprocess
    gives it: negative for a signal)."""
    if usage is not None:
        if usage.oom_kills > 0:
            return "memory"
        if usage.pids_refused > 0:
            return "pids"
        if limits.cpu_s is not None and usage.cpu_s >= limits.cpu_s:
            return "cpu"
    if returncode == -signal.SIGXCPU and limits.cpu_s is not None:
        return "cpu"
    if returncode == -signal.SIGXFSZ and limits.file_size_bytes is not None:
        return "file_size"
    return None


def describe(limit: ResourceLimit, limits: JobLimits) -> str:
    """A sentence for the terminal's ``error.message``."""
    if limit == "memory" and limits.memory_bytes is not None:
        return f"the job went past its memory limit ({limits.memory_bytes // MIB} MiB)"
    if limit == "cpu" and limits.cpu_s is not None:
        return f"the job used up its CPU time ({limits.cpu_s:g} s)"
    if limit == "pids" and limits.pids is not None:
        return f"the job reached its process limit ({limits.pids} processes and threads)"
    if limit == "file_size" and limits.file_size_bytes is not None:
        return f"the job wrote past its file size limit ({limits.file_size_bytes // MIB} MiB)"
    if limit == "open_files" and limits.open_files is not None:
        return f"the job reached its open files limit ({limits.open_files})"
    return f"the job went past its {limit} limit"
