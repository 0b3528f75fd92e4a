"""Job cgroups: one per attempt, below the executor's own cgroup, that bound and count
the job's whole process tree (``limits.py`` says what each mode guarantees).

``cgroup2``: the unified hierarchy, where the executor's cgroup is delegated to it
(systemd ``Delegate=yes``) with the memory and pids controllers. The executor moves
itself to a leaf (``domed-services``) so the controllers can be enabled for the job
cgroups beside it; a cgroup that holds other processes too is not used. ``cgroup1``: the
legacy memory, pids and cpuacct hierarchies, writable by the executor. Either way a job's
cgroup is named ``domed-<job>-<attempt>-<executor pid>-<n>`` and listed in the job's
record, so the next executor removes what a dead one left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.executor.limits import JobLimits, TreeUsage

log = logging.getLogger("domed.executor.cgroups")

V1_NEEDED = ("memory", "pids")
V1_CONTROLLERS = (*V1_NEEDED, "cpuacct")
V2_NEEDED = ("memory", "pids")
V2_SERVICES_LEAF = "domed-services"
V1_PARENT = "domed"
PREFIX = "domed-"


class CgroupError(Exception):
    """A cgroup mode this host does not offer, and why."""


def parse_mountinfo(text: str) -> tuple[str | None, dict[str, str]]:
    """The cgroup2 mount point, and each v1 controller's mount point, from
    ``/proc/self/mountinfo``."""
    unified: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, after = head.split(), tail.split()
        if len(fields) < 5 or len(after) < 3:
            continue
        mount_point = fields[4].replace("\\040", " ")
        if after[0] == "cgroup2" and unified is None:
            unified = mount_point
        elif after[0] == "cgroup":
            for option in after[2].split(","):
                if option in V1_CONTROLLERS:
                    v1.setdefault(option, mount_point)
    return unified, v1


def parse_proc_cgroup(text: str) -> tuple[str | None, dict[str, str]]:
    """This process's cgroup in the unified hierarchy, and in each v1 controller's, from
    ``/proc/self/cgroup``."""
    unified: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            unified = path
        for controller in controllers.split(","):
            v1[controller] = path
    return unified, v1


def parse_counter(text: str, key: str) -> int:
    """The value of ``key`` in a flat-keyed cgroup file (``memory.events``, ``pids.events``,
    ``cpu.stat``, ``memory.oom_control``), 0 if absent."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            with contextlib.suppress(ValueError):
                return int(value.strip())
    return 0


