"""The bench's CPU accounting of the jobs' own processes: the children a system's
processes waited for (the executor's gate and tool, Celery's pool's subprocesses)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

from bench.harness import cpu_seconds
from bench.peers import _children_per_job


def test_a_waited_childs_cpu_is_counted_as_the_parents_childrens() -> None:
    before = cpu_seconds(os.getpid(), children=True)
    subprocess.run([sys.executable, "-c", "sum(range(5_000_000))"], check=True)
    after = cpu_seconds(os.getpid(), children=True)
    assert before is not None and after is not None
    assert after - before >= 0.02


def test_the_jobs_cpu_sums_the_named_processes_children_per_job() -> None:
    children = {"celery pool 1": 0.3, "celery pool 2": 0.2, "redis-server": 5.0}
    per_job = _children_per_job(children, 1000, ["celery pool 1", "celery pool 2"])
    assert per_job == 0.5
    assert math.isnan(_children_per_job(children, 1000, ["executor"]))
    assert math.isnan(_children_per_job(children, 0, ["redis-server"]))
