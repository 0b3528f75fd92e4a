"""The executor's pure rules: splitting output into lines, capping it, spotting
progress, and deciding a job's terminal state. No processes, no NATS, no asyncio.
"""

from __future__ import annotations

import codecs
import re
import signal
from collections.abc import Iterable
from dataclasses import dataclass

from contracts.events import Event, Started, Terminal
from contracts.manifest import ProgressRule


def _utf8_cut(data: bytes | bytearray, limit: int) -> int:
    """The largest cut point ``<= limit`` that does not split a UTF-8 sequence."""
    cut = limit
    for back in range(4):
        i = limit - back
        if i <= 0:
            break
        if (data[i] & 0xC0) != 0x80:
            return i
    return cut


class LineSplitter:
    """Turns a byte stream into lines: never drops bytes, never makes a line longer
    than ``max_line_bytes`` (a longer one is split), replaces invalid UTF-8, strips a
    trailing ``\\r`` of CRLF, and keeps a final line that has no newline (``finish``).
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending = bytearray()

    @staticmethod
    def _decode(raw: bytes | bytearray) -> str:
        return codecs.decode(raw, "utf-8", "replace")

    def _pieces(self, buf: bytearray, start: int, end: int, lines: list[str]) -> int:
        """Append ``buf[start:end]`` as pieces of at most the limit; return where it stopped."""
        limit = self.max_line_bytes
        while end - start > limit:
            cut = start + _utf8_cut(buf[start:end], limit)
            lines.append(self._decode(buf[start:cut]))
            start = cut
        return start

    def feed(self, data: bytes) -> list[str]:
        buf = self._pending
        buf += data
        last_nl = buf.rfind(b"\n")
        if last_nl >= 0 and buf.find(b"\r", 0, last_nl) < 0:
            # Fast path (no CR, no over-long line): decode the complete lines at once. Splitting
            # after decoding equals decoding each line: a newline byte is never inside a
            # multibyte sequence, so "replace" never swallows one.
            complete = bytes(buf[:last_nl])
            if (
                last_nl <= self.max_line_bytes
                or max(map(len, complete.split(b"\n"))) <= self.max_line_bytes
            ):
                del buf[: last_nl + 1]
                lines = complete.decode("utf-8", "replace").split("\n")
                return lines + self._rest()
        return self._rest()

    def _rest(self) -> list[str]:
        lines: list[str] = []
        buf = self._pending
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            end = (
                nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl
            )  # CRLF: the CR is not content
            start = self._pieces(buf, start, end, lines)
            lines.append(self._decode(buf[start:end]))
            start = nl + 1
        # No newline yet: emit full pieces, but keep one byte back if it may be the CR of a CRLF.
        keep = 1 if len(buf) > start and buf[-1] == 0x0D else 0
        start = self._pieces(buf, start, len(buf) - keep, lines)
        del buf[:start]
        return lines

    def finish(self) -> list[str]:
        if not self._pending:
            return []
        lines: list[str] = []
        end = len(self._pending)
        if self._pending.endswith(b"\r"):  # a final CR at EOF ends the line, like a newline
            end -= 1
        start = self._pieces(self._pending, 0, end, lines)
        lines.append(self._decode(self._pending[start:end]))
        self._pending.clear()
        return lines


class SecretMasker:
    """Replaces each secret value by ``***`` in a byte stream, before the stream is split
    into lines: a split at ``max_line_bytes`` can then never cut a secret in two and leave
    its halves unmasked. A tail of a chunk that may be the start of a secret is held back
    until the next chunk (or ``finish``) says whether it is one; any other byte goes on at
    once, so live output is not delayed.
    """

    MASK = b"***"

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains a shorter one is masked whole.
        self._secrets = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._held + data
        for secret in self._secrets:
            buf = buf.replace(secret, self.MASK)
        keep = self._open_prefix(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def _open_prefix(self, buf: bytes) -> int:
        """The length of the longest tail of ``buf`` that is a proper prefix of a secret."""
        longest = max((len(s) for s in self._secrets), default=1)
        for k in range(min(longest - 1, len(buf)), 0, -1):
            tail = buf[-k:]
            if any(s.startswith(tail) for s in self._secrets):
                return k
        return 0


@dataclass
class OutputBudget:
    """Counts published output; past ``max_bytes`` lines are dropped and ``truncated`` set."""

    max_bytes: int
    used: int = 0
    truncated: bool = False

    def admit_all(self, lines: list[str]) -> bool:
        """Admit every line at once if all of them fit; False (nothing admitted) otherwise."""
        size = len("\n".join(lines).encode()) + 1
        if self.used + size > self.max_bytes:
            return False
        self.used += size
        return True

    def admit(self, line: str) -> bool:
        size = (len(line) if line.isascii() else len(line.encode())) + 1
        if self.used + size > self.max_bytes:
            self.truncated = True
            self.used = self.max_bytes
            return False
        self.used += size
        return True


@dataclass(frozen=True)
class ProgressReading:
    current: float | None = None
    total: float | None = None
    percent: float | None = None
    message: str | None = None


class ProgressParser:
    def __init__(self, rule: ProgressRule | None) -> None:
        self._regex = re.compile(rule.regex) if rule else None

    def parse(self, line: str) -> ProgressReading | None:
        if self._regex is None:
            return None
        m = self._regex.search(line)
        if m is None:
            return None
        groups = m.groupdict()

        def num(name: str) -> float | None:
            raw = groups.get(name)
            if raw is None:
                return None
            try:
                return float(raw)
            except ValueError:
                return None

        current, total, percent = num("current"), num("total"), num("percent")
        if percent is None and current is not None and total:
            percent = round(100.0 * current / total, 2)
        return ProgressReading(current, total, percent, groups.get("message"))


@dataclass
class StopReason:
    """Why the executor stopped a job, if it did: the terminal state it implies."""

    state: str  # "canceled" | "timed_out" | "failed" (a resource limit, an invalid result)
    error_code: str | None = None
    message: str | None = None
    limit: str | None = None  # with limit_exceeded: which


def superseded(terminal: Event | None, started: Event | None, attempt: int) -> bool:
    """Whether ``attempt`` no longer owns its job, given the job's newest ``terminal`` and
    newest ``started`` events: it has a terminal (not ours: we have not written one), or
    another attempt started (we were presumed dead).

    The two kinds are looked at apart, not the job's newest event: a log line of ours
    stored late, after another executor's terminal, must not hide that terminal.
    """
    return isinstance(terminal, Terminal) or (
        isinstance(started, Started) and started.attempt != attempt
    )


@dataclass(frozen=True)
class Outcome:
    state: str
    exit_code: int | None
    signal: str | None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name.removeprefix("SIG")
    except ValueError:
        return str(signum)


def outcome(returncode: int, stopped: StopReason | None) -> Outcome:
    """The terminal state: a stop by the executor wins; else exit 0 succeeds, anything else fails."""
    exit_code = returncode if returncode >= 0 else None
    sig = signal_name(-returncode) if returncode < 0 else None
    if stopped is not None:
        return Outcome(stopped.state, exit_code, sig)
    return Outcome("succeeded" if returncode == 0 else "failed", exit_code, sig)


@dataclass
class LineCounter:
    stdout: int = 0
    stderr: int = 0

    def add(self, stream: str, n: int) -> None:
        if stream == "stdout":
            self.stdout += n
        else:
            self.stderr += n


class CancelWatch:
    """Which recently stored ``cancel`` events this executor has seen, so a job's first
    delivery can skip looking the job up.

    A job delivered for the first time has no ``started`` (no executor had it) and can
    have a newer event only if it was canceled. The executor subscribes to stored
    cancels; once that subscription is in place (``watching_from`` the stream's last
    sequence at that moment), every cancel of a job queued later reaches it before the
    job does. For such a job the look-up is needed only if a cancel was seen. Jobs
    queued earlier, and every job while the connection is down (``lost``), are looked
    up as before. Either way the ``started`` compare-and-set stays the final guard.
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self.from_seq: int | None = None
        self._seen: dict[str, int] = {}

    def watching_from(self, stream_seq: int) -> None:
        self.from_seq = stream_seq if self.from_seq is None else max(self.from_seq, stream_seq)

    def lost(self) -> None:
        """Cancels may be missed from now until ``watching_from`` is called again."""
        self.from_seq = None

    def saw(self, job_id: str, cancel_seq: int) -> None:
        self._seen[job_id] = cancel_seq
        if len(self._seen) > self.max_entries:
            # Forget the oldest; jobs queued before the cancel we forget get looked up.
            oldest = next(iter(self._seen))
            forgotten = self._seen.pop(oldest)
            if self.from_seq is not None:
                self.from_seq = max(self.from_seq, forgotten)

    def needs_lookup(self, job_id: str, queued_seq: int, deliveries: int) -> bool:
        if deliveries != 1 or self.from_seq is None or queued_seq <= self.from_seq:
            return True
        return job_id in self._seen