def _read(path: Path | str) -> str:
    # plain syscalls: a job reads and writes about ten of these files, and pathlib's and
    # io's layers cost as much as the kernel's work here
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _write(path: Path | str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _host_cgroups() -> tuple[str | None, dict[str, str], str | None, dict[str, str]]:
    mount2, mounts1 = parse_mountinfo(_read(Path("/proc/self/mountinfo")))
    path2, paths1 = parse_proc_cgroup(_read(Path("/proc/self/cgroup")))
    return mount2, mounts1, path2, paths1


def _probe(parent: Path) -> None:
    """Raise CgroupError unless a child cgroup can be made (and removed) under ``parent``."""
    probe = parent / f"{PREFIX}probe-{os.getpid()}"
    try:
        parent.mkdir(exist_ok=True)
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise CgroupError(f"cannot create cgroups under {parent}: {exc.strerror or exc}") from None


@dataclass
class JobCgroup:
    """One job attempt's cgroup: one dir (v2) or one per controller (v1). A cgroup of a
    ``CgroupPool`` serves one attempt after another, never two at once."""

    version: int
    dirs: dict[str, Path]  # controller (v1) or "unified" (v2) -> the cgroup's dir
    final: TreeUsage | None = field(default=None)
    applied: JobLimits | None = None  # the limits written to it
    emptied: bool = False  # seen with no process, after its job: none can come back in
    pool: CgroupPool | None = None

    @property
    def paths(self) -> list[str]:
        return sorted({str(d) for d in self.dirs.values()})

    def apply(self, limits: JobLimits) -> None:
        """Write the limits that differ from those it has."""
        had = self.applied or JobLimits()
        self.applied = None  # until all are written
        memory_changed = limits.memory_bytes is not None and limits.memory_bytes != had.memory_bytes
        pids_changed = limits.pids is not None and limits.pids != had.pids
        if self.version == 2:
            cg = self.dirs["unified"]
            if memory_changed:
                _write(cg / "memory.max", str(limits.memory_bytes))
                if (cg / "memory.swap.max").exists():  # swap would let it go past the limit
                    _write(cg / "memory.swap.max", "0")
            if pids_changed:
                _write(cg / "pids.max", str(limits.pids))
        else:
            if (memory := self.dirs.get("memory")) and memory_changed:
                _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
                memsw = memory / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    _write(memsw, str(limits.memory_bytes))
            if (pids := self.dirs.get("pids")) and pids_changed:
                _write(pids / "pids.max", str(limits.pids))
        self.applied = limits

    def reuse(self, limits: JobLimits) -> None:
        """Make an emptied v1 cgroup the next attempt's: its counters zeroed, then
        ``limits`` applied; OSError if refused. Page cache the last job left stays charged
        to it (reclaimed first when the next job needs the room); dropping it with
        ``memory.force_empty`` would cost 0.5 ms a job, measured."""
        if (memory := self.dirs.get("memory")) is not None:
            _write(memory / "memory.max_usage_in_bytes", "0")
        if (cpu := self.dirs.get("cpuacct")) is not None:
            _write(cpu / "cpuacct.usage", "0")
        self.final, self.emptied = None, False
        self.apply(limits)

    def reusable(self) -> bool:
        """Whether the next attempt may have it: it was seen empty and its job hit no
        limit (the oom and refused-fork counters cannot be zeroed)."""
        final = self.final
        return (
            self.version == 1
            and self.emptied
            and final is not None
            and final.oom_kills == 0
            and final.pids_refused == 0
        )

    def release(self) -> None:
        """The attempt is over: kill what is left in it, keep its counts, and hand it back
        to its pool if it can serve again, else remove it."""
        if pids := self.members():
            self.kill(pids)
        self.snapshot()
        if self.pool is not None and self.pool.give_back(self):
            return
        self.remove()

    def add(self, pid: int) -> None:
        """Move ``pid`` (the job's gated first process) in; its descendants follow."""
        for cg in self.dirs.values():
            _write(cg / "cgroup.procs", str(pid))

    def usage(self) -> TreeUsage:
        """What the kernel counted so far (or at removal, once removed)."""
        if self.final is not None:
            return self.final
        if self.version == 2:
            cg = self.dirs["unified"]
            stat = _read(cg / "cpu.stat")
            peak = cg / "memory.peak"
            return TreeUsage(
                memory_peak_bytes=int(_read(peak)) if peak.exists() else None,
                user_s=parse_counter(stat, "user_usec") / 1e6,
                sys_s=parse_counter(stat, "system_usec") / 1e6,
                oom_kills=parse_counter(_read(cg / "memory.events"), "oom_kill"),
                pids_refused=parse_counter(_read(cg / "pids.events"), "max"),
            )
        memory, pids, cpu = (self.dirs.get(c) for c in V1_CONTROLLERS)
        return TreeUsage(
            memory_peak_bytes=int(_read(memory / "memory.max_usage_in_bytes")) if memory else None,
            user_s=int(_read(cpu / "cpuacct.usage_user")) / 1e9 if cpu else 0.0,
            sys_s=int(_read(cpu / "cpuacct.usage_sys")) / 1e9 if cpu else 0.0,
            oom_kills=parse_counter(_read(memory / "memory.oom_control"), "oom_kill")
            if memory
            else 0,
            pids_refused=parse_counter(_read(pids / "pids.events"), "max") if pids else 0,
        )

    def members(self) -> list[int]:
        """The processes in it (every dir of it holds the same ones)."""
        if self.emptied:
            return []
        for cg in self.dirs.values():
            with contextlib.suppress(OSError):
                return [int(p) for p in _read(cg / "cgroup.procs").split()]
        return []

    def kill(self, pids: list[int] | None = None) -> None:
        """SIGKILL every process in the cgroup (or ``pids``, just read from it), including
        any that left the job's process group or cleared its environment."""
        if self.emptied:
            return
        kill_file = self.dirs.get("unified", Path("/nonexistent")) / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            with contextlib.suppress(OSError):
                _write(kill_file, "1")
                return
        for pid in self.members() if pids is None else pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def snapshot(self) -> None:
        """Keep the counts as they are now: ``usage`` answers them from then on."""
        if self.final is None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.final = self.usage()

    def remove(self) -> bool:
        """Remove the cgroup's dirs; False while a process is still in it."""
        removed = True
        for cg in self.dirs.values():
            try:
                cg.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed


@dataclass(frozen=True)
class Hierarchy:
    """Where this executor makes its jobs' cgroups: the parent dir of each."""

    version: int
    parents: dict[str, Path]

    @property
    def mode(self) -> str:
        return f"cgroup{self.version}"

    def controllers(self, limits: JobLimits) -> frozenset[str]:
        """The dirs a cgroup for ``limits`` has (none for a job with no memory, pids or
        CPU limit)."""
        wanted = {
            "memory": limits.memory_bytes is not None,
            "pids": limits.pids is not None,
            # each v1 hierarchy costs about a quarter of a millisecond to make and remove
            "cpuacct": limits.cpu_s is not None,
        }
        if not any(wanted.values()):
            return frozenset()
        return frozenset(key for key in self.parents if key == "unified" or wanted[key])

    def create(self, name: str, limits: JobLimits) -> JobCgroup | None:
        """Make the job's cgroup with its limits (None for a job with no memory, pids or
        CPU limit); OSError if the kernel refuses."""
        keys = self.controllers(limits)
        if not keys:
            return None
        dirs = {key: self.parents[key] / f"{PREFIX}{name}" for key in sorted(keys)}
        made: dict[str, Path] = {}
        try:
            for key, cg in dirs.items():
                cg.mkdir()  # never one that exists: its processes are not this job's
                made[key] = cg
            cgroup = JobCgroup(self.version, made)
            cgroup.apply(limits)
        except OSError:
            JobCgroup(self.version, made).remove()
            raise
        return cgroup


def open_v2() -> Hierarchy:
    """The delegated unified hierarchy, made ready for job cgroups; CgroupError if none."""
    mount, _, path, _ = _host_cgroups()
    if mount is None or path is None:
        raise CgroupError("no cgroup2 hierarchy is mounted")
    base = Path(mount) / path.lstrip("/")
    controllers = set(_read(base / "cgroup.controllers").split())
    missing = [c for c in V2_NEEDED if c not in controllers]
    if missing:
        raise CgroupError(
            f"the executor's cgroup {base} lacks the {', '.join(missing)} controller(s): "
            "run it with systemd Delegate=yes (deploy/systemd)"
        )
    enabled = set(_read(base / "cgroup.subtree_control").split())
    if not set(V2_NEEDED) <= enabled and path == "/":
        raise CgroupError(
            "the executor runs in the root cgroup, whose controllers it does not move "
            "processes around to enable: run it in a delegated cgroup (deploy/systemd)"
        )
    try:
        if not set(V2_NEEDED) <= enabled:
            # Only this process moves: a cgroup that holds others (a login session's, say)
            # is not the executor's to rearrange, and enabling then fails (EBUSY).
            leaf = base / V2_SERVICES_LEAF
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", str(os.getpid()))
            _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_NEEDED))
    except OSError as exc:
        raise CgroupError(
            f"cannot enable {', '.join(V2_NEEDED)} for job cgroups in {base} "
            f"({exc.strerror or exc}): give the executor a cgroup of its own "
            "(systemd Delegate=yes)"
        ) from None
    _probe(base)
    return Hierarchy(2, {"unified": base})


