"""Per-job record files: which process group belongs to which job and executor.

A record is written when a job's process starts and removed when it is reaped. An
executor killed with SIGKILL leaves its records behind; the next executor started
on the same host with the same data dir reads them, kills the orphaned groups and
removes the dirs made for those jobs (temp working dirs, secret files).
Beside them (``ended``) wait the terminals an executor could not store before it
stopped; the next one stores them.

Records describe running processes, so they live as long as processes do: in a
RAM-backed runtime dir (``$XDG_RUNTIME_DIR`` or ``/dev/shm``), gone at reboot with
the processes. That also keeps two file operations per job off a disk that
nats-server is fsyncing (on this machine they cost about five times more there).
The dir is private: created 0700, and refused if it is a symlink, someone else's,
or open to others; then the data dir is used instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import stat
import time
from pathlib import Path

from services.executor import cgroups
from services.executor.runner import job_of

log = logging.getLogger("domed.executor.records")


def private_dir(path: Path) -> bool:
    """Create ``path`` (mode 0700) or accept it only if it is a real dir that is ours alone."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and (st.st_mode & 0o077) == 0


def runtime_candidates(data_dir: Path, environ: dict[str, str]) -> list[Path]:
    """Where records may live, best first: a runtime dir keyed by the data dir (so two
    deployments on one host keep apart), then the data dir itself."""
    key = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    name = f"domed-{os.getuid()}-{key}"
    found: list[Path] = []
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        found.append(Path(runtime) / name / "running")
    if os.path.isdir("/dev/shm"):
        found.append(Path("/dev/shm") / name / "running")
    found.append(Path(data_dir) / "executor" / "running")
    return found


def records_dir(data_dir: Path, environ: dict[str, str]) -> Path:
    candidates = runtime_candidates(data_dir, environ)
    for path in candidates[:-1]:
        if private_dir(path.parent) and private_dir(path):
            return path
        log.warning("runtime dir %s is not private to this user; not using it", path)
    fallback = candidates[-1]
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def write(
    directory: Path,
    job_id: str,
    pid: int,
    dirs: list[str] | None = None,
    cgroups: list[str] | None = None,
) -> Path:
    """Record a job's process group, the dirs made for it (its temp working dir, its
    secret files' dir) and its cgroup's dirs, all removed with it."""
    record = directory / job_id
    data = {"job_id": job_id, "pid": pid, "executor_pid": os.getpid(), "dirs": dirs or []}
    if cgroups:
        data["cgroups"] = cgroups
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(data).encode())
    finally:
        os.close(fd)
    return record


def _ended_dir(directory: Path) -> Path:
    """Where kept terminals wait: beside the records dir, as private as it is."""
    return directory.parent / "ended"


def keep_terminal(directory: Path, job_id: str, data: bytes) -> Path:
    """Keep a run's terminal that could not be stored before the executor stopped (NATS
    away), beside the records: the next executor started on this host stores it. Written
    whole (a temp file renamed) so a crash never leaves half of one."""
    ended = _ended_dir(directory)
    ended.mkdir(mode=0o700, exist_ok=True)
    path = ended / job_id
    partial = ended / f".{job_id}.partial"
    partial.write_bytes(data)
    os.replace(partial, path)
    return path


def kept_terminals(directory: Path) -> list[tuple[Path, bytes]]:
    """The terminals ``keep_terminal`` kept, oldest job first."""
    ended = _ended_dir(directory)
    if not ended.is_dir():
        return []
    return [(p, p.read_bytes()) for p in sorted(ended.iterdir()) if not p.name.startswith(".")]


def reap_orphans(directory: Path, wait_s: float = 5.0) -> list[str]:
    """Kill what executors that died left on this host: each job's process group, and any
    other process still carrying the job's ``DOMED_JOB_ID`` (one that left the group, e.g.
    a daemon). Returns the job ids whose processes were killed, once those processes
    have died (SIGKILL takes effect when the target is next scheduled, not when
    ``kill`` returns), or after ``wait_s``."""
    reaped = []
    orphaned_jobs: set[str] = set()
    dying: list[int] = []
    leaders: set[int] = set()
    made: list[tuple[str, str]] = []
    left_cgroups: list[str] = []
    for record in directory.glob("*"):
        try:
            data = json.loads(record.read_text())
            owner = int(data["executor_pid"])
            pid = int(data["pid"])
            job_id = str(data["job_id"])
            dirs = [d for d in data.get("dirs", []) if isinstance(d, str)]
            left_cgroups += [c for c in data.get("cgroups", []) if isinstance(c, str)]
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if owner != os.getpid() and cgroups.process_alive(owner):
            continue
        orphaned_jobs.add(job_id)
        made += [(job_id, d) for d in dirs]
        # The pid may have been reused since: kill only a process that carries the job's mark.
        if (pidfd := _marked_pidfd(pid, job_id)) is not None:
            log.warning("killing orphaned process group %d of job %s", pid, job_id)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            dying.append(pidfd)
            leaders.add(pid)
            reaped.append(job_id)
        record.unlink(missing_ok=True)
    for pid, job_id in _marked_processes(orphaned_jobs):
        if pid in leaders or (pidfd := _marked_pidfd(pid, job_id)) is None:
            continue
        log.warning("killing process %d of job %s, which had left its process group", pid, job_id)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        dying.append(pidfd)
        if job_id not in reaped:
            reaped.append(job_id)
    _wait_dead(dying, wait_s)
    cgroups.remove_left(left_cgroups, wait_s)
    for job_id, path in made:
        remove_job_dir(job_id, path)
    return reaped


def remove_job_dir(job_id: str, path: str) -> None:
    """Remove a dir an orphaned job left (its temp working dir, its secret files' dir),
    once its processes are dead; only a dir whose name shows it was made for that job
    (``domed-<job_id>-``, ``domed-secrets-<job_id>-``)."""
    name = os.path.basename(path)
    if not name.startswith((f"domed-{job_id}-", f"domed-secrets-{job_id}-")):
        log.warning("not removing %s: not a dir made for job %s", path, job_id)
        return
    log.warning("removing %s, left by orphaned job %s", path, job_id)
    shutil.rmtree(path, ignore_errors=True)


def _marked_pidfd(pid: int, job_id: str) -> int | None:
    """A pidfd for ``pid`` if it is (still) a process of ``job_id``: opened before the
    check, so the check and the later kill and wait are about the same process."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    if job_of(pid) == job_id:
        return pidfd
    os.close(pidfd)
    return None


def _wait_dead(pidfds: list[int], timeout_s: float) -> None:
    """Wait until every process behind ``pidfds`` has exited (a pidfd turns readable
    then), at most ``timeout_s`` in all; closes the pidfds."""
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    pending = set(pidfds)
    deadline = time.monotonic() + timeout_s
    try:
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                pending.discard(fd)
        if pending:
            log.warning("%d orphaned processes still alive after %.1f s", len(pending), timeout_s)
    finally:
        for fd in pidfds:
            os.close(fd)


def _marked_processes(job_ids: set[str]) -> list[tuple[int, str]]:
    """Processes on this host that belong to one of ``job_ids`` (``runner.job_of``)."""
    if not job_ids:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (job_id := job_of(int(entry))) in job_ids:
            found.append((int(entry), job_id))
    return found
