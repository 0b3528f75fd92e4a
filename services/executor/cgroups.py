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


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


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
    """One job attempt's cgroup: one dir (v2) or one per controller (v1)."""

    version: int
    dirs: dict[str, Path]  # controller (v1) or "unified" (v2) -> the cgroup's dir
    final: TreeUsage | None = field(default=None)

    @property
    def paths(self) -> list[str]:
        return sorted({str(d) for d in self.dirs.values()})

    def apply(self, limits: JobLimits) -> None:
        if self.version == 2:
            cg = self.dirs["unified"]
            if limits.memory_bytes is not None:
                _write(cg / "memory.max", str(limits.memory_bytes))
                if (cg / "memory.swap.max").exists():  # swap would let it go past the limit
                    _write(cg / "memory.swap.max", "0")
            if limits.pids is not None:
                _write(cg / "pids.max", str(limits.pids))
            return
        if (memory := self.dirs.get("memory")) and limits.memory_bytes is not None:
            _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
            memsw = memory / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                _write(memsw, str(limits.memory_bytes))
        if (pids := self.dirs.get("pids")) and limits.pids is not None:
            _write(pids / "pids.max", str(limits.pids))

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
        for cg in self.dirs.values():
            with contextlib.suppress(OSError):
                return [int(p) for p in _read(cg / "cgroup.procs").split()]
        return []

    def kill(self, pids: list[int] | None = None) -> None:
        """SIGKILL every process in the cgroup (or ``pids``, just read from it), including
        any that left the job's process group or cleared its environment."""
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

    def create(self, name: str, limits: JobLimits) -> JobCgroup | None:
        """Make the job's cgroup with its limits (None for a job with no memory, pids or
        CPU limit); OSError if the kernel refuses."""
        wanted = {
            "memory": limits.memory_bytes is not None,
            "pids": limits.pids is not None,
            # each v1 hierarchy costs about a quarter of a millisecond to make and remove
            "cpuacct": limits.cpu_s is not None,
        }
        if not any(wanted.values()):
            return None
        dirs = {
            key: parent / f"{PREFIX}{name}"
            for key, parent in self.parents.items()
            if key == "unified" or wanted[key]
        }
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
