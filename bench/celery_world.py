"""Celery + Redis as a user would run them, for the peer case: a redis-server from the
system packages and one Celery worker (prefork, one pool process per slot), on free
loopback ports in a temp dir of their own. Every process started here is killed and
waited for when the ``celery_redis`` block ends, whether it ended well, raised or
was interrupted.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import ROOT
from services.runtime.natsserver import free_port

INSTALL_HINT = (
    "pip install -e '.[bench]' (Celery with its Redis client) and "
    "apt-get install redis-server (the Debian package)"
)
URL_ENV = "BENCH_CELERY_URL"  # bench.celery_app reads it; that module needs Celery
_PR_SET_CHILD_SUBREAPER = 36


def missing() -> str | None:
    """Why the peer case cannot run here (with the install hint), or None if it can."""
    absent = []
    if shutil.which("redis-server") is None:
        absent.append("redis-server")
    if importlib.util.find_spec("celery") is None or importlib.util.find_spec("redis") is None:
        absent.append("celery[redis]")
    if not absent:
        return None
    return f"{' and '.join(absent)} not installed: {INSTALL_HINT}"


def version_of_redis() -> str:
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def version_of_celery() -> str:
    try:
        return importlib.metadata.version("celery")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: [0] state, [1] ppid, [2] pgrp."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_members(pgid: int) -> list[int]:
    """Every live process in process group ``pgid`` (a worker and its pool)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and fields[2] == str(pgid) and fields[0] != "Z":
                members.append(int(entry))
    return members


def _gone(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (or was reparented to us)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the group leader (a Celery worker stops and reaps its pool), SIGKILL the
    whole group after ``grace_s``, then wait until every member is gone."""
    members = set(group_members(proc.pid)) | {proc.pid}
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    members |= set(group_members(proc.pid))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 10
    for pid in sorted(members - {proc.pid}):
        while time.monotonic() < deadline:
            _reap(pid)
            if _gone(pid):
                break
            time.sleep(0.01)


def become_subreaper() -> None:
    """Orphans of our children come to this process instead of pid 1, so a pool process
    that outlives its killed worker can still be waited for (pid 1 in a container often
    reaps nothing). Harmless where it is not available."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class CeleryRedis:
    """A running redis-server and Celery worker; ``pids()`` names each process."""

    root: Path
    durable: bool
    concurrency: int
    port: int = 0
    redis: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    pool: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, URL_ENV: self.url, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}

    def redis_argv(self) -> list[str]:
        # Redis's own defaults otherwise (RDB snapshots included), as a user gets them;
        # the durable variant adds an fsynced append-only file, like sync_interval: always.
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.root), "--daemonize", "no", "--protected-mode", "yes"]
        if self.durable:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        return argv

    def worker_argv(self) -> list[str]:
        # Celery's defaults but the concurrency (as domed's --slots) and the log level:
        # at INFO the worker logs two lines per task, which domed's services do not.
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(self.concurrency),
            "--loglevel",
            "WARNING",
            "--hostname",
            f"bench-{self.port}@localhost",
        ]

    def start_redis(self, limit_s: float) -> None:
        self.port = free_port()
        with open(self.root / "redis.log", "wb") as out:
            self.redis = subprocess.Popen(
                self.redis_argv(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,
            )
        deadline = time.monotonic() + limit_s
        while not redis_ping(self.port):
            if self.redis.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail('redis.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer PING within {limit_s:.1f} s")
            time.sleep(0.02)

    def start_worker(self) -> None:
        become_subreaper()
        with open(self.root / "worker.log", "wb") as out:
            self.worker = subprocess.Popen(
                self.worker_argv(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=self.env,
                start_new_session=True,
            )

    def find_pool(self) -> list[int]:
        """The worker's pool processes (call once jobs have run: the pool is up then)."""
        assert self.worker is not None
        self.pool = sorted(p for p in group_members(self.worker.pid) if p != self.worker.pid)
        return self.pool

    def pids(self) -> dict[str, int]:
        assert self.redis is not None and self.worker is not None
        out = {"redis-server": self.redis.pid, "celery worker": self.worker.pid}
        out.update({f"celery pool {i}": pid for i, pid in enumerate(self.pool, 1)})
        return out

    def log_tail(self, name: str) -> str:
        try:
            return (self.root / name).read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def client_argv(
        self, jobs: int, warmup: int, warmup_limit_s: float, limit_s: float
    ) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.celery_client",
            "--jobs",
            str(jobs),
            "--concurrency",
            str(self.concurrency),
            "--warmup",
            str(warmup),
            "--warmup-limit",
            f"{warmup_limit_s:.1f}",
            "--limit",
            f"{limit_s:.1f}",
        ]

    def stop(self) -> None:
        if self.worker is not None:
            stop_group(self.worker, grace_s=10)
        if self.redis is not None:
            stop_group(self.redis, grace_s=10)


@contextlib.contextmanager
def celery_redis(
    *, durable: bool, concurrency: int, start_limit_s: float, keep: bool = False
) -> Iterator[CeleryRedis]:
    """Redis (answering PING) and a Celery worker starting against it; both stopped and
    waited for at the end, the temp dir removed unless ``keep``."""
    root = Path(tempfile.mkdtemp(prefix="domed-bench-celery-"))
    world = CeleryRedis(root, durable, concurrency)
    try:
        world.start_redis(start_limit_s)
        world.start_worker()
        yield world
    finally:
        world.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