def open_v1() -> Hierarchy:
    """The legacy memory, pids (and cpuacct) hierarchies; CgroupError if not writable."""
    _, mounts, _, paths = _host_cgroups()
    missing = [c for c in V1_NEEDED if c not in mounts]
    if missing:
        raise CgroupError(f"no cgroup v1 {', '.join(missing)} hierarchy is mounted")
    parents = {}
    for controller in V1_CONTROLLERS:
        if controller not in mounts:
            continue
        own = paths.get(controller, "/").lstrip("/")
        parent = Path(mounts[controller]) / own / V1_PARENT
        _probe(parent)
        parents[controller] = parent
    return Hierarchy(1, parents)


def find(mode: str) -> tuple[Hierarchy | None, list[str]]:
    """The hierarchy for ``mode`` (``auto``: the best this host allows; ``rlimit``: none),
    and why better ones were passed over. CgroupError when a mode asked for by name is
    not available."""
    reasons: list[str] = []
    for name, opener in (("cgroup2", open_v2), ("cgroup1", open_v1)):
        if mode not in ("auto", name):
            continue
        try:
            return opener(), reasons
        except (CgroupError, OSError) as exc:
            if mode == name:
                raise CgroupError(f"--limits {name}: {exc}") from None
            reasons.append(f"{name}: {exc}")
    return None, reasons


