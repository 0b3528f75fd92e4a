"""One job's process group: spawn without a shell, read both pipes, reap, and kill.

Spawning uses ``process_group=0`` (never ``preexec_fn``, which forces the slow fork
path), so signals reach the whole group. A job's process starts gated: a shell that
waits on its stdin (a pipe) and then execs the tool in place, same pid, stdin from
/dev/null. The executor opens the gate once the attempt's ``started`` is stored, so a
delivery it has not won never runs a line of the tool, while spawning still overlaps
the ``started`` round trip. Exit is observed through a pidfd and
reaped with ``wait4``, which also gives the job's resource usage. Output arrives
as byte chunks read with the event loop's reader callbacks; the caller can pause
reading to push back on a child that writes faster than we can publish.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from contracts.events import ResourceLimit
from services.executor.cgroups import JobCgroup
from services.executor.limits import (
    RLIMIT_UNITS,
    JobLimits,
    TreeUsage,
    breach,
    rlimits,
    ulimit_commands,
)

OutputCallback = Callable[[str, bytes], None]


READ_CHUNK = 256 * 1024
# dash starts in ~0.6 ms of CPU (measured against a plain spawn of `true`): the price of
# starting no tool code before its `started` is stored. Exit 125 when the gate is shut.
# The shell exports PWD, which the job's environment does not have unless allowed.
GATE_SHELL = "/bin/sh"
GATE_SHUT = 125
GATE_LIMITS_REFUSED = 126  # a `ulimit` of the job's failed: the tool never runs
GATE_SCRIPT = f'read _ || exit {GATE_SHUT}; unset PWD; exec "$@" </dev/null'
GATE_SCRIPT_WITH_PWD = f'read _ || exit {GATE_SHUT}; exec "$@" </dev/null'


@functools.cache
def nproc_flag() -> str:
    """The gate shell's ``ulimit`` flag for RLIMIT_NPROC: ``-u`` in bash, ``-p`` in dash."""
    probe = subprocess.run([GATE_SHELL, "-c", "ulimit -u"], capture_output=True, check=False)
    return "u" if probe.returncode == 0 else "p"


@functools.cache
def own_hard_limits() -> dict[int, int]:
    """This process's finite hard rlimits (its jobs can be given no more); read once, as
    only a privileged process could raise them."""
    found = {}
    for which in (*RLIMIT_UNITS, resource.RLIMIT_NPROC):
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            found[which] = hard
    return found


def gate_script(env: dict[str, str], job_limits: JobLimits, cgroup: bool) -> str:
    """The gate's script: the job's rlimits set on itself, then wait to be let through."""
    script = GATE_SCRIPT_WITH_PWD if "PWD" in env else GATE_SCRIPT
    wanted = rlimits(job_limits, cgroup)
    if not wanted:
        return script
    needs_nproc = any(which == resource.RLIMIT_NPROC for which, _, _ in wanted)
    commands = ulimit_commands(wanted, own_hard_limits(), nproc_flag() if needs_nproc else "u")
    return f"{commands} || exit {GATE_LIMITS_REFUSED}; {script}"


# Where each (command, PATH) was found last: checking that path again is one access()
# where a search of PATH costs about ten syscalls, 3% of the executor's CPU a job.
_FOUND: dict[tuple[str, str], str] = {}
FOUND_KEPT = 256


def check_executable(command: str, env: dict[str, str]) -> None:
    """Raise OSError, as exec would, when ``command`` cannot be run: the gate's shell
    would only say so after the job's ``started`` is stored."""
    if "/" not in command:
        key = (command, env.get("PATH", os.defpath))
        if (found := _FOUND.get(key)) is not None and os.access(found, os.X_OK):
            return
        if (found := shutil.which(command, path=key[1])) is None:
            _FOUND.pop(key, None)
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if len(_FOUND) >= FOUND_KEPT:
            _FOUND.clear()
        _FOUND[key] = found
        return
    if not os.path.isfile(command):
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    if not os.access(command, os.X_OK):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))


