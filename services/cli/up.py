"""``domed up``: one machine, one command — an embedded nats-server and the three services.

Before it starts anything, it loads the catalogue and exits 2 listing every problem.
Each service is then a separate child process in its own session (they share nothing
but NATS, and a terminal's Ctrl-C reaches only ``up``). A child that exits is
restarted after a back-off that doubles while it keeps failing (1 s up to 30 s, back
to 1 s once it ran for a minute), each restart reported; a child that exits with
``EXIT_CONFIG`` (its configuration is wrong: starting it again cannot help) stops
``up``, which says why and exits 2.

Ctrl-C or SIGTERM stops everything at any moment, start-up included: the router first
(no new jobs), then the executor (which drains), then the projector (so it sees the
last terminals), then the server. A second Ctrl-C kills what is left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from contracts import subjects
from services.cli.main import EXIT_CONFIG
from services.runtime.hardening import protect_process
from services.runtime.natsserver import NatsServer
from services.runtime.settings import Settings, redact_url

ORDER = ("projector", "executor", "router")
STOP_ORDER = ("router", "executor", "projector")
SERVICES = {subjects.SERVICE_ROUTER, subjects.SERVICE_EXECUTOR, subjects.SERVICE_PROJECTOR}
# `--metrics-port P`: where each service serves its metrics, from P
METRICS_PORT_OFFSET = {"router": 0, "executor": 1, "projector": 2}

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_RUN_S = 60.0  # a child that ran this long starts its back-off again from the first
READY_WAIT_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h

T = TypeVar("T")


def say(text: str) -> None:
    print(f"domed up: {text}", flush=True)


def complain(text: str) -> None:
    print(f"domed up: {text}", file=sys.stderr, flush=True)


def check_catalogue(ssot: Path) -> bool:
    """True when the catalogue loads; otherwise print every problem."""
    from services.catalogue.loader import CatalogueError, load_catalogue

    try:
        load_catalogue(ssot)
    except CatalogueError as exc:
        complain(f"the catalogue in {ssot} has {len(exc.problems)} problem(s); nothing started:")
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        print("  (`domed tools validate` checks it again)", file=sys.stderr, flush=True)
        return False
    return True


# `services.cli.main` in the source tree, `domed.services.cli.main` once installed.
MAIN_MODULE = __name__.rsplit(".", 1)[0] + ".main"


def child_argv(name: str, settings: Settings, job_user: str = "") -> list[str]:
    argv = [
        sys.executable,
        "-m",
        MAIN_MODULE,
        name,
        "--ssot",
        str(settings.ssot),
        "--data-dir",
        str(settings.data_dir),
        "--ack-wait",
        str(settings.stream.ack_wait_s),
        "--replicas",
        str(settings.stream.replicas),
        "--max-age",
        str(settings.stream.max_age_s),
        "--max-bytes",
        str(settings.stream.max_bytes),
    ]
    if settings.nats_creds:
        argv += ["--nats-creds", settings.nats_creds]
    for option, path in (
        ("--tls-ca", settings.tls.ca),
        ("--tls-cert", settings.tls.cert),
        ("--tls-key", settings.tls.key),
    ):
        if path is not None:
            argv += [option, str(path)]
    if settings.metrics_port:
        port = settings.metrics_port + METRICS_PORT_OFFSET[name]
        argv += ["--metrics-addr", f"127.0.0.1:{port}"]
    if name == "projector" and settings.retain_s is not None:
        argv += ["--retain-s", str(settings.retain_s)]
    if name == "executor":
        argv += ["--slots", str(settings.slots), "--limits", settings.limits]
        if job_user:
            argv += ["--job-user", job_user]
    return argv


def child_env(settings: Settings) -> dict[str, str]:
    """The children's environment: ours plus the NATS URL. The URL goes here, not on the
    command line, because it may carry a password: anyone on the host can read a
    process's argv, only its owner its environment."""
    return {**os.environ, "DOMED_NATS_URL": settings.nats_url}