def remove_left(paths: list[str], wait_s: float = 5.0) -> None:
    """Kill what is still in the cgroups a dead executor's jobs left, and remove them
    once empty (only dirs named as job cgroups)."""
    left = [JobCgroup(1, {"any": Path(p)}) for p in paths if Path(p).name.startswith(PREFIX)]
    deadline = time.monotonic() + wait_s
    while left:
        for cgroup in left:
            cgroup.kill()
        left = [cgroup for cgroup in left if cgroup.members() or not cgroup.remove()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for cgroup in left:
        log.warning("cgroup %s still has processes; not removed", cgroup.paths[0])


class CgroupPool:
    """This executor's emptied v1 job cgroups, kept for the next attempts: reusing one
    costs three writes where making and removing one (memory and pids) costs 0.17 ms of
    the executor's CPU and more of the kernel's. Named ``domed-pool-<pid>-<token>-<n>``:
    no other executor, nor another in this process, ever has the same name, and an
    executor started later removes those of dead processes (``remove_dead_pools``)."""

    def __init__(self, hierarchy: Hierarchy, keep: int) -> None:
        self.hierarchy = hierarchy
        self.keep = keep
        self.idle: dict[frozenset[str], list[JobCgroup]] = {}
        self.stem = f"pool-{os.getpid()}-{secrets.token_hex(4)}"
        self.made = 0
        self.closed = False

    def take(self, limits: JobLimits) -> JobCgroup | None:
        """An idle cgroup made ready for ``limits``, else a new one; None for a job with
        no limit a cgroup bounds; OSError if the kernel refuses."""
        keys = self.hierarchy.controllers(limits)
        if not keys:
            return None
        idle = self.idle.get(keys, [])
        while idle:
            cgroup = idle.pop()
            try:
                cgroup.reuse(limits)
                return cgroup
            except OSError as exc:
                log.warning("job cgroup %s not reused: %s", cgroup.paths[0], exc)
                cgroup.remove()
        self.made += 1
        made = self.hierarchy.create(f"{self.stem}-{self.made}", limits)
        if made is not None:
            made.pool = self
        return made

    def give_back(self, cgroup: JobCgroup) -> bool:
        """Keep ``cgroup`` for a next attempt; False if it is not to be reused."""
        if self.closed or not cgroup.reusable():
            return False
        idle = self.idle.setdefault(frozenset(cgroup.dirs), [])
        if len(idle) >= self.keep:
            return False
        idle.append(cgroup)
        return True

    def close(self) -> None:
        """Remove the idle cgroups; those still in use are removed when released."""
        self.closed = True
        for idle in self.idle.values():
            for cgroup in idle:
                cgroup.remove()
        self.idle.clear()


_POOL_NAME = re.compile(rf"^{PREFIX}pool-(\d+)-[0-9a-f]+-\d+$")


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (an executor's, named in a record or a pooled
    cgroup's name)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_dead_pools(hierarchy: Hierarchy, wait_s: float = 5.0) -> None:
    """Remove the pooled cgroups of executors that are no longer running (an idle one is
    in no job's record), killing what is left in them."""
    left = []
    for parent in hierarchy.parents.values():
        with contextlib.suppress(OSError):
            for entry in os.scandir(parent):
                m = _POOL_NAME.match(entry.name)
                if m and entry.is_dir() and not process_alive(int(m.group(1))):
                    left.append(entry.path)
    if left:
        remove_left(left, wait_s)
