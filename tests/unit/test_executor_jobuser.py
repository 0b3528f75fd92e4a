"""services.executor.jobuser: which capabilities running jobs as another user takes."""

from __future__ import annotations

import pytest

from services.executor.jobuser import (
    CAP_CHOWN,
    CAP_KILL,
    CAP_SETGID,
    CAP_SETUID,
    CAP_SYS_PTRACE,
    JobUser,
    JobUserError,
    check_can_switch,
    parse_job_user,
)

NOBODY = JobUser("nobody", 65534, 65534)
ALL = sum(1 << c for c in (CAP_CHOWN, CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SYS_PTRACE))


def test_an_executor_with_every_needed_capability_may_switch() -> None:
    check_can_switch(NOBODY, caps=ALL)


@pytest.mark.parametrize(
    ("cap", "name"),
    [
        (CAP_SETUID, "CAP_SETUID"),
        (CAP_SETGID, "CAP_SETGID"),
        (CAP_KILL, "CAP_KILL"),
        (CAP_CHOWN, "CAP_CHOWN"),  # to hand the job the dirs made for it
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),  # to recognise its processes after a restart
    ],
)
def test_an_executor_lacking_a_capability_is_told_which(cap: int, name: str) -> None:
    with pytest.raises(JobUserError, match=name):
        check_can_switch(NOBODY, caps=ALL & ~(1 << cap))


def test_a_job_user_is_a_name_or_a_number_with_an_optional_group() -> None:
    root = parse_job_user("0")
    assert (root.name, root.uid, root.gid) == ("root", 0, 0)
    assert parse_job_user("root:0").gid == 0
    with pytest.raises(JobUserError, match="no group"):
        parse_job_user("root:no-such-group-domed")
