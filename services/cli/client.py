"""A small client for the request/reply API and the event stream, used by the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.js.api import DeliverPolicy
from nats.micro.request import ERROR_HEADER

from contracts import subjects
from contracts.events import Event, decode_event

_enc = msgspec.json.Encoder()


class ApiError(Exception):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class Unreachable(Exception):
    pass


async def _quiet(_: Exception) -> None:
    """Connection errors become one clear message from the caller, not tracebacks."""


async def connect(url: str, creds: str | None = None) -> Client:
    try:
        return await nats.connect(
            servers=[u.strip() for u in url.split(",")],
            user_credentials=creds,
            connect_timeout=2,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            allow_reconnect=False,
            error_cb=_quiet,
            name="domed-cli",
        )
    except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError, TimeoutError) as exc:
        raise Unreachable(url) from exc


async def request(nc: Client, subject: str, body: Any, timeout: float = 5.0) -> Any:
    """Send one request; raise ApiError for a SPEC.md error reply."""
    try:
        msg = await nc.request(subject, _enc.encode(body), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise ApiError("unavailable", f"no service answers {subject}; is domed running?") from None
    except nats.errors.TimeoutError:
        raise ApiError("unavailable", f"{subject} did not answer within {timeout}s") from None
    data = msgspec.json.decode(msg.data) if msg.data else {}
    if msg.headers and ERROR_HEADER in msg.headers:
        err = data.get("error", {}) if isinstance(data, dict) else {}
        raise ApiError(
            err.get("code", "internal"), err.get("message", str(msg.headers)), err.get("details")
        )
    return data


async def follow_job(
    nc: Client, job_id: str, idle_timeout: float | None = None
) -> AsyncIterator[tuple[int, Event]]:
    """Every stored event of one job, from its first, live, until its terminal.

    An ordered consumer on ``job.<id>.*`` with deliver-all starts at the job's first
    event, so following never misses the start, and stops after the terminal,
    which is always the job's last event.
    """
    js = nc.jetstream()
    sub = await js.subscribe(
        subjects.job_events_filter(job_id),
        stream=subjects.STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        idle_heartbeat=2.0,
    )
    try:
        while True:
            msg = await sub.next_msg(
                timeout=idle_timeout if idle_timeout is not None else 3600 * 24
            )
            event = decode_event(msg.data)
            yield msg.metadata.sequence.stream, event
            if event.__struct_config__.tag == "terminal":
                return
    finally:
        await sub.unsubscribe()
