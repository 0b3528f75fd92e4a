"""The services' heap setting: a socket reader's page faults, with and without it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.runtime import heap

# Reads the way a NATS connection does (asyncio's 256 KB receive, the leftover joined to
# the next read, frames sliced off), then prints the page faults the reads took.
_READER = """
import resource, socket, sys
from services.runtime.heap import keep_heap
if sys.argv[1] == "kept":
    assert keep_heap()
a, b = socket.socketpair()
a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
chunk = b"x" * 40_000
left = b""
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2000):
    a.sendall(chunk)
    view = left + b.recv(262144)
    frames = [view[i : i + 600] for i in range(0, len(view) - 600, 600)]
    left = view[len(frames) * 600 :]
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _READER, mode], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(not heap._glibc(), reason="a glibc setting")
def test_a_socket_reader_no_longer_faults_on_every_read() -> None:
    default = _faults("default")
    if default < 2000:
        pytest.skip(f"this libc does not give the heap back per read ({default} faults)")
    kept = _faults("kept")
    assert kept * 20 < default, (kept, default)


def test_an_operators_own_malloc_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert heap.keep_heap() is False
