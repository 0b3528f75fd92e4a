"""``domed up``: one machine, one command — an embedded nats-server and the three services.

Each service is a separate child process (they share nothing but NATS). A child
that dies is reported and restarted; Ctrl-C or SIGTERM stops the router first
(no new jobs), then the executor (which drains), then the projector (so it sees
the last terminals), then the server. Children run in their own sessions so a
terminal's Ctrl-C reaches only ``up``, which stops them in that order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.runtime.natsserver import NatsServer
from services.runtime.settings import Settings, redact_url

ORDER = ("projector", "executor", "router")
STOP_ORDER = ("router", "executor", "projector")


def _child_argv(name: str, args: argparse.Namespace, settings: Settings) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "services.cli.main",
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
    if name == "executor":
        argv += ["--slots", str(settings.slots)]
    return argv


def _child_env(settings: Settings) -> dict[str, str]:
    """The children's environment: ours plus the NATS URL. The URL goes here, not on the
    command line, because it may carry a password: anyone on the host can read a
    process's argv, only its owner its environment."""
    return {**os.environ, "DOMED_NATS_URL": settings.nats_url}


def wait_for_services(url: str, creds: str | None, timeout_s: float = 30.0) -> bool:
    """True once router, executor and projector all answer ``$SRV.PING``."""
    import nats

    wanted = {"domed-router", "domed-executor", "domed-projector"}

    async def probe() -> bool:
        nc = await nats.connect(url, user_credentials=creds, connect_timeout=2)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                inbox = nc.new_inbox()
                sub = await nc.subscribe(inbox)
                await nc.publish("$SRV.PING", b"", reply=inbox)
                seen = set()
                try:
                    while True:
                        msg = await sub.next_msg(timeout=0.2)
                        seen.add(json.loads(msg.data).get("name"))
                except Exception:
                    pass
                await sub.unsubscribe()
                if wanted <= seen:
                    return True
            return False
        finally:
            await nc.close()

    return asyncio.run(probe())


def up(args: argparse.Namespace, settings: Settings) -> int:
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    server: NatsServer | None = None
    external = args.nats_url or os.environ.get("DOMED_NATS_URL") or os.environ.get("NATS_URL")
    if not external:
        server = NatsServer(
            store_dir=Path(settings.data_dir).resolve() / "nats", port=args.nats_port
        )
        try:
            server.start()
        except (RuntimeError, TimeoutError) as exc:
            print(
                f"domed up: could not start nats-server on 127.0.0.1:{args.nats_port}: {exc}",
                file=sys.stderr,
            )
            server.stop()
            return 3
        settings = Settings(**{**settings.__dict__, "nats_url": server.url})
        print(
            f"domed up: embedded NATS listening on {server.url} (store {server.store_dir})",
            flush=True,
        )
    else:
        print(f"domed up: using NATS at {redact_url(settings.nats_url)}", flush=True)

    children: dict[str, subprocess.Popen[bytes]] = {}
    restarts: dict[str, float] = {}

    def start(name: str) -> None:
        children[name] = subprocess.Popen(
            _child_argv(name, args, settings),
            env=_child_env(settings),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )

    try:
        for name in ORDER:
            start(name)
        if not wait_for_services(settings.nats_url, settings.nats_creds):
            print(
                "domed up: the services did not all answer within 30s", file=sys.stderr, flush=True
            )
        print(
            f"domed up: router, executor and projector started (pids "
            f"{', '.join(str(children[n].pid) for n in ORDER)}); Ctrl-C stops everything",
            flush=True,
        )
        while not stopping:
            time.sleep(0.1)
            for name, proc in list(children.items()):
                code = proc.poll()
                if code is None or stopping:
                    continue
                print(
                    f"domed up: {name} exited with {code}; restarting it",
                    file=sys.stderr,
                    flush=True,
                )
                if time.monotonic() - restarts.get(name, 0) < 5:
                    time.sleep(1)
                restarts[name] = time.monotonic()
                start(name)
    finally:
        print("domed up: stopping", flush=True)
        for name in STOP_ORDER:
            child = children.get(name)
            if child is None or child.poll() is not None:
                continue
            proc = child
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=settings.drain_timeout_s + 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if server is not None:
            server.stop()
    print("domed up: stopped", flush=True)
    return 0