class _PipeReader:
    """Reads one pipe with ``loop.add_reader`` and ``os.read``: a chunk at a time, in
    arrival order, until EOF. Lighter than an asyncio transport (no protocol, no
    waiter to await), and pausing is removing the reader, so the pipe fills and the
    child blocks: back-pressure.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, name: str, fd: int, on_output: OutputCallback
    ) -> None:
        self.loop = loop
        self.name = name
        self.fd = fd
        self.on_output = on_output
        self.done: asyncio.Future[None] = loop.create_future()
        self.reading = False
        os.set_blocking(fd, False)

    def resume(self) -> None:
        if not self.reading and not self.done.done():
            self.loop.add_reader(self.fd, self._ready)
            self.reading = True

    def pause(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def _ready(self) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.on_output(self.name, data)
        else:
            self.close()

    def close(self) -> None:
        self.pause()
        if not self.done.done():
            self.done.set_result(None)


@dataclass
class Exit:
    returncode: int
    rusage: resource.struct_rusage | None


@dataclass
class JobProcess:
    popen: subprocess.Popen[bytes]
    readers: list[_PipeReader] = field(default_factory=list)
    exited: asyncio.Future[Exit] | None = None
    signals_sent: list[str] = field(default_factory=list)
    started_mono: float = field(default_factory=time.monotonic)
    gate: int | None = None  # the write end of the gate's pipe, until opened or shut
    limits: JobLimits = field(default_factory=JobLimits)
    cgroup: JobCgroup | None = None  # where the job's whole tree is bounded and counted
    # what it counted, once handed back: a pooled cgroup may then hold the next job
    counted: TreeUsage | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @classmethod
    def spawn(
        cls,
        argv: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        on_output: OutputCallback,
        user: int | None = None,
        group: int | None = None,
        script: str = GATE_SCRIPT,
    ) -> JobProcess:
        """Start ``argv`` in a new process group, held at its gate (``open_gate`` runs the
        tool, ``shut_gate`` ends it unrun) and its output paused (``resume_reading``
        starts it); ``script`` is the gate's (``gate_script``). OSError if it cannot
        start."""
        check_executable(argv[0], env)
        gate_out, gate_in = os.pipe()
        try:
            # A direct Popen (vfork/posix_spawn fast path, ~0.4 ms) rather than asyncio's
            # subprocess transport: we reap through a pidfd with wait4 to get rusage.
            popen = subprocess.Popen(  # noqa: ASYNC220
                [GATE_SHELL, "-c", script, argv[0], *argv],
                stdin=gate_out,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                process_group=0,
                close_fds=True,
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
            )
        except BaseException:
            os.close(gate_in)
            raise
        finally:
            os.close(gate_out)
        proc = cls(popen, gate=gate_in)
        loop = asyncio.get_running_loop()
        for name, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            assert pipe is not None
            proc.readers.append(_PipeReader(loop, name, pipe.fileno(), on_output))
        proc.exited = loop.create_future()
        proc._watch_exit(loop)
        return proc

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        pidfd = os.pidfd_open(self.pid)
        exited = self.exited
        assert exited is not None

        def on_ready() -> None:
            try:
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status, usage = self.pid, 0, None  # type: ignore[assignment]
            if pid == 0:
                return
            loop.remove_reader(pidfd)
            os.close(pidfd)
            code = os.waitstatus_to_exitcode(status)
            self.popen.returncode = code
            if not exited.done():
                exited.set_result(Exit(code, usage))

        loop.add_reader(pidfd, on_ready)

    def has_exited(self) -> bool:
        """The leader has exited and been reaped."""
        return self.popen.returncode is not None

    def open_gate(self) -> None:
        """Let the tool run: the gate's shell execs it."""
        if self.gate is not None:
            try:
                os.write(self.gate, b"\n")
            except OSError:  # the gate's shell is gone (killed): the exit tells
                pass
            self.shut_gate()

    def shut_gate(self) -> None:
        """Close the gate: a shell still waiting there exits 125 without running the tool."""
        if self.gate is not None:
            os.close(self.gate)
            self.gate = None

    def pause_reading(self) -> None:
        for reader in self.readers:
            reader.pause()

    def resume_reading(self) -> None:
        for reader in self.readers:
            reader.resume()

    def signal_group(self, sig: signal.Signals) -> bool:
        """Send ``sig`` to the job's whole process group; False if nothing is left in it."""
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    async def stop(self, grace_s: float, first: str = "TERM") -> None:
        """Send ``first`` (a signal name: the manifest's ``stop_signal``) to the group, wait
        ``grace_s`` for the leader, then KILL the group."""
        assert self.exited is not None
        if self.exited.done():
            self.kill_leftovers()
            return
        self.signal_group(signal.SIGCONT)
        if self.signal_group(signal.Signals[f"SIG{first}"]):
            self.signals_sent.append(first)
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), grace_s)
        except TimeoutError:
            if self.signal_group(signal.SIGKILL):
                self.signals_sent.append("KILL")
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """A job's whole group dies with it: KILL whatever is left once the leader is gone
        (and whatever else is in its cgroup)."""
        if self.signal_group(signal.SIGKILL) and "KILL" not in self.signals_sent:
            self.signals_sent.append("KILL")
        if self.cgroup is not None:
            self.cgroup.kill()

    def confine(self, cgroup: JobCgroup | None, job_limits: JobLimits) -> None:
        """Move the gated process (and so the tool and all it starts) into ``cgroup``;
        its rlimits it sets itself (``gate_script``). OSError if the kernel refuses."""
        self.limits = job_limits
        if cgroup is not None:
            self.cgroup = cgroup
            cgroup.add(self.pid)

    @property
    def confined_in(self) -> list[str]:
        """The dirs of the job's cgroup, if it has one."""
        return self.cgroup.paths if self.cgroup is not None else []

    def tree_usage(self) -> TreeUsage | None:
        """What the job's cgroup counted, if it has one."""
        if self.cgroup is None:
            return self.counted
        try:
            return self.cgroup.usage()
        except (OSError, ValueError):
            return None

    def breach(self) -> ResourceLimit | None:
        """The resource limit the job went past, if any (so far, or how it ended)."""
        return breach(self.limits, self.tree_usage(), self.popen.returncode)

    async def reap_tree(self, timeout_s: float) -> None:
        """Kill everything left in the job's cgroup until it is empty, then keep its last
        counts; bounded: a process in uninterruptible sleep dies when it wakes. Removing
        the cgroup (``discard``) waits until the job's end is published."""
        cgroup = self.cgroup
        if cgroup is None:
            return
        deadline = time.monotonic() + timeout_s
        while pids := cgroup.members():
            cgroup.kill(pids)
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.005)
        cgroup.emptied = True
        cgroup.snapshot()

    def discard(self) -> None:
        """Be done with the job's cgroup, killing what is still in it (idempotent)."""
        if self.cgroup is not None:
            cgroup, self.cgroup = self.cgroup, None
            cgroup.release()
            self.counted = cgroup.final

    async def wait_exit(self) -> Exit:
        assert self.exited is not None
        return await asyncio.shield(self.exited)

    async def drain(self, timeout_s: float) -> bool:
        """Wait for EOF on both pipes, bounded: a grandchild may hold them open."""
        if all(reader.done.done() for reader in self.readers):
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*(r.done for r in self.readers)), timeout_s)
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        """Stop reading and close both pipes and the gate (idempotent)."""
        self.shut_gate()
        for reader in self.readers:
            reader.close()
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


def job_of(pid: int) -> str | None:
    """The job a process belongs to: the ``DOMED_JOB_ID`` its environment still carries
    (every job's process gets it, and children inherit it), or None."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            for item in fh.read().split(b"\0"):
                if item.startswith(b"DOMED_JOB_ID="):
                    return item[len(b"DOMED_JOB_ID=") :].decode(errors="replace")
    except OSError:
        pass
    return None


def rusage_fields(usage: resource.struct_rusage | None) -> tuple[int, float, float] | None:
    if usage is None:
        return None
    return int(usage.ru_maxrss), round(usage.ru_utime, 6), round(usage.ru_stime, 6)
