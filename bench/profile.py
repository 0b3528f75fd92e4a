"""Optional sampling profiles of the services while a case runs (``--profile NAME``).

Needs ``py-spy`` in the same environment (``pip install py-spy``; it is not a
project dependency). py-spy attaches to the running service by pid, records only
samples where a thread is busy (not idle in ``select``), and writes collapsed
stacks; ``summarize`` turns them into the top functions by inclusive and self
time, so the bench can print where domed's own code spends its CPU.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path


def py_spy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(pid: int | None, out: Path, rate: int = 200) -> Iterator[Path | None]:
    """Record ``pid`` with py-spy while the block runs; yields the output path (None if off)."""
    exe = py_spy()
    if pid is None or exe is None:
        yield None
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attaching takes a moment
    try:
        yield out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


_IDLE = ("EpollSelector.select (", "select (selectors.py")

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_key(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("/site-packages/", "/lib/python3", "/work/main/", "/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({file})"


def summarize(path: Path, top: int = 25, own: tuple[str, ...] = ("services/", "contracts/")) -> str:
    """Top functions of a py-spy raw profile: inclusive % (domed's own code) and self %."""
    if not path.exists():
        return f"{path}: no profile written"
    total = 0
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";")[1:]]  # [0] names the process/thread
        if not frames or frames[-1].startswith(_IDLE):
            continue  # waiting in epoll: py-spy does not always see that as idle
        total += count
        for key in set(frames):
            inclusive[key] += count
        self_time[frames[-1]] += count
    if not total:
        return f"{path}: no busy samples"
    lines = [f"{path.name}: {total} busy samples (waits in epoll left out)"]
    lines.append("  inclusive, domed's own functions:")
    shown = 0
    for key, n in inclusive.most_common():
        if any(o in key for o in own):
            lines.append(f"    {100 * n / total:5.1f}%  {key}")
            shown += 1
            if shown >= top:
                break
    lines.append("  self time, any function:")
    for key, n in self_time.most_common(top):
        lines.append(f"    {100 * n / total:5.1f}%  {key}")
    return "\n".join(lines)
