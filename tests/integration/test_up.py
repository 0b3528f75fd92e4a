"""``domed up`` as a user runs it: a real process with its embedded nats-server and three
service processes, stopped by signals at different moments."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.runtime.natsserver import free_port, nats_server_binary
from tests.support import make_ssot, pid_alive

ROOT = Path(__file__).resolve().parents[2]


class Up:
    """One ``domed up`` process; its stdout and stderr lines, merged, as they come."""

    def __init__(self, *args: str) -> None:
        self.argv = [sys.executable, "-m", "services.cli.main", "up", *args]
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> Up:
        env = {k: v for k, v in os.environ.items() if k not in ("DOMED_NATS_URL", "NATS_URL")}
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def saw(self, fragment: str, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not any(fragment in line for line in self.lines):
                assert self.proc is not None
                if self.proc.returncode is not None and self.reader and self.reader.done():
                    raise AssertionError(f"up exited before {fragment!r}:\n{self.text}")
                await asyncio.sleep(0.02)

    async def exit_code(self, timeout: float = 30) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            if self.reader is not None:
                await self.reader
        return code

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


async def up_with_embedded_nats(ssot: Path, data: Path) -> Up:
    """``domed up`` with its own nats-server on a free port, started."""
    return await Up(
        "--ssot", str(ssot), "--data-dir", str(data), "--nats-port", str(free_port())
    ).start()


def processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line contains ``text`` (our data dir: our children)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline and pid_alive(int(entry)):
            found.append(int(entry))
    return found


async def nothing_left(data_dir: Path, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while left := processes_mentioning(str(data_dir)):
        if time.monotonic() > deadline:
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"processes left behind: {left}")
        await asyncio.sleep(0.05)


@pytest.fixture
def good_ssot(tmp_path: Path) -> Path:
    return make_ssot(tmp_path / "ssot")


def test_up_refuses_a_broken_catalogue_and_starts_nothing(tmp_path: Path) -> None:
    ssot = tmp_path / "ssot"
    (ssot / "tools").mkdir(parents=True)
    (ssot / "tools" / "a.yaml").write_text("id: Bad Id\nversion: 1\nentrypoint: [true]\n")
    (ssot / "tools" / "b.yaml").write_text("id: b\nversion: 1\nentrypoint: ['{nothing}']\n")
    port = free_port()
    data = tmp_path / "data"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "up", "--ssot", str(ssot)]
        + ["--data-dir", str(data), "--nats-port", str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - started < 10
    assert "a.yaml" in done.stderr and "b.yaml" in done.stderr, done.stderr
    assert "nothing started" in done.stderr
    assert "embedded NATS" not in done.stdout
    assert not data.exists()


@pytest.mark.parametrize(
    ("moment", "sig"),
    [
        ("domed up: embedded NATS listening", signal.SIGTERM),
        ("domed up: embedded NATS listening", signal.SIGINT),
        ("are ready", signal.SIGINT),
    ],
    ids=["sigterm-while-services-start", "ctrl-c-while-services-start", "ctrl-c-when-ready"],
)
async def test_up_stops_within_seconds_at_any_moment(
    tmp_path: Path, good_ssot: Path, moment: str, sig: int
) -> None:
    data = tmp_path / "data"
    up = await up_with_embedded_nats(good_ssot, data)
    try:
        await up.saw(moment, timeout=60)
        asked = time.monotonic()
        up.signal(sig)
        code = await up.exit_code(timeout=15)
        took = time.monotonic() - asked
        assert code == 0, up.text
        assert took < 8, f"stopping took {took:.1f}s:\n{up.text}"
        assert "domed up: stopped" in up.text
        await nothing_left(data)
    finally:
        up.kill()


async def test_up_stops_when_a_service_refuses_its_configuration(
    tmp_path: Path, good_ssot: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "projector").write_text("not a directory")  # where the projector keeps its store
    up = await up_with_embedded_nats(good_ssot, data)
    try:
        code = await up.exit_code(timeout=60)
        assert code == 2, up.text
        assert "projector refused its configuration" in up.text
        assert "cannot use the projection store" in up.text
        assert "restart #" not in up.text
        await nothing_left(data)
    finally:
        up.kill()


async def test_up_restarts_a_crash_looping_service_with_growing_backoff(
    tmp_path: Path, good_ssot: Path
) -> None:
    """A server without JetStream: every service exits (3, worth retrying) at start."""
    port = free_port()
    server = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    data = tmp_path / "data"
    up = await Up(
        "--ssot", str(good_ssot), "--data-dir", str(data), "--nats-url", f"nats://127.0.0.1:{port}"
    ).start()
    try:
        await up.saw("router exited with 3", timeout=30)
        await up.saw("router exited with 3 after", timeout=30)
        await up.saw("restart #1 in 1s")
        await up.saw("crash-looping); restart #2 in 2s", timeout=30)
        await up.saw("crash-looping); restart #3 in 4s", timeout=30)
        assert "JetStream is not available" in up.text
        asked = time.monotonic()
        up.signal(signal.SIGTERM)
        assert await up.exit_code(timeout=15) == 0, up.text
        assert time.monotonic() - asked < 8
        await nothing_left(data)
    finally:
        up.kill()
        server.kill()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)


async def test_services_and_the_server_stop_when_up_is_killed(
    tmp_path: Path, good_ssot: Path
) -> None:
    """SIGKILL cannot be handled, but nothing it started may outlive ``up``."""
    data = tmp_path / "data"
    up = await up_with_embedded_nats(good_ssot, data)
    try:
        await up.saw("are ready", timeout=60)
        up.signal(signal.SIGKILL)
        await up.exit_code(timeout=10)
        deadline = time.monotonic() + 15
        while left := processes_mentioning(str(data)):  # services and the nats-server
            assert time.monotonic() < deadline, f"outlived up: {left}"
            await asyncio.sleep(0.05)
    finally:
        up.kill()
        for pid in processes_mentioning(str(data)):  # the embedded nats-server
            os.kill(pid, signal.SIGKILL)
