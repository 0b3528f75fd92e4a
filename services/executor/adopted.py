"""Processes a job left outside its process group, found again through adoption.

A process that calls ``setsid`` (a daemon, a double fork) leaves its job's process
group, so killing the group misses it. The executor makes itself a child subreaper
(``PR_SET_CHILD_SUBREAPER``): a job's orphaned descendants are then re-parented to
the executor instead of init, and show up in its list of children. When a job ends,
the executor kills the adopted processes that carry the job's ``DOMED_JOB_ID``
(children inherit it unless they clear their environment) and reaps them, and it
reaps any adopted process that has exited on its own.

Only the executor's main thread spawns jobs, and orphans are given to the reaper's
main thread, so its children file lists all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Iterable

from services.executor.runner import job_of

log = logging.getLogger("domed.executor.adopted")

PR_SET_CHILD_SUBREAPER = 36
SWEEP_ROUNDS = 5
REAP_WAIT_S = 1.0


def become_subreaper() -> bool:
    """Ask Linux to give this process its descendants' orphans; False where it cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def children() -> list[int]:
    """This process's children (``/proc/<pid>/task/<pid>/children``; empty if unknown)."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _reap(pid: int) -> bool:
    """Collect an adopted child's exit status if it has exited; True if it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


async def sweep(job_id: str, leaders: Iterable[int]) -> list[int]:
    """Kill and reap the adopted processes of ``job_id``; reap adopted ones that exited.

    ``leaders`` are the running jobs' own processes: never touched here (their exit is
    collected elsewhere). Killing an adopted process can orphan its own children to us,
    so this goes round until a round finds no more of the job's processes.
    """
    killed: list[int] = []
    for _ in range(SWEEP_ROUNDS):
        keep = set(leaders)
        found = []
        for pid in children():
            if pid in keep or _reap(pid):
                continue
            if job_of(pid) == job_id:
                found.append(pid)
        if not found:
            break
        for pid in found:
            log.warning(
                "killing process %d of job %s, which had left its process group", pid, job_id
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # a setsid'd process leads a group of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed += found
        deadline = asyncio.get_running_loop().time() + REAP_WAIT_S
        pending = set(found)
        while pending and asyncio.get_running_loop().time() < deadline:
            pending = {pid for pid in pending if not _reap(pid)}
            if pending:
                await asyncio.sleep(0.01)
    return killed
