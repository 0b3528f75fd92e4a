"""Case 1's message budget: nats-server's counters before and after a run become
messages per job, per connection name and per stream, and a budget that could not be
read becomes a row that says why instead of an exception."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.budget import Snapshot, budget_line, budget_of, budget_row, per_job, snapshot_of


def connz(*conns: tuple[int, str, int, int]) -> dict[str, Any]:
    return {
        "connections": [
            {"cid": cid, "name": name, "in_msgs": i, "out_msgs": o} for cid, name, i, o in conns
        ]
    }


def jsz(api: int, **last_seq: int) -> dict[str, Any]:
    streams = [{"name": name, "state": {"last_seq": seq}} for name, seq in last_seq.items()]
    return {"api": {"total": api}, "account_details": [{"stream_detail": streams}]}


def varz(i: int, o: int) -> dict[str, Any]:
    return {"in_msgs": i, "out_msgs": o}


BEFORE = snapshot_of(
    connz((1, "bench", 10, 20), (2, "domed-executor", 40, 30), (3, "", 0, 0)),
    jsz(7, DOMED_JOBS=300, **{"KV_domed-jobs": 100}),
    varz(1000, 2000),
)


def test_snapshot_of_reads_the_monitoring_json() -> None:
    assert BEFORE == Snapshot(
        {1: ("bench", 10, 20), 2: ("domed-executor", 40, 30), 3: ("(unnamed)", 0, 0)},
        {"DOMED_JOBS": 300, "KV_domed-jobs": 100},
        7,
        1000,
        2000,
    )


def test_per_job_divides_the_growth_by_the_jobs() -> None:
    after = snapshot_of(
        connz(
            (1, "bench", 110, 220),
            (2, "domed-executor", 440, 330),
            # a second connection of the same service, opened during the run: counted whole
            (9, "domed-executor", 10, 0),
            (3, "", 0, 0),
        ),
        jsz(7, DOMED_JOBS=600, **{"KV_domed-jobs": 219, "KV_new": 5}),
        varz(1550, 2800),
    )
    assert per_job(BEFORE, after, 100) == {
        "jobs": 100,
        "per_connection": {
            "(unnamed)": {"sent": 0.0, "received": 0.0},
            "bench": {"sent": 1.0, "received": 2.0},
            "domed-executor": {"sent": 4.1, "received": 3.0},
        },
        "stored": {"DOMED_JOBS": 3.0, "KV_domed-jobs": 1.19, "KV_new": 0.05},
        "js_api_calls": 0.0,
        "server_in": 5.5,
        "server_out": 8.0,
    }


def test_the_line_labels_sent_and_received_and_leaves_out_what_did_not_move() -> None:
    budget = {
        "jobs": 100,
        "per_connection": {
            "(unnamed)": {"sent": 0.0, "received": 0.0},
            "bench": {"sent": 1.0, "received": 2.0},
            "domed-router": {"sent": 2.0, "received": 2.0},
        },
        "stored": {"DOMED_JOBS": 3.0, "KV_domed-holds": 0.0, "KV_domed-jobs": 1.19},
        "js_api_calls": 0.0,
        "server_in": 3.0,
        "server_out": 4.0,
    }
    assert budget_line(budget) == (
        "messages/job: bench 1.00 sent 2.00 received; router 2.00 sent 2.00 received; "
        "stored/job: DOMED_JOBS 3.00, KV_domed-jobs 1.19; JS API calls/job 0.00; "
        "nats-server 3.00 in 4.00 out"
    )
    row = budget_row(budget)
    assert row.value == pytest.approx(4.19) and row.note == budget_line(budget)


@pytest.mark.parametrize(
    ("before", "after", "jobs", "why"),
    [
        ("monitoring not read: URLError", BEFORE, 100, "monitoring not read: URLError"),
        (BEFORE, "the projector had not caught up", 100, "the projector had not caught up"),
        (BEFORE, BEFORE, 0, "no job done: nothing to divide by"),
    ],
)
def test_a_missing_budget_says_why(
    before: Snapshot | str, after: Snapshot | str, jobs: int, why: str
) -> None:
    budget = budget_of(before, after, jobs)
    assert budget == {"missing": why}
    row = budget_row(budget)
    assert math.isnan(row.value) and row.ok is None and why in row.note
