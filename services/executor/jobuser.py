"""``--job-user USER[:GROUP]``: every job runs as that user, with only that group.

The switch happens in the spawn itself (``subprocess`` ``user``/``group``/
``extra_groups``, no ``preexec_fn``). The executor needs CAP_SETUID and CAP_SETGID for
it, and CAP_KILL to stop, reap and reconcile processes of another user; it refuses to
start without them rather than run jobs as itself.
"""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass
from pathlib import Path

CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
NEEDED_CAPS = (CAP_KILL, CAP_SETGID, CAP_SETUID)


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
    missing = [c for c in NEEDED_CAPS if not caps & (1 << c)]
    if missing:
        names = {CAP_KILL: "CAP_KILL", CAP_SETGID: "CAP_SETGID", CAP_SETUID: "CAP_SETUID"}
        raise JobUserError(
            f"--job-user {job_user.name}: this executor cannot switch users (it lacks "
            f"{', '.join(names[c] for c in missing)}); run it as root or grant those "
            "capabilities, or drop --job-user"
        )