def stop_with_parent() -> None:
    """In the child, before exec: SIGTERM when ``up`` dies, even by SIGKILL, so neither a
    service nor the embedded nats-server outlives it (they run in sessions of their own,
    out of reach of the terminal)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Runs the children until ``stop``; ``failure`` says why it stopped on its own."""

    def __init__(self, settings: Settings, job_user: str = "") -> None:
        self.settings = settings
        self.job_user = job_user
        self.stop = asyncio.Event()
        self.kill_now = asyncio.Event()
        self.children: dict[str, asyncio.subprocess.Process] = {}
        self.restarts: dict[str, int] = {}
        self.failure: str | None = None

    def on_signal(self) -> None:
        if self.stop.is_set():
            self.kill_now.set()
        self.stop.set()

    async def unless_stopped(self, work: Awaitable[T]) -> T | None:
        """``work``'s result, or None (``work`` cancelled) if ``stop`` comes first."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None

    async def keep_running(self, name: str) -> None:
        """Start ``name``, and again each time it exits, until ``stop``."""
        backoff = BACKOFF_FIRST_S
        while not self.stop.is_set():
            began = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *child_argv(name, self.settings, self.job_user),
                env=child_env(self.settings),
                start_new_session=True,
                stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=stop_with_parent,
            )
            self.children[name] = proc
            code = await self.unless_stopped(proc.wait())
            if code is None:
                return
            ran = time.monotonic() - began
            if code == EXIT_CONFIG:
                self.failure = (
                    f"{name} refused its configuration (exit {code}, its message is above); "
                    "stopping, since starting it again would not help"
                )
                self.stop.set()
                return
            if ran >= HEALTHY_RUN_S:
                backoff = BACKOFF_FIRST_S
            self.restarts[name] = self.restarts.get(name, 0) + 1
            looping = " (crash-looping)" if backoff > BACKOFF_FIRST_S else ""
            complain(
                f"{name} exited with {code} after {ran:.1f}s{looping}; restart "
                f"#{self.restarts[name]} in {backoff:g}s"
            )
            await self.unless_stopped(asyncio.sleep(backoff))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def announce_ready(self) -> None:
        """Say once the three services answer ``$SRV.PING``, or that they did not in time."""
        if await self.unless_stopped(wait_for_services(self.settings, READY_WAIT_S)):
            pids = ", ".join(str(self.children[n].pid) for n in ORDER if n in self.children)
            say(f"router, executor and projector are ready (pids {pids}); Ctrl-C stops everything")
        elif not self.stop.is_set():
            complain(f"the services did not all answer within {READY_WAIT_S:g}s")

    async def stop_children(self) -> None:
        for name in STOP_ORDER:
            proc = self.children.get(name)
            if proc is None or proc.returncode is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            grace = self.settings.drain_timeout_s + 15
            waited = asyncio.ensure_future(proc.wait())
            killed = asyncio.ensure_future(self.kill_now.wait())
            await asyncio.wait({waited, killed}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            killed.cancel()
            if proc.returncode is None:
                complain(f"killing {name}")
                proc.kill()
                await waited
            waited.cancel()


async def wait_for_services(settings: Settings, timeout_s: float) -> bool:
    """True once router, executor and projector all answer ``$SRV.PING``."""
    import nats

    from services.runtime.tls import client_context

    deadline = time.monotonic() + timeout_s
    nc = None
    context = client_context(settings.tls)
    while nc is None:
        try:
            nc = await nats.connect(
                settings.nats_url,
                user_credentials=settings.nats_creds,
                connect_timeout=1,
                allow_reconnect=False,
                **({"tls": context} if context is not None else {}),
            )
        except Exception:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
    try:
        while time.monotonic() < deadline:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.publish("$SRV.PING", b"", reply=inbox)
            seen: set[Any] = set()
            with contextlib.suppress(asyncio.TimeoutError, nats.errors.TimeoutError):
                while True:
                    msg = await sub.next_msg(timeout=0.2)
                    if msg.data:  # not the server's no-responders status
                        with contextlib.suppress(ValueError, AttributeError):
                            seen.add(json.loads(msg.data).get("name"))
            await sub.unsubscribe()
            if seen >= SERVICES:
                return True
        return False
    finally:
        await nc.close()


async def supervise(args: argparse.Namespace, settings: Settings, nats_store: Path) -> int:
    sup = Supervisor(settings, getattr(args, "job_user", ""))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, sup.on_signal)

    server: NatsServer | None = None
    external = args.nats_url or os.environ.get("DOMED_NATS_URL") or os.environ.get("NATS_URL")
    if external:
        say(f"using NATS at {redact_url(settings.nats_url)}")
    else:
        server = NatsServer(store_dir=nats_store, port=args.nats_port, before_exec=stop_with_parent)
        starting = asyncio.ensure_future(asyncio.to_thread(server.start))
        await asyncio.wait(
            {starting, asyncio.ensure_future(sup.stop.wait())},
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not starting.done():
            # Stopped while the server starts: ending it makes server.start() return.
            while not starting.done():
                server.stop()
                await asyncio.wait({starting}, timeout=0.1)
            say("stopped")
            return 0
        try:
            starting.result()
        except (OSError, RuntimeError, TimeoutError) as exc:
            complain(f"could not start nats-server on 127.0.0.1:{args.nats_port}: {exc}")
            server.stop()
            return 3
        settings = replace(settings, nats_url=server.url)
        sup.settings = settings
        say(f"embedded NATS listening on {server.url} (store {server.store_dir})")

    try:
        async with asyncio.TaskGroup() as tasks:
            for name in ORDER:
                tasks.create_task(sup.keep_running(name))
            tasks.create_task(sup.announce_ready())
            await sup.stop.wait()
            say("stopping")
        # Every child a task started is in sup.children now: none can start after this.
        await sup.stop_children()
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
    if sup.failure:
        complain(sup.failure)
        return EXIT_CONFIG
    say("stopped")
    return 0


def up(args: argparse.Namespace, settings: Settings) -> int:
    # The children get the URL from `settings`; no job may read it from this process.
    args.nats_url = args.nats_url or os.environ.get("DOMED_NATS_URL") or os.environ.get("NATS_URL")
    protect_process()
    try:
        if not check_catalogue(Path(settings.ssot)):
            return EXIT_CONFIG
        nats_store = Path(settings.data_dir).resolve() / "nats"
        return asyncio.run(supervise(args, settings, nats_store))
    except KeyboardInterrupt:  # Ctrl-C before the supervisor's handlers: nothing started
        say("stopped")
        return 130
