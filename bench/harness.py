"""The benchmark's own world: a nats-server in a temp dir, a bench-only tool catalogue,
domed's services as real child processes, and a /proc sampler for their memory.

Nothing here imports a service: the bench talks to domed only through NATS, the
stream and the ``domed`` command line, as a user would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.natsserver import NatsServer

ROOT = Path(__file__).resolve().parents[1]

SERVICES = ("router", "executor", "projector")

# The bench's tools. `true` and `seq` are C programs from coreutils, so the
# figures measure domed, not an interpreter starting up.
TOOLS: dict[str, str] = {
    "true.yaml": """\
id: bench.true
version: 1
description: Exit 0 at once (bench case 1 and 2).
entrypoint: ["true"]
env_allowlist: [PATH]
timeout_s: 60
cancel_grace_s: 1
""",
    "lines.yaml": """\
id: bench.lines
version: 1
description: Print the numbers 1..n, one a line (bench case 3).
entrypoint: ["seq", "{n}"]
parameters:
  type: object
  properties:
    n: {type: integer, minimum: 1, maximum: 100000000}
  required: [n]
  additionalProperties: false
env_allowlist: [PATH]
timeout_s: 120
cancel_grace_s: 1
""",
    "echo.yaml": """\
id: bench.echo
version: 1
description: Print the given text, like demo.echo (bench case 5).
entrypoint: ["echo", "{text}"]
parameters:
  type: object
  properties:
    text: {type: string, maxLength: 65536}
  required: [text]
  additionalProperties: false
working_dir_policy: temp
env_allowlist: [PATH, LANG]
timeout_s: 30
cancel_grace_s: 2
""",
}


def write_ssot(dst: Path) -> Path:
    """A catalogue holding only the bench tools."""
    tools = dst / "tools" / "bench"
    tools.mkdir(parents=True, exist_ok=True)
    for name, text in TOOLS.items():
        (tools / name).write_text(text)
    return dst


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def read_status_kb(pid: int, key: str) -> int | None:
    """A ``/proc/<pid>/status`` field in kB (VmRSS, VmHWM), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int, children: bool = False) -> float | None:
    """User + system CPU time a process has used so far (``/proc/<pid>/stat``); with
    ``children``, that of its children it has waited for instead (a job's processes, for
    the executor: they are its children, and it waits for each)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        first = 13 if children else 11
        return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class RssSampler:
    """Samples VmRSS of named processes in a thread; keeps each one's peak, and the CPU
    time each used while sampling (``cpu_s``) as a breakdown of where the work went."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.02) -> None:
        self.pids = {**pids, "bench": os.getpid()}
        self.interval_s = interval_s
        self.peak_kb: dict[str, int] = dict.fromkeys(pids, 0)
        self.samples = 0
        self.cpu_s: dict[str, float] = {}
        self.children_cpu_s: dict[str, float] = {}  # of the children each waited for meanwhile
        self._cpu0: dict[str, float | None] = {}
        self._children0: dict[str, float | None] = {}
        self._t0 = 0.0
        self.wall_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                if name not in self.peak_kb:
                    continue
                kb = read_status_kb(pid, "VmRSS")
                if kb is not None and kb > self.peak_kb[name]:
                    self.peak_kb[name] = kb
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._children0 = {name: cpu_seconds(pid, True) for name, pid in self.pids.items()}
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.wall_s = time.monotonic() - self._t0
        for name, pid in self.pids.items():
            now, before = cpu_seconds(pid), self._cpu0.get(name)
            if now is not None and before is not None:
                self.cpu_s[name] = round(now - before, 3)
            now, before = cpu_seconds(pid, True), self._children0.get(name)
            if now is not None and before is not None:
                self.children_cpu_s[name] = round(now - before, 3)


