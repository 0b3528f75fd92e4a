"""A job of the executor's own user cannot read the executor's start-up environment
(where a NATS URL with its password lives) or its memory: services make themselves
non-dumpable and drop the credential variables once their settings are read."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT

SYSTEM_PYTHON = "/usr/bin/python3"
PASSWORD = "s3cret-pw"
HOLDER = """
import sys
sys.path.insert(0, {where!r})
import hardening
if {protect!r}:
    hardening.protect_process()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def as_nobody() -> Iterator[Path]:
    """A world-readable copy of hardening.py, for processes run as ``nobody``."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run processes as another user")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is missing (the venv's python may be unreadable to nobody)")
    where = Path(tempfile.mkdtemp())
    where.chmod(0o755)
    shutil.copy(ROOT / "services" / "runtime" / "hardening.py", where / "hardening.py")
    (where / "hardening.py").chmod(0o644)
    yield where
    shutil.rmtree(where)


def read_environ_of_a_process_of_the_same_user(where: Path, protect: bool) -> str:
    """Start a process as nobody holding a password in its environment, and read its
    /proc/<pid>/environ as another process of nobody: what that reader got."""
    holder = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", HOLDER.format(where=str(where), protect=protect)],
        env={"DOMED_NATS_URL": f"nats://svc:{PASSWORD}@127.0.0.1:4222", "PATH": "/usr/bin:/bin"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        user="nobody",
        group="nogroup",
        extra_groups=[],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        reader = subprocess.run(
            ["cat", f"/proc/{holder.pid}/environ"],
            capture_output=True,
            user="nobody",
            group="nogroup",
            extra_groups=[],
            timeout=10,
        )
        return (reader.stdout + reader.stderr).decode(errors="replace")
    finally:
        holder.kill()
        holder.wait()


def test_a_process_of_the_same_user_reads_an_unprotected_environment(as_nobody: Path) -> None:
    """The attack itself: without protection, the password is there for the taking."""
    assert PASSWORD in read_environ_of_a_process_of_the_same_user(as_nobody, protect=False)


def test_a_protected_process_keeps_its_start_up_environment_from_its_own_user(
    as_nobody: Path,
) -> None:
    got = read_environ_of_a_process_of_the_same_user(as_nobody, protect=True)
    assert PASSWORD not in got and "Permission denied" in got


def test_a_service_drops_its_credentials_and_is_not_dumpable_once_started() -> None:
    probe = (
        "import os\n"
        "from services.runtime import lifecycle, hardening\n"
        "async def main(stop, ready):\n"
        "    print(sorted(k for k in os.environ if k in hardening.CREDENTIAL_VARS),"
        " hardening.is_dumpable(), flush=True)\n"
        "lifecycle.run(main)\n"
    )
    env = {
        **os.environ,
        "DOMED_NATS_URL": f"nats://svc:{PASSWORD}@127.0.0.1:4222",
        "NATS_CREDS": "/etc/domed/executor.creds",
    }
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split() == ["[]", "False"]
