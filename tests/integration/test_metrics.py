"""Prometheus metrics: scraped over HTTP from each service, matching the jobs run."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from contracts import subjects
from services.cli.up import child_argv
from services.runtime.natsserver import NatsServer, free_port
from services.runtime.settings import Settings
from tests.support import Domed, ServiceProcess, log_lines, run_cli, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def http_get(port: int, path: str = "/metrics") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def scrape(port: int) -> Samples:
    status, body = await http_get(port)
    assert status == 200, body
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def until_value(
    port: int, name: str, want: float, timeout: float = 20, **labels: str
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    seen = None
    while asyncio.get_running_loop().time() < deadline:
        seen = value(await scrape(port), name, **labels)
        if seen == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}{labels} is {seen}, not {want}, after {timeout}s")


async def test_metrics_match_the_jobs_run(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    ports = {name: free_port() for name in ("router", "executor", "projector")}
    async with Domed.running(fresh_server.url, ssot, tmp_path / "data", services=(), slots=3) as d:
        for name, port in ports.items():
            await d.start_service(name, metrics_addr=f"127.0.0.1:{port}")
        router, executor, projector = ports["router"], ports["executor"], ports["projector"]

        before = await scrape(executor)
        assert value(before, "domed_executor_slots", state="free") == 3
        assert value(before, "domed_jobs_running", tool="test.sleep") == 0
        assert value(await scrape(router), "domed_jobs_submitted_total", tool="demo.echo") == 0

        runs = [await d.run("demo.echo", {"text": f"line {i}"}) for i in range(3)]
        runs += [await d.run("test.exit", {"code": 3}) for _ in range(2)]
        runs += [await d.run("test.flaky", {"file": str(tmp_path / "runs"), "succeed_at": 3})]
        for job_id, _ in runs:
            await d.projected(job_id)

        submitted = await scrape(router)
        assert value(submitted, "domed_jobs_submitted_total", tool="demo.echo") == 3
        assert value(submitted, "domed_jobs_submitted_total", tool="test.exit") == 2

        await until_value(projector, "domed_projector_lag_events", 0)
        seen = await scrape(projector)
        finished = "domed_jobs_finished_total"
        assert value(seen, finished, tool="demo.echo", state="succeeded") == 3
        assert value(seen, finished, tool="test.exit", state="failed") == 2
        assert value(seen, finished, tool="demo.echo", state="failed") is None
        durations = "domed_job_duration_seconds_count"
        assert value(seen, durations, tool="demo.echo", state="succeeded") == 3
        assert value(seen, durations, tool="test.exit", state="failed") == 2
        inf = {"tool": "demo.echo", "state": "succeeded", "le": "+Inf"}
        assert value(seen, "domed_job_duration_seconds_bucket", **inf) == 3
        assert value(seen, "domed_job_queue_wait_seconds_count", tool="demo.echo") == 3
        stdout = sum(len(log_lines(events, "stdout")) for _, events in runs)
        stderr = sum(len(log_lines(events, "stderr")) for _, events in runs)
        assert value(seen, "domed_log_lines_total", stream="stdout") == stdout > 0
        assert value(seen, "domed_log_lines_total", stream="stderr") == stderr
        assert value(seen, "domed_queue_pending") == 0
        retried = {"tool": "test.flaky", "outcome": "failed"}
        assert value(seen, "domed_job_retries_total", **retried) == 2

        # A sleeping job shows as running, and takes a slot, until it ends.
        sleeper = await d.submit("test.sleep", {"seconds": 60})
        await d.until_kind(sleeper, "started")
        running = await scrape(executor)
        assert value(running, "domed_jobs_running", tool="test.sleep") == 1
        assert value(running, "domed_executor_slots", state="busy") == 1
        assert value(running, "domed_executor_slots", state="free") == 2
        assert (await d.request(subjects.CANCEL, {"job_id": sleeper})).error is None
        await d.events(sleeper)
        await until_value(executor, "domed_jobs_running", 0, tool="test.sleep")
        await until_value(projector, finished, 1, tool="test.sleep", state="canceled")

        # With no executor the queue grows, and the projector's gauge says so.
        await d.stop_service("executor")
        waiting = [await d.submit("demo.echo", {"text": "later"}) for _ in range(2)]
        await until_value(projector, "domed_queue_pending", 2)
        await until_value(projector, "domed_projector_lag_events", 0)
        status = await run_cli("status", "--json", "--nats-url", d.url)
        assert json.loads(status.stdout)["metrics"] == {
            "domed_queue_pending": 2,
            "domed_projector_lag_events": 0,
        }
        assert "2 job(s) queued" in (await run_cli("status", "--nats-url", d.url)).stdout
        await d.start_service("executor")
        for job_id in waiting:
            await d.projected(job_id)
        await until_value(projector, "domed_queue_pending", 0)
        await until_value(projector, finished, 5, tool="demo.echo", state="succeeded")
        await until_value(projector, "domed_projector_lag_events", 0)

        # Nothing but /metrics is served.
        assert (await http_get(projector, "/other"))[0] == 404


async def test_metrics_server_of_a_service_process_stops_with_it(
    nats_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    port = free_port()
    proc = ServiceProcess(
        "projector",
        nats_server.url,
        ssot,
        tmp_path / "data",
        "--metrics-addr",
        f"127.0.0.1:{port}",
    ).start()
    try:
        await proc.wait_ready()
        samples = await scrape(port)
        assert value(samples, "domed_projector_lag_events") is not None
        assert value(samples, "process_resident_memory_bytes")
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        proc.kill()
    await wait_until(lambda: not _listening(port), 5, "metrics port closed")


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_gives_each_service_its_own_metrics_port() -> None:
    settings = Settings(metrics_port=9400)
    addrs = {
        name: child_argv(name, settings)[child_argv(name, settings).index("--metrics-addr") + 1]
        for name in ("router", "executor", "projector")
    }
    assert addrs == {
        "router": "127.0.0.1:9400",
        "executor": "127.0.0.1:9401",
        "projector": "127.0.0.1:9402",
    }
    assert "--metrics-addr" not in child_argv("router", Settings())
