"""The pure rules of resource limits: which rlimits a job gets, which limit it went past,
and reading the kernel's cgroup files."""

from __future__ import annotations

import resource
import signal

import pytest

from contracts.manifest import Limits
from services.executor.cgroups import parse_counter, parse_mountinfo, parse_proc_cgroup
from services.executor.limits import (
    MIB,
    JobLimits,
    TreeUsage,
    breach,
    describe,
    rlimits,
    ulimit_commands,
)

LIMITS = JobLimits.of(Limits(memory_mb=64, cpu_s=1.5, pids=16, open_files=32, file_size_mb=2))


def usage(**kw: float) -> TreeUsage:
    base = {"memory_peak_bytes": 0, "user_s": 0.0, "sys_s": 0.0, "oom_kills": 0, "pids_refused": 0}
    return TreeUsage(**{**base, **kw})  # type: ignore[arg-type]


def test_manifest_limits_become_kernel_units() -> None:
    assert LIMITS == JobLimits(64 * MIB, 1.5, 16, 32, 2 * MIB)
    unlimited = JobLimits.of(
        Limits(memory_mb=None, cpu_s=None, pids=None, open_files=None, file_size_mb=None)
    )
    assert unlimited == JobLimits()


def test_with_a_cgroup_memory_and_pids_are_left_to_it() -> None:
    kinds = {which for which, _, _ in rlimits(LIMITS, cgroup=True)}
    assert kinds == {resource.RLIMIT_CPU, resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE}


def test_without_a_cgroup_memory_and_pids_become_rlimits() -> None:
    got = {which: (soft, hard) for which, soft, hard in rlimits(LIMITS, cgroup=False)}
    assert got[resource.RLIMIT_AS] == (64 * MIB, 64 * MIB)
    assert got[resource.RLIMIT_NPROC] == (16, 16)
    assert got[resource.RLIMIT_CPU] == (2, 3)  # whole seconds, rounded up, then SIGKILL
    assert got[resource.RLIMIT_FSIZE] == (2 * MIB, 2 * MIB)


def test_the_gate_sets_each_rlimit_soft_first_in_the_shells_units() -> None:
    wanted = rlimits(LIMITS, cgroup=False)
    commands = ulimit_commands(wanted, {}, "p").split(" && ")
    assert commands == [
        "ulimit -S -t 2",
        "ulimit -H -t 3",
        "ulimit -S -n 32",
        "ulimit -H -n 32",
        "ulimit -S -f 4096",  # 512-byte blocks
        "ulimit -H -f 4096",
        "ulimit -S -v 65536",  # KiB
        "ulimit -H -v 65536",
        "ulimit -S -p 16",
        "ulimit -H -p 16",
    ]


def test_the_gate_never_asks_for_more_than_the_executor_has() -> None:
    wanted = [(resource.RLIMIT_NOFILE, 4096, 4096)]
    assert ulimit_commands(wanted, {resource.RLIMIT_NOFILE: 1024}, "u") == (
        "ulimit -S -n 1024 && ulimit -H -n 1024"
    )


@pytest.mark.parametrize(
    ("seen", "returncode", "limit"),
    [
        (usage(oom_kills=1), -signal.SIGKILL, "memory"),
        (usage(pids_refused=3), None, "pids"),
        (usage(user_s=1.0, sys_s=0.5), None, "cpu"),
        (usage(user_s=1.0, sys_s=0.4), None, None),
        (None, -signal.SIGXCPU, "cpu"),
        (None, -signal.SIGXFSZ, "file_size"),
        (None, -signal.SIGKILL, None),
        (None, 1, None),
    ],
)
def test_which_limit_a_job_went_past(
    seen: TreeUsage | None, returncode: int | None, limit: str | None
) -> None:
    assert breach(LIMITS, seen, returncode) == limit


def test_a_signal_names_no_limit_the_manifest_did_not_set() -> None:
    assert breach(JobLimits(), None, -signal.SIGXFSZ) is None


def test_the_message_names_the_limit_with_its_value() -> None:
    assert describe("memory", LIMITS) == "the job went past its memory limit (64 MiB)"
    assert "1.5 s" in describe("cpu", LIMITS)
    assert "16 processes" in describe("pids", LIMITS)


MOUNTINFO = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
28 25 0:25 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
31 25 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
"""


def test_mountinfo_gives_each_hierarchys_mount_point() -> None:
    unified, v1 = parse_mountinfo(MOUNTINFO)
    assert unified == "/sys/fs/cgroup/unified"
    assert v1 == {
        "memory": "/sys/fs/cgroup/memory",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
        "pids": "/sys/fs/cgroup/pids",
    }


def test_proc_cgroup_gives_this_process_place_in_each() -> None:
    unified, v1 = parse_proc_cgroup(
        "0::/system.slice/domed-executor.service\n4:memory:/process_api/7c1\n2:cpu,cpuacct:/\n"
    )
    assert unified == "/system.slice/domed-executor.service"
    assert v1["memory"] == "/process_api/7c1" and v1["cpuacct"] == "/"


def test_flat_keyed_counters() -> None:
    events = "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"
    assert parse_counter(events, "oom_kill") == 1
    assert parse_counter(events, "max") == 4
    assert parse_counter("oom_kill_disable 0\nunder_oom 0\n", "oom_kill") == 0
