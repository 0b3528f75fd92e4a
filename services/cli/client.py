"""A small client for the request/reply API and the event stream, used by the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.micro.request import ERROR_HEADER

from contracts import subjects
from contracts.events import Event, decode_event
from services.runtime import connection, tls
from services.runtime.settings import redact_url

_enc = msgspec.json.Encoder()


class ApiError(Exception):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class Unreachable(Exception):
    pass


class NotPermitted(Exception):
    """The server refused to let this user publish on ``subject`` (a permissions
    violation): nothing reached domed, and asking again will not help."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"NATS does not permit this user to publish on {subject}")
        self.subject = subject


# nats-py reports the server's -ERR to the error callback only, in lower case; the
# request itself would wait for its timeout.
_VIOLATION = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


class CliClient(Client):
    """A connection that knows which of its publishes the server refused."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals: dict[str, asyncio.Event] = {}

    async def on_error(self, exc: Exception) -> None:
        """Connection errors become one clear message from the caller, not tracebacks; a
        permissions violation wakes the request that is waiting on that subject."""
        m = _VIOLATION.search(str(exc))
        if m is not None:
            for subject, refused in self.refusals.items():
                if subject.lower() == m.group(1).lower():
                    refused.set()


async def connect(
    url: str, creds: str | None = None, tls_files: tls.TlsFiles | None = None
) -> Client:
    """A connection for one CLI command; ``Unreachable`` if there is no server, and
    ``tls.TlsRefused`` if TLS was asked for and the server's certificate does not verify
    (or it does not offer TLS)."""
    nc = CliClient()
    options: dict[str, Any] = {
        "servers": [u.strip() for u in url.split(",")],
        "user_credentials": creds,
        "connect_timeout": 2,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.1,
        "allow_reconnect": False,
        "error_cb": nc.on_error,
        "name": "domed-cli",
    }
    context = tls.client_context(tls_files or tls.TlsFiles())
    if context is not None:
        options["tls"] = context
        tls.refuse_plaintext(nc)
    try:
        await nc.connect(**options)
    except tls.TlsRefused:
        raise
    except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError, TimeoutError) as exc:
        if context is not None and _tls_failure(exc) is not None:
            raise tls.TlsRefused(f"TLS to the server failed: {_tls_failure(exc)}") from exc
        raise Unreachable(redact_url(url)) from exc
    return nc


def _tls_failure(exc: BaseException | None) -> BaseException | None:
    """The TLS error behind a failed connect, if that is what it was."""
    import ssl

    while exc is not None:
        if isinstance(exc, ssl.SSLError | tls.TlsRefused):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _reply(subject: str, msg: Msg) -> Any:
    """The body of a reply; ApiError for an error reply (docs/reference/api.md)."""
    data = msgspec.json.decode(msg.data) if msg.data else {}
    if msg.headers and ERROR_HEADER in msg.headers:
        err = data.get("error", {}) if isinstance(data, dict) else {}
        raise ApiError(
            err.get("code", "internal"), err.get("message", str(msg.headers)), err.get("details")
        )
    return data


async def request(nc: Client, subject: str, body: Any, timeout: float = 5.0) -> Any:
    """Send one request; raise ApiError for an error reply, and NotPermitted as soon as the
    server says this user may not publish on ``subject``."""
    try:
        msg = await _request(nc, subject, _enc.encode(body), timeout)
    except nats.errors.NoRespondersError:
        raise ApiError("unavailable", f"no service answers {subject}; is domed running?") from None
    except nats.errors.TimeoutError:
        raise ApiError("unavailable", f"{subject} did not answer within {timeout}s") from None
    return _reply(subject, msg)


async def _request(nc: Client, subject: str, payload: bytes, timeout: float) -> Msg:
    if not isinstance(nc, CliClient):
        return await nc.request(subject, payload, timeout=timeout)
    refused = nc.refusals.setdefault(subject, asyncio.Event())
    asking = asyncio.ensure_future(nc.request(subject, payload, timeout=timeout))
    told = asyncio.ensure_future(refused.wait())
    try:
        done, _ = await asyncio.wait({asking, told}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        told.cancel()
        nc.refusals.pop(subject, None)
        if not asking.done():
            asking.cancel()
    if asking in done:
        return asking.result()
    raise NotPermitted(subject)


# While following, a quiet live subscription is checked against the stream this often.
FOLLOW_RESYNC_S = 5.0


async def follow_job(
    nc: Client, job_id: str, idle_timeout: float | None = None
) -> AsyncIterator[tuple[int, Event]]:
    """Every stored event of one job, from its first, live, until its terminal, each once and
    in stream order, with its stream sequence.

    It needs no JetStream rights, so any user who may call ``domed.jobs.events`` and
    subscribe to ``job.>`` can follow (the ``submitter`` of deploy/nats):

    1. subscribe to ``job.<id>.*``, where the stream republishes each stored event with
       its stream sequence in the ``Nats-Sequence`` header;
    2. page the job's history through ``domed.jobs.events`` (the projector reads it from
       the stream) and yield it;
    3. go on with the live messages, dropping any whose sequence was already yielded.

    The subscription exists before the history is read, so an event stored in between is
    in the history, on the subscription or both, and is yielded once. Reads of the history
    past the last yielded event fill in anything the subscription missed: once when the
    first live event arrives (in a cluster a new subscription reaches the stream's leader a
    little later) and whenever the subscription is quiet for ``FOLLOW_RESYNC_S``.

    If no projector answers, it falls back to an ordered consumer on the stream, which
    needs the right to create consumers. ``idle_timeout``: raise ``nats.errors.TimeoutError``
    after that many seconds without a new event.
    """
    live = await nc.subscribe(subjects.job_events_filter(job_id))
    try:
        await connection.subscriptions_sent(nc)
        try:
            first = await _events_page(nc, job_id, 0)
        except nats.errors.NoRespondersError:
            await live.unsubscribe()
            async for item in _follow_with_consumer(nc, job_id, idle_timeout):
                yield item
            return
        last = 0
        last_at = time.monotonic()
        async for seq, event in _history(nc, job_id, 0, first):
            last, last_at = seq, time.monotonic()
            yield seq, event
            if _is_terminal(event):
                return
        checked = False
        while True:
            wait = FOLLOW_RESYNC_S
            if idle_timeout is not None:
                left = last_at + idle_timeout - time.monotonic()
                if left <= 0:
                    raise nats.errors.TimeoutError
                wait = min(wait, left)
            try:
                msg = await live.next_msg(timeout=wait)
            except nats.errors.TimeoutError:
                msg = None
            seq = _stored_seq(msg) if msg is not None else 0
            if msg is not None and seq <= last:
                continue  # already yielded from the history, or not a stored event
            if msg is None or not checked:
                # quiet, or the first live event after the history: read the stream from
                # the last yielded event; a live copy of what this yields is dropped above
                checked = checked or msg is not None
                try:
                    async for seq_h, event in _history(nc, job_id, last):
                        last, last_at = seq_h, time.monotonic()
                        yield seq_h, event
                        if _is_terminal(event):
                            return
                except (ApiError, nats.errors.Error):
                    pass  # the projector is away for now; the live events still come
                if msg is None or seq <= last:
                    continue
            assert msg is not None
            event = decode_event(msg.data)
            last, last_at = seq, time.monotonic()
            yield seq, event
            if _is_terminal(event):
                return
    finally:
        with contextlib.suppress(Exception):
            await live.unsubscribe()


def _is_terminal(event: Event) -> bool:
    return event.__struct_config__.tag == "terminal"


def _stored_seq(msg: Msg) -> int:
    """The stream sequence of a republished event; 0 for anything else on ``job.>``
    (nothing the stream stored, e.g. a publish on a server without deploy/nats's permissions)."""
    try:
        return int((msg.headers or {}).get("Nats-Sequence", "0"))
    except ValueError:
        return 0


async def _events_page(nc: Client, job_id: str, after: int, timeout: float = 5.0) -> Any:
    """One page of ``domed.jobs.events``; raises NoRespondersError if no projector runs."""
    body: dict[str, Any] = {"job_id": job_id}
    if after:
        body["after_seq"] = after
    try:
        msg = await nc.request(subjects.JOBS_EVENTS, _enc.encode(body), timeout=timeout)
    except nats.errors.TimeoutError:
        raise ApiError(
            "unavailable", f"{subjects.JOBS_EVENTS} did not answer within {timeout}s"
        ) from None
    return _reply(subjects.JOBS_EVENTS, msg)


async def _history(
    nc: Client, job_id: str, after: int, page: Any = None
) -> AsyncIterator[tuple[int, Event]]:
    """The job's stored events after stream sequence ``after``, page by page, in order."""
    while True:
        if page is None:
            page = await _events_page(nc, job_id, after)
        for stored in page.get("events", []):
            seq = int(stored["seq"])
            if seq <= after:
                continue
            after = seq
            yield seq, decode_event(_enc.encode(stored["data"]))
        nxt = page.get("next")
        if nxt is None or int(nxt) <= after and not page.get("events"):
            return
        after = max(after, int(nxt))
        page = None


async def _follow_with_consumer(
    nc: Client, job_id: str, idle_timeout: float | None
) -> AsyncIterator[tuple[int, Event]]:
    """Follow by reading the stream with an ordered consumer on ``job.<id>.*`` from the
    first message (needs the right to create a consumer on DOMED_JOBS)."""
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
            if _is_terminal(event):
                return
    finally:
        await sub.unsubscribe()
