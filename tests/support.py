"""Test helpers that drive domed only through its public surface: NATS requests,
the event stream, the KV bucket and real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from contracts import subjects
from contracts.events import Event, Terminal, decode_event
from services.executor.app import run_executor
from services.projector.app import run_projector
from services.router.app import run_router
from services.runtime.settings import Settings, StreamSettings

ROOT = Path(__file__).resolve().parents[1]


SHIPPED_SRV = "/srv/domed"
"""Where the shipped tools' path roots lie (``paths`` in ssot/tools)."""
SRV_ROOTS = ("files", "archives", "suites")


def srv_of(ssot: Path) -> Path:
    """The directory that stands in for /srv/domed in the catalogue ``make_ssot`` made."""
    return ssot.parent / f"{ssot.name}-srv"


def make_ssot(dst: Path) -> Path:
    """The repo's real tools plus the test tools, in one catalogue; the real tools' roots
    under /srv/domed are moved to ``srv_of(dst)``, whose root directories are made."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(ROOT / "ssot" / "tools", dst / "tools" / "real")
    shutil.copytree(ROOT / "tests" / "ssot" / "tools", dst / "tools" / "test")
    srv = srv_of(dst)
    for manifest in (dst / "tools" / "real").rglob("*.yaml"):
        text = manifest.read_text()
        manifest.write_text(text.replace(f"{SHIPPED_SRV}/", f"{srv}/"))
    for name in SRV_ROOTS:
        (srv / name).mkdir(parents=True, exist_ok=True)
    return dst


def fresh_dir(parent: Path) -> Path:
    """A new, empty directory of the test's own inside ``parent`` (a root shared by tests)."""
    return Path(tempfile.mkdtemp(dir=parent))


@dataclass
class Reply:
    data: Any
    headers: dict[str, str]

    @property
    def error(self) -> dict[str, Any] | None:
        if "Nats-Service-Error" not in self.headers:
            return None
        return self.data.get("error") if isinstance(self.data, dict) else None


@dataclass
class StoredEvent:
    seq: int
    subject: str
    event: Event

    @property
    def kind(self) -> str:
        return self.subject.rsplit(".", 1)[1]


class NoResponder(nats.errors.NoRespondersError):
    """No service answered; says which in-process services still ran (a test that expects
    no responder, e.g. while a node is down, still catches NoRespondersError)."""

    def __init__(self, description: str) -> None:
        super().__init__()
        self.description = description

    def __str__(self) -> str:
        return self.description


