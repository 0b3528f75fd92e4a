"""``--job-user USER[:GROUP]``: every job runs as that user, with only that group.

The switch happens in the spawn itself (``subprocess`` ``user``/``group``/
``extra_groups``, no ``preexec_fn``). The executor needs CAP_SETUID and CAP_SETGID for
it, CAP_CHOWN to hand the job the dirs made for it, CAP_KILL to stop processes of
another user, and CAP_SYS_PTRACE to read their ``DOMED_JOB_ID`` when it reconciles after
a restart (``/proc/<pid>/environ`` of another user). Root has them all; an executor
without them refuses to start rather than run jobs as itself or lose track of them.
"""

from __future__ import annotations

import ctypes
import grp
import pwd
from dataclasses import dataclass
from pathlib import Path

CAP_CHOWN = 0
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SYS_PTRACE = 19
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_NAMES = {
    CAP_CHOWN: "CAP_CHOWN",
    CAP_KILL: "CAP_KILL",
    CAP_SETGID: "CAP_SETGID",
    CAP_SETUID: "CAP_SETUID",
    CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
}


@dataclass(frozen=True)
class JobUser:
    """Whom jobs run as: a user and the one group they get."""

    name: str
    uid: int
    gid: int


class JobUserError(ValueError):
    """``--job-user`` names no such user or group, or this process cannot switch to it."""


def parse_job_user(spec: str) -> JobUser:
    """``USER`` (its primary group) or ``USER:GROUP``; names or numbers."""
    user, _, group = spec.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise JobUserError(f"--job-user {spec!r}: no user {user!r} on this host") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except (KeyError, ValueError):
            raise JobUserError(f"--job-user {spec!r}: no group {group!r} on this host") from None
    return JobUser(entry.pw_name, entry.pw_uid, gid)


def effective_caps(status: Path = Path("/proc/self/status")) -> int:
    """This process's effective capability set (``CapEff``)."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_can_switch(job_user: JobUser, caps: int | None = None) -> None:
    """Raise ``JobUserError`` unless this process may run, stop and reap jobs as ``job_user``."""
    caps = effective_caps() if caps is None else caps
    missing = [name for cap, name in sorted(CAP_NAMES.items()) if not caps & (1 << cap)]
    if missing:
        raise JobUserError(
            f"--job-user {job_user.name}: this executor cannot switch users (it lacks "
            f"{', '.join(missing)}); run it as root or grant those capabilities, or drop "
            "--job-user"
        )


def clear_ambient_caps() -> bool:
    """Empty this process's ambient capability set, keeping its own capabilities.

    An executor given its capabilities as ambient ones (systemd ``AmbientCapabilities=``
    with a non-root ``User=``) would pass them to every job: a switch between two
    non-root users keeps capabilities, and ``execve`` of a plain file keeps the ambient
    set. With it empty, a job starts with none. False where the kernel refuses."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