@dataclass
class ServiceProcess:
    """One domed service (``python -m services.cli.main NAME ...``) as a child process."""

    name: str
    url: str
    ssot: Path
    data_dir: Path
    extra: tuple[str, ...] = ()
    src: Path = ROOT
    log_path: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "logs" / f"{self.name}-{time.monotonic_ns()}.log"

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "services.cli.main",
            self.name,
            "--nats-url",
            self.url,
            "--ssot",
            str(self.ssot),
            "--data-dir",
            str(self.data_dir),
            *self.extra,
        ]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.src != ROOT:  # run the services from a snapshot of one commit
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.src), env.get("PYTHONPATH", "")) if p
            )
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.src,
                start_new_session=True,
            )
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_text(self, needle: str, timeout_s: float) -> float:
        """Block until ``needle`` is in the log; returns the monotonic time it was seen."""
        return self.wait_for_log(lambda text: needle in text, repr(needle), timeout_s)

    def wait_for_log(self, seen: Callable[[str], bool], what: str, timeout_s: float) -> float:
        """Block until ``seen(the log so far)`` is true; returns the monotonic time it was."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if seen(self.log_text()):
                return time.monotonic()
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-2000:]}"
                )
            time.sleep(0.01)
        raise TimeoutError(f"{self.name}: {what} not logged within {timeout_s}s")

    def wait_ready(self, timeout_s: float = 30) -> None:
        self.wait_for_text(" ready", timeout_s)

    def stop(self, timeout_s: float = 15) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode


@dataclass
class Stack:
    """The temp dir, the nats-server and the services currently running."""

    root: Path
    server: NatsServer
    ssot: Path
    data_dir: Path
    src: Path = ROOT
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def start_service(self, name: str, *extra: str) -> ServiceProcess:
        svc = ServiceProcess(name, self.url, self.ssot, self.data_dir, extra, self.src).start()
        self.services[name] = svc
        return svc

    def start_services(self, slots: int) -> None:
        """Router, executor and projector, started together and waited for together."""
        started = [
            self.start_service("router"),
            self.start_service("executor", "--slots", str(slots)),
            self.start_service("projector"),
        ]
        for svc in started:
            svc.wait_ready()

    def stop_service(self, name: str) -> None:
        svc = self.services.pop(name, None)
        if svc is not None:
            svc.stop()

    def restart_server(self, sync_always: bool) -> None:
        """Stop nats-server (gracefully) and start it again on the same port and store."""
        self.server.stop()
        self.server.sync_always = sync_always
        self.server.start()

    def pids(self) -> dict[str, int]:
        out = {"nats-server": self.server_pid}
        out.update({name: svc.pid for name, svc in self.services.items()})
        return out

    @property
    def server_pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid


@contextlib.contextmanager
def stack(keep: bool = False, sync_always: bool = True, ref: str = "") -> Iterator[Stack]:
    """A fresh nats-server in a temp dir (file store with ``sync_interval: always``, as
    ``domed up`` runs it, unless ``sync_always`` is False); everything stopped at the end.

    With ``ref`` the services run from ``git archive <ref>`` (a snapshot of that
    commit, unaffected by edits in the working tree) instead of the working tree."""
    tmp = Path(tempfile.mkdtemp(prefix="domed-bench-"))
    # Monitoring on a free loopback port: case 1 reads its message counters.
    server = NatsServer(store_dir=tmp / "nats", sync_always=sync_always, monitor_port=0)
    src = export_ref(ref, tmp / "src") if ref else ROOT
    st = Stack(tmp, server, write_ssot(tmp / "ssot"), tmp / "data", src)
    try:
        server.start()
        yield st
    finally:
        for name in list(st.services):
            with contextlib.suppress(Exception):
                st.stop_service(name)
        server.stop()
        if not keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def export_ref(ref: str, dst: Path) -> Path:
    """Extract the tree of ``ref`` into ``dst`` (read-only use of git: no worktree, no checkout)."""
    dst.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True, timeout=60
    )
    if archive.returncode != 0:
        raise SystemExit(f"git archive {ref} failed: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive.stdout, check=True, timeout=60)
    return dst


def git_commit(ref: str = "") -> str:
    """The short commit of ``ref``, or of HEAD plus ``+dirty`` for a modified working tree."""
    if ref:
        out = subprocess.run(
            ["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}{'+dirty' if dirty else ''}" if sha else "unknown"


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def nats_server_version() -> str:
    from services.runtime.natsserver import nats_server_binary

    try:
        out = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or out.stderr.strip()