@dataclass
class Domed:
    url: str
    ssot: Path
    data_dir: Path
    nc: Client
    settings: Settings
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stops: dict[str, asyncio.Event] = field(default_factory=dict)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        url: str,
        ssot: Path,
        data_dir: Path,
        services: tuple[str, ...] = ("router", "executor", "projector"),
        ack_wait_s: float = 30.0,
        slots: int = 8,
        drain_timeout_s: float = 10.0,
        max_age_s: float = 0.0,
        max_bytes: int = -1,
    ) -> AsyncIterator[Domed]:
        settings = Settings(
            nats_url=url,
            ssot=ssot,
            data_dir=data_dir,
            slots=slots,
            drain_timeout_s=drain_timeout_s,
            stream=StreamSettings(ack_wait_s=ack_wait_s, max_age_s=max_age_s, max_bytes=max_bytes),
            # An executor in this (pytest) process must not adopt and reap orphans: they
            # would include the exits of the test's own child processes.
            adopt_orphans=False,
        )
        nc = await nats.connect(url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        d = cls(url, ssot, data_dir, nc, settings)
        try:
            for name in services:
                await d.start_service(name)
            yield d
        finally:
            await d.stop_all()
            await nc.close()

    async def start_service(self, name: str, **overrides: Any) -> None:
        runner = {"router": run_router, "executor": run_executor, "projector": run_projector}[name]
        settings = Settings(**{**self.settings.__dict__, **overrides})
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(runner(settings, stop, ready), name=name)
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait(
            {task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            waiter.cancel()
            task.result()
        assert waiter in done, f"{name} did not become ready"
        self.stops[name] = stop
        self.tasks.append(task)

    async def stop_service(self, name: str) -> None:
        stop = self.stops.pop(name)
        stop.set()
        for t in list(self.tasks):
            if t.get_name() == name:
                await asyncio.wait_for(t, 30)
                self.tasks.remove(t)

    async def stop_all(self) -> None:
        for name in ("router", "executor", "projector"):
            if name in self.stops:
                self.stops[name].set()
        for t in self.tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 30)
        self.tasks.clear()
        self.stops.clear()

    def service_states(self) -> str:
        """Which in-process services still run, and how each that ended ended (for a
        failure message)."""
        states = []
        for t in self.tasks:
            if not t.done():
                states.append(f"{t.get_name()}: running")
            elif t.cancelled():
                states.append(f"{t.get_name()}: cancelled")
            else:
                states.append(f"{t.get_name()}: ended with {t.exception()!r}")
        return ", ".join(states) or "no services"

    # ---- the public API -----------------------------------------------------------------

    async def request(
        self, subject: str, body: Any, raw: bytes | None = None, timeout: float = 10
    ) -> Reply:
        payload = raw if raw is not None else json.dumps(body).encode()
        try:
            msg = await self.nc.request(subject, payload, timeout=timeout)
        except nats.errors.NoRespondersError as exc:
            raise NoResponder(f"no responder on {subject}; {self.service_states()}") from exc
        data = json.loads(msg.data) if msg.data else None
        return Reply(data, dict(msg.headers or {}))

    async def submit(self, tool: str, params: dict[str, Any] | None = None, **extra: Any) -> str:
        reply = await self.request(subjects.SUBMIT, {"tool": tool, "params": params or {}, **extra})
        assert reply.error is None, reply.data
        return str(reply.data["job_id"])

    async def events(
        self,
        job_id: str,
        timeout: float = 60,
        until_terminal: bool = True,
        stop_at: str = "terminal",
    ) -> list[StoredEvent]:
        """Every stored event of a job, in stream order, through its terminal (or through
        its first ``stop_at`` event; a terminal always ends the list)."""
        js = self.nc.jetstream()
        sub = await js.subscribe(
            subjects.job_events_filter(job_id),
            stream=subjects.STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        out: list[StoredEvent] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"job {job_id} did not end within {timeout}s; saw {[e.kind for e in out]}"
                    )
                try:
                    msg = await sub.next_msg(timeout=min(remaining, 1.0))
                except nats.errors.TimeoutError:
                    if not until_terminal:
                        return out
                    continue
                ev = StoredEvent(msg.metadata.sequence.stream, msg.subject, decode_event(msg.data))
                out.append(ev)
                if (until_terminal and isinstance(ev.event, Terminal)) or ev.kind == stop_at:
                    return out
        finally:
            await sub.unsubscribe()

    async def until_kind(self, job_id: str, kind: str, timeout: float = 30) -> list[StoredEvent]:
        """A job's stored events up to its first ``kind`` event, waiting for it; fails if the
        job ends first."""
        events = await self.events(job_id, timeout=timeout, stop_at=kind)
        assert events[-1].kind == kind, f"{job_id} ended before {kind}: {[e.kind for e in events]}"
        return events

    async def run(
        self, tool: str, params: dict[str, Any] | None = None, timeout: float = 60, **extra: Any
    ) -> tuple[str, list[StoredEvent]]:
        job_id = await self.submit(tool, params, **extra)
        return job_id, await self.events(job_id, timeout=timeout)

    async def projected(self, job_id: str, timeout: float = 20) -> dict[str, Any]:
        """The job's state from ``domed.jobs.get`` once the projector has seen its terminal."""
        kv = await self.nc.jetstream().key_value(subjects.KV_JOBS)
        watcher = await kv.watch(job_id)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    entry = await watcher.updates(timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                if (
                    entry is not None
                    and entry.value
                    and json.loads(entry.value)["state"] not in ("queued", "running")
                ):
                    break
            else:
                raise TimeoutError(f"projection of {job_id} did not reach a terminal state")
        finally:
            await watcher.stop()
        reply = await self.request(subjects.JOBS_GET, {"job_id": job_id})
        assert reply.error is None, reply.data
        return dict(reply.data)

    async def kv_value(self, job_id: str) -> dict[str, Any]:
        kv = await self.nc.jetstream().key_value(subjects.KV_JOBS)
        entry = await kv.get(job_id)
        return dict(json.loads(entry.value))


def log_lines(events: list[StoredEvent], stream: str | None = None) -> list[str]:
    lines: list[str] = []
    for e in events:
        if e.kind == "log" and (stream is None or e.event.stream == stream):  # type: ignore[union-attr]
            lines.extend(e.event.lines)  # type: ignore[union-attr]
    return lines


def terminal_of(events: list[StoredEvent]) -> Terminal:
    last = events[-1].event
    assert isinstance(last, Terminal), f"last event is {events[-1].kind}"
    return last


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


# ---- processes --------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def processes_with_env(marker: str) -> list[int]:
    """Pids whose environment contains ``marker`` (e.g. ``DOMED_JOB_ID=<id>``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in env and pid_alive(int(entry)):
            found.append(int(entry))
    return found


async def wait_until(predicate: Any, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)


class ServiceProcess:
    """One domed service as a real child process (for kill and signal tests)."""

    def __init__(
        self,
        name: str,
        url: str,
        ssot: Path,
        data_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "services.cli.main",
            name,
            "--nats-url",
            url,
            "--ssot",
            str(ssot),
            "--data-dir",
            str(data_dir),
            *extra,
        ]
        self.env = {**os.environ, **(env or {})}
        self.log = data_dir / f"{name}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,
            )
        return self

    async def wait_ready(self, timeout: float = 20) -> None:
        await wait_until(
            lambda: (
                b" ready" in self.log.read_bytes() or (self.proc and self.proc.poll() is not None)
            ),
            timeout,
            f"{self.argv[3]} ready",
        )
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


async def run_cli(
    *args: str, timeout: float = 60, until: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real ``domed`` command, ``python -m services.cli.main ARGS``, in a subprocess,
    without blocking the event loop (in-process services may run on it). With ``until``,
    SIGTERM it once stderr has a line containing that text."""
    argv = [sys.executable, "-m", "services.cli.main", *args]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None and proc.stderr is not None
    if until is None:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    else:
        lines: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                while line := await proc.stderr.readline():
                    lines.append(line)
                    if until.encode() in line:
                        proc.terminate()
        finally:
            if proc.returncode is None:
                proc.kill()
        out = await proc.stdout.read()
        err = b"".join(lines) + await proc.stderr.read()
        await proc.wait()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())


class CutProxy:
    """A TCP proxy between one client and nats-server that the test can cut and restore:
    a network partition of that client alone (the other services stay connected)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self._refused = asyncio.Event()  # a connection came while cut

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, target_port: int) -> AsyncIterator[CutProxy]:
        proxy = cls(target_port)
        proxy._server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        try:
            yield proxy
        finally:
            proxy._server.close()
            proxy.cut()
            for task in proxy._pipes:
                task.cancel()
            await asyncio.gather(*proxy._pipes, return_exceptions=True)

    def cut(self) -> None:
        """Drop every connection, and refuse new ones until ``restore``."""
        self.up = False
        self._refused.clear()
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    async def until_refused(self, timeout: float = 10) -> None:
        """Until the client, cut off, has tried to reconnect: it noticed the cut."""
        await asyncio.wait_for(self._refused.wait(), timeout)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if not self.up:
            client_w.close()
            self._refused.set()
            return
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((client_w, server_w))
        for src, dst in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()
