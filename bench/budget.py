"""What a job costs in messages, read from nats-server's own monitoring (``/connz``,
``/jsz``, ``/varz``): a snapshot of its counters before and after a run, and the
difference divided by the jobs done.

nats-server's counters are as it sees them: a connection's ``in_msgs`` are messages
the client sent to the server, its ``out_msgs`` messages the server sent to the client.
A stream's ``last_seq`` counts what it stored, deleted or not; under
``sync_interval: always`` each of those is an fsync.

Pure apart from ``read_json`` and ``read_snapshot``; tested in tests/unit/test_bench_budget.py.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from typing import Any

from bench.report import Row

# Services name their connections after themselves; the table drops the common prefix.
SERVICE_PREFIX = "domed-"
UNNAMED = "(unnamed)"


@dataclass(frozen=True)
class Snapshot:
    """nats-server's counters since it started."""

    # cid → (connection name, messages in from the client, messages out to it); by cid,
    # so a connection that reconnects counts from zero instead of going negative.
    connections: dict[int, tuple[str, int, int]]
    stored: dict[str, int]  # stream → last_seq
    js_api: int
    server_in: int
    server_out: int


def snapshot_of(connz: dict[str, Any], jsz: dict[str, Any], varz: dict[str, Any]) -> Snapshot:
    """A snapshot from the JSON of ``/connz``, ``/jsz?streams=true`` and ``/varz``."""
    connections = {
        int(c["cid"]): (c.get("name") or UNNAMED, int(c["in_msgs"]), int(c["out_msgs"]))
        for c in connz.get("connections") or []
    }
    stored: dict[str, int] = {}
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            name = stream["name"]
            stored[name] = stored.get(name, 0) + int(stream["state"]["last_seq"])
    return Snapshot(
        connections,
        stored,
        int(jsz["api"]["total"]),
        int(varz["in_msgs"]),
        int(varz["out_msgs"]),
    )


def per_job(before: Snapshot, after: Snapshot, jobs: int) -> dict[str, Any]:
    """The counters' growth from ``before`` to ``after`` divided by ``jobs``; per connection
    name (a service's connections summed), ``sent`` to the server and ``received`` from it."""
    if jobs <= 0:
        raise ValueError("no job done: nothing to divide by")
    sent: dict[str, int] = {}
    received: dict[str, int] = {}
    for cid, (name, in_msgs, out_msgs) in after.connections.items():
        _, in0, out0 = before.connections.get(cid, (name, 0, 0))
        sent[name] = sent.get(name, 0) + in_msgs - in0
        received[name] = received.get(name, 0) + out_msgs - out0

    def each(n: int) -> float:
        return round(n / jobs, 3)

    return {
        "jobs": jobs,
        "per_connection": {
            name: {"sent": each(sent[name]), "received": each(received[name])}
            for name in sorted(sent)
        },
        "stored": {
            name: each(last - before.stored.get(name, 0))
            for name, last in sorted(after.stored.items())
        },
        "js_api_calls": each(after.js_api - before.js_api),
        "server_in": each(after.server_in - before.server_in),
        "server_out": each(after.server_out - before.server_out),
    }


def budget_of(before: Snapshot | str, after: Snapshot | str, jobs: int) -> dict[str, Any]:
    """The per-job budget, or ``{"missing": why}`` when a snapshot is a reason instead."""
    for snap in (before, after):
        if isinstance(snap, str):
            return {"missing": snap}
    assert isinstance(before, Snapshot) and isinstance(after, Snapshot)
    try:
        return per_job(before, after, jobs)
    except ValueError as exc:
        return {"missing": str(exc)}


def short_name(connection: str) -> str:
    return connection.removeprefix(SERVICE_PREFIX)


def budget_line(budget: dict[str, Any]) -> str:
    """The budget as one line of the table's notes; what did not move is left to the JSON."""
    conns = "; ".join(
        f"{short_name(name)} {c['sent']:.2f} sent {c['received']:.2f} received"
        for name, c in budget["per_connection"].items()
        if c["sent"] or c["received"]
    )
    stored = ", ".join(f"{name} {n:.2f}" for name, n in budget["stored"].items() if n)
    return (
        f"messages/job: {conns}; stored/job: {stored}; "
        f"JS API calls/job {budget['js_api_calls']:.2f}; "
        f"nats-server {budget['server_in']:.2f} in {budget['server_out']:.2f} out"
    )


def budget_row(budget: dict[str, Any]) -> Row:
    """Stored messages per job, all streams, with the whole budget in the note; or, when
    there is no budget, a row that says why."""
    metric = "stored messages per job (nats-server monitoring)"
    if "missing" in budget:
        return Row(
            "1 closed loop", metric, float("nan"), "msgs", note=f"no budget: {budget['missing']}"
        )
    return Row(
        "1 closed loop",
        metric,
        round(sum(budget["stored"].values()), 3),
        "msgs",
        note=budget_line(budget),
    )


def read_json(base_url: str, path: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(f"{base_url}/{path}", timeout=timeout_s) as resp:
        return json.load(resp)


def read_snapshot(base_url: str) -> Snapshot:
    """The server's counters now (three HTTP requests: take it while the bus is quiet)."""
    return snapshot_of(
        read_json(base_url, "connz?limit=1024"),
        read_json(base_url, "jsz?streams=true"),
        read_json(base_url, "varz"),
    )
