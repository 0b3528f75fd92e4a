"""``domed status`` against the three services running as processes, with a reader's
ephemeral consumer on the stream that must not be listed as part of domed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest

from contracts import subjects, surface
from services.cli.status import consumer_role, render
from services.runtime.natsserver import NatsServer
from tests.support import ServiceProcess, run_cli


@pytest.fixture
async def services(fresh_server: NatsServer, tmp_path: Path) -> AsyncIterator[str]:
    ssot = Path(__file__).resolve().parents[2] / "ssot"  # the shipped tools: demo.echo
    procs = [
        ServiceProcess(name, fresh_server.url, ssot, tmp_path / "data").start()
        for name in ("projector", "executor", "router")
    ]
    try:
        for proc in procs:
            await proc.wait_ready()
        yield fresh_server.url
    finally:
        for proc in procs:
            proc.kill()


async def test_status_summarises_services_stream_queue_and_lag(services: str) -> None:
    url = services
    done = await run_cli("submit", "demo.echo", "-p", "text=hi", "--follow", "--nats-url", url)
    assert done.returncode == 0, done.stderr
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        reader = await js.subscribe(
            subjects.STORED_SUBJECTS, stream=subjects.STREAM, ordered_consumer=True
        )
        reader_name = (await reader.consumer_info()).name

        human = await run_cli("status", "--nats-url", url)
        assert human.returncode == 0, human.stderr
        text = human.stdout
        for name in ("domed-router", "domed-executor", "domed-projector"):
            assert name in text
        # the CLI submits on the tool's own subject
        submit_row = next(line for line in text.splitlines() if "domed.jobs.submit.>" in line)
        assert submit_row.split()[-4:-2] == ["1", "0"], text  # requests, errors
        assert "ms" in submit_row
        assert "stream DOMED_JOBS: " in text and " events, " in text and "oldest " in text
        assert "executors: 0 job(s) queued, 0 in flight" in text
        assert "projector: at seq " in text and " 0 event(s) behind" in text
        assert reader_name not in text
        # ours, and the one the projector made to answer --follow's domed.jobs.events
        # (it lingers a few seconds); the projector's own stream reader is not temporary
        assert "temporary consumer(s)" in text
        assert "(reading with consumer " in text
        assert "{'" not in text  # no Python dicts

        full = await run_cli("status", "--json", "--nats-url", url)
        assert full.returncode == 0, full.stderr
        doc = json.loads(full.stdout)
        by_name = {c["name"]: c for c in doc["consumers"]}
        assert by_name[reader_name]["ephemeral"] is True
        assert by_name[reader_name]["role"] == "temporary"
        assert by_name[subjects.EXECUTORS_CONSUMER]["ephemeral"] is False
        assert by_name[subjects.EXECUTORS_CONSUMER]["role"] == "executors"
        assert [c["role"] for c in doc["consumers"]].count("projector") == 1
        assert doc["stream"]["state"]["messages"] == doc["stream"]["state"]["last_seq"]
        assert doc["projected_seq"] == doc["stream"]["state"]["last_seq"]
        assert {s["name"] for s in doc["services"]} >= {
            "domed-router",
            "domed-executor",
            "domed-projector",
        }
        await reader.unsubscribe()
    finally:
        await nc.close()


async def test_services_serve_exactly_the_documented_endpoints(services: str) -> None:
    """The reference and the AsyncAPI document are generated from contracts.surface: what
    the running services register on the Services API must be that table."""
    nc = await nats.connect(services)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.INFO", b"", reply=inbox)
        served: set[tuple[str, str]] = set()
        names: set[str] = set()
        while len(names) < 3:
            info = json.loads((await sub.next_msg(timeout=5)).data)
            names.add(info["name"])
            served |= {(info["name"], e["subject"]) for e in info.get("endpoints") or []}
    finally:
        await nc.close()
    assert served == {(e.service, e.subject) for e in surface.ENDPOINTS}


async def test_status_says_plainly_when_nothing_runs(fresh_server: NatsServer) -> None:
    done = await run_cli("status", "--nats-url", fresh_server.url)
    assert done.returncode == 0, done.stderr
    assert "none answer $SRV.STATS" in done.stdout
    assert "stream DOMED_JOBS: unavailable" in done.stdout
    assert "projector: no answer" in done.stdout


def test_render_counts_instances_and_sums_their_endpoints() -> None:
    endpoint = {"subject": "domed.jobs.get", "num_requests": 2, "num_errors": 1}
    report = {
        "services": [
            {"name": "domed-projector", "endpoints": [{**endpoint, "processing_time": 4_000_000}]},
            {"name": "domed-projector", "endpoints": [{**endpoint, "processing_time": 2_000_000}]},
        ],
        "stream": {
            "state": {
                "messages": 3,
                "bytes": 2048,
                "last_seq": 10,
                "first_ts": "2025-12-31T23:00:00.123456789Z",
                "last_ts": "2026-01-01T00:59:30+00:00",
            }
        },
        "consumers": [
            {"name": "executors", "num_pending": 4, "num_ack_pending": 2, "role": "executors"},
            {"name": "xyz", "num_pending": 9, "role": "temporary"},
            {"name": "pqr", "num_pending": 3, "role": "projector"},
        ],
        "projected_seq": 7,
    }
    lines = render(report, now=datetime(2026, 1, 1, 1, 0, tzinfo=UTC))
    text = "\n".join(lines)
    row = next(line for line in lines if "domed.jobs.get" in line)
    assert row.split() == ["domed-projector", "×2", "domed.jobs.get", "4", "2", "1.50", "ms"]
    assert "3 events, 2.0 KiB, oldest 1h ago, newest 30s ago, last seq 10" in text
    assert "executors: 4 job(s) queued, 2 in flight" in text
    assert "projector: at seq 7, 3 event(s) behind (reading with consumer pqr)" in text
    assert "xyz" not in text and "1 temporary consumer(s)" in text


@pytest.mark.parametrize(
    ("info", "role"),
    [
        ({"name": "executors", "config": {"durable_name": "executors"}}, "executors"),
        ({"name": "backup", "config": {"durable_name": "backup"}}, "durable"),
        (
            {
                "name": "a1",
                "config": {
                    "deliver_subject": "_INBOX_domed-projector.x1",
                    "filter_subject": "job.*.*",
                },
            },
            "projector",
        ),
        (
            {
                "name": "a2",
                "config": {
                    "deliver_subject": "_INBOX_domed-projector.x2",
                    "filter_subject": "job.01J0000000000000000000000.*",
                },
            },
            "temporary",
        ),
        ({"name": "a3", "config": {"deliver_subject": "_INBOX.x3"}}, "temporary"),
    ],
)
def test_consumer_roles(info: dict[str, object], role: str) -> None:
    assert consumer_role(info) == role
