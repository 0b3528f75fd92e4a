"""``domed status``: what is running and how it is doing, read from NATS alone.

- the services that answer ``$SRV.STATS``, with each endpoint's requests, errors and
  average processing time;
- the stream ``DOMED_JOBS``: messages, bytes, the age of its oldest and newest event;
- the executors' queue: the ``executors`` consumer's pending jobs (queued, not yet
  taken) and jobs in flight (taken, not yet finished);
- the projector's lag: the stream's last sequence minus what it has projected.

The queue and the lag are the numbers the services' metrics export under the same
definitions (``domed_queue_pending``, ``domed_projector_lag_events``; docs/operations.md,
Metrics); ``--json`` has them under ``metrics``.

Every consumer gets a ``role``: ``executors`` (the durable work queue), ``projector``
(the projector's ordered consumer over the whole stream, recognised by its inbox
prefix and filter), ``durable`` (another durable one, someone's own) or ``temporary``
(an ephemeral consumer a reader made for itself: a ``nats`` CLI session, an ordered
consumer following one job, a projector answering ``domed.jobs.events``). Temporary
ones are counted, not listed as part of domed; ``--json`` prints everything gathered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.client import Client

from contracts import subjects

JS_API = "$JS.API"
GATHER_S = 0.5


async def _services(nc: Client) -> list[dict[str, Any]]:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    found: list[dict[str, Any]] = []
    try:
        await nc.publish("$SRV.STATS", b"", reply=inbox)
        with contextlib.suppress(nats.errors.TimeoutError, asyncio.TimeoutError):
            while True:
                msg = await sub.next_msg(timeout=GATHER_S)
                if not msg.data:  # the server's "no responders" status
                    continue
                with contextlib.suppress(ValueError):
                    found.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return sorted(found, key=lambda s: (s.get("name", ""), s.get("id", "")))


async def _js(nc: Client, api: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    msg = await nc.request(f"{JS_API}.{api}", json.dumps(body or {}).encode(), timeout=2)
    reply: dict[str, Any] = json.loads(msg.data)
    if "error" in reply:
        raise RuntimeError(reply["error"].get("description", str(reply["error"])))
    return reply


async def _consumers(nc: Client) -> list[dict[str, Any]]:
    consumers: list[dict[str, Any]] = []
    while True:
        page = await _js(nc, f"CONSUMER.LIST.{subjects.STREAM}", {"offset": len(consumers)})
        batch = page.get("consumers") or []
        consumers.extend(batch)
        if not batch or len(consumers) >= page.get("total", 0):
            return consumers


async def _projected_seq(nc: Client) -> int | None:
    try:
        msg = await nc.request(subjects.JOBS_LIST, b'{"limit": 1}', timeout=2)
        seq = json.loads(msg.data).get("projected_seq")
    except (nats.errors.Error, ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


async def gather(nc: Client) -> dict[str, Any]:
    """Everything ``domed status`` knows, as plain JSON data."""
    report: dict[str, Any] = {"services": await _services(nc)}
    try:
        report["stream"] = await _js(nc, f"STREAM.INFO.{subjects.STREAM}")
    except (nats.errors.Error, RuntimeError, ValueError) as exc:
        report["stream"] = {"error": str(exc) or type(exc).__name__}
    try:
        consumers = await _consumers(nc)
    except (nats.errors.Error, RuntimeError, ValueError) as exc:
        consumers = []
        report["consumers_error"] = str(exc) or type(exc).__name__
    for c in consumers:
        c["ephemeral"] = not c.get("config", {}).get("durable_name")
        c["role"] = consumer_role(c)
    report["consumers"] = consumers
    report["projected_seq"] = await _projected_seq(nc)
    report["metrics"] = shared_metrics(report)
    return report


# ---- rendering (pure) -------------------------------------------------------------------

_PROJECTOR_INBOX = f"_INBOX_{subjects.SERVICE_PROJECTOR}."


def shared_metrics(report: dict[str, Any]) -> dict[str, int | None]:
    """The gauges ``domed status`` shares with the projector's metrics, by their names;
    None where a part of the report is missing."""
    executors = [
        c for c in report.get("consumers", []) if c.get("name") == subjects.EXECUTORS_CONSUMER
    ]
    state = report.get("stream", {}).get("state")
    projected = report.get("projected_seq")
    lag = None
    if state is not None and projected is not None:
        lag = max(0, int(state.get("last_seq", 0)) - projected)
    return {
        "domed_queue_pending": int(executors[0].get("num_pending", 0)) if executors else None,
        "domed_projector_lag_events": lag,
    }


def consumer_role(info: dict[str, Any]) -> str:
    """``executors``, ``projector``, ``durable`` or ``temporary`` (see the module doc)."""
    config = info.get("config", {})
    if info.get("name") == subjects.EXECUTORS_CONSUMER:
        return "executors"
    if config.get("durable_name"):
        return "durable"
    deliver = config.get("deliver_subject") or ""
    if (
        deliver.startswith(_PROJECTOR_INBOX)
        and config.get("filter_subject") == subjects.STORED_SUBJECTS
    ):
        return "projector"
    return "temporary"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _ago(ts: str | None, now: datetime) -> str:
    if not ts or ts.startswith("0001-"):
        return "-"
    m = _RFC3339.match(ts)
    if m is None:
        return "-"
    fraction = (m.group(2) or ".0")[:7]  # NATS writes nanoseconds; Python takes micro
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    when = datetime.fromisoformat(m.group(1) + fraction + zone)
    seconds = max(0.0, (now - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _latency(ns: int | None) -> str:
    if not ns:
        return "-"
    ms = ns / 1e6
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.0f} ms"


def render(report: dict[str, Any], now: datetime | None = None) -> list[str]:
    """The report as lines for people."""
    now = now or datetime.now(UTC)
    lines: list[str] = []
    services = report.get("services", [])
    if not services:
        lines.append("services: none answer $SRV.STATS (is domed running?)")
    else:
        by_name: dict[str, list[dict[str, Any]]] = {}
        for s in services:
            by_name.setdefault(s.get("name", "?"), []).append(s)
        lines.append("services")
        rows = [("SERVICE", "ENDPOINT", "REQUESTS", "ERRORS", "AVG TIME")]
        for name, instances in sorted(by_name.items()):
            label = f"{name} ×{len(instances)}" if len(instances) > 1 else name
            totals: dict[str, list[int]] = {}
            for inst in instances:
                for ep in inst.get("endpoints") or []:
                    t = totals.setdefault(ep.get("subject", "?"), [0, 0, 0])
                    t[0] += ep.get("num_requests", 0)
                    t[1] += ep.get("num_errors", 0)
                    t[2] += ep.get("processing_time", 0)
            if not totals:
                rows.append((label, "", "", "", ""))
            for subject, (requests, errors, spent) in sorted(totals.items()):
                avg = spent // requests if requests else None
                rows.append((label, subject, str(requests), str(errors), _latency(avg)))
                label = ""
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    stream = report.get("stream", {})
    state = stream.get("state")
    if state is None:
        lines.append(f"stream {subjects.STREAM}: unavailable ({stream.get('error', '?')})")
    else:
        lines.append(
            f"stream {subjects.STREAM}: {state.get('messages', 0)} events, "
            f"{_size(state.get('bytes', 0))}, oldest {_ago(state.get('first_ts'), now)}, "
            f"newest {_ago(state.get('last_ts'), now)}, last seq {state.get('last_seq', 0)}"
        )
    consumers = report.get("consumers", [])
    executors = [c for c in consumers if c.get("name") == subjects.EXECUTORS_CONSUMER]
    shared = shared_metrics(report)
    if executors:
        c = executors[0]
        waiting = c.get("num_waiting", 0)
        lines.append(
            f"executors: {shared['domed_queue_pending']} job(s) queued, "
            f"{c.get('num_ack_pending', 0)} in flight, {waiting} pull request(s) waiting "
            f"(consumer {subjects.EXECUTORS_CONSUMER})"
        )
    elif "consumers_error" in report:
        lines.append(f"executors: unknown ({report['consumers_error']})")
    else:
        lines.append(f"executors: no consumer {subjects.EXECUTORS_CONSUMER} yet")
    others = [c for c in consumers if c.get("role") == "durable"]
    for c in others:
        lines.append(
            f"consumer {c.get('name')}: {c.get('num_pending', 0)} pending, "
            f"{c.get('num_ack_pending', 0)} unacknowledged"
        )
    projected = report.get("projected_seq")
    if projected is None:
        lines.append("projector: no answer")
    elif state is not None:
        behind = shared["domed_projector_lag_events"]
        readers = [c.get("name") for c in consumers if c.get("role") == "projector"]
        reading = f" (reading with consumer {', '.join(map(str, readers))})" if readers else ""
        lines.append(f"projector: at seq {projected}, {behind} event(s) behind{reading}")
    temporary = sum(1 for c in consumers if c.get("role") == "temporary")
    if temporary:
        lines.append(
            f"(and {temporary} temporary consumer(s) of readers following the stream; "
            "`--json` lists them)"
        )
    return lines
