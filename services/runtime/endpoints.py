"""Serve request/reply endpoints on the NATS Services API, with one error boundary.

Every handler takes a decoded request struct (and, if it asks, the request's ``Call``:
its subject and headers) and returns a reply struct. This is
the one place where a ``DomedError`` becomes the error reply (docs/reference/api.md) and anything
else becomes a plain 500 with a safe message (the exception is logged, never sent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, Request
from nats.micro.service import Service

from contracts.errors import DomedError, ErrorCode
from services.runtime import connection

log = logging.getLogger("domed.endpoints")

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Call:
    """What a request says besides its body: the subject it came on (a wildcard
    endpoint's handler reads its tokens) and its headers (some set by the server)."""

    subject: str
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Endpoint:
    name: str
    subject: str
    request_type: type[msgspec.Struct]
    handler: Callable[..., Awaitable[Any]]
    # nats.micro runs one request per endpoint at a time; a handler that
    # awaits the bus is run as its own task instead, so requests overlap.
    concurrent: bool = False
    # raises a DomedError (too_large) for a body of this many bytes, before it is decoded
    check_body: Callable[[int], None] | None = None
    # the handler is called as handler(request, Call)
    with_call: bool = False


MAX_IN_FLIGHT = 512


def decode_request(data: bytes, request_type: type[msgspec.Struct]) -> Any:
    """Decode a request body, or raise invalid_request saying what is wrong with it."""
    body = data.strip() or b"{}"
    try:
        return msgspec.json.decode(body, type=request_type)
    except msgspec.ValidationError as exc:
        raise DomedError(
            ErrorCode.INVALID_REQUEST, f"request does not have the expected shape: {exc}"
        ) from None
    except msgspec.DecodeError as exc:
        raise DomedError(
            ErrorCode.INVALID_REQUEST, f"request body is not valid JSON: {exc}"
        ) from None
    except RecursionError:
        raise DomedError(ErrorCode.INVALID_REQUEST, "request body is nested too deeply") from None


def error_reply(err: DomedError) -> tuple[bytes, dict[str, str]]:
    headers = {
        ERROR_HEADER: f"{err.code.value}: {err.message}"[:1024],
        ERROR_CODE_HEADER: str(err.status),
    }
    return _encoder.encode(err.body()), headers


class _Counters(Protocol):
    _num_requests: int
    _num_errors: int
    _last_error: str | None
    _processing_time: int
    _average_processing_time: int


def _wrap(endpoint: Endpoint, stats: list[_Counters]) -> Callable[[Request], Awaitable[None]]:
    in_flight: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    def count_error(err: DomedError) -> None:
        # We answer errors ourselves, so nats.micro never sees them: keep its
        # $SRV.STATS error counters true by hand (they are plain attributes).
        for ep in stats:
            ep._num_errors += 1
            ep._last_error = f"{err.code.value}: {err.message}"

    def count_time(started_ns: int) -> None:
        # nats.micro times only the hand-off of a concurrent request to its task; add the
        # task's own time so $SRV.STATS (and `domed status`) show what a caller waits.
        elapsed = time.perf_counter_ns() - started_ns
        for ep in stats:
            ep._processing_time += elapsed
            ep._average_processing_time = int(ep._processing_time / max(1, ep._num_requests))

    async def answer(request: Request) -> None:
        started = time.perf_counter_ns()
        try:
            await reply_to(request)
        finally:
            if endpoint.concurrent:
                count_time(started)

    async def reply_to(request: Request) -> None:
        try:
            if endpoint.check_body is not None:
                endpoint.check_body(len(request.data))
            body = decode_request(request.data, endpoint.request_type)
            if endpoint.with_call:
                call = Call(request.subject, request.headers or {})
                reply = await endpoint.handler(body, call)
            else:
                reply = await endpoint.handler(body)
            await request.respond(_encoder.encode(reply))
        except DomedError as err:
            count_error(err)
            data, headers = error_reply(err)
            await request.respond(data, headers=headers)
        except Exception:
            log.exception("endpoint %s failed", endpoint.subject)
            internal = DomedError(ErrorCode.INTERNAL, "internal error; see the service log")
            count_error(internal)
            data, headers = error_reply(internal)
            await request.respond(data, headers=headers)

    async def handle(request: Request) -> None:
        if not endpoint.concurrent:
            await answer(request)
            return
        await slots.acquire()
        task = asyncio.create_task(answer(request))
        in_flight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            in_flight.discard(t)
            slots.release()

        task.add_done_callback(done)

    return handle


async def serve(
    nc: Client, name: str, version: str, description: str, endpoints: list[Endpoint]
) -> Service:
    """Register the service and its endpoints; returns the Service to ``stop()`` later."""
    service = await add_service(nc, name=name, version=version, description=description)
    for ep in endpoints:
        stats: list[Any] = []
        await service.add_endpoint(name=ep.name, subject=ep.subject, handler=_wrap(ep, stats))
        stats.extend(e for e in service._endpoints if e._subject == ep.subject)
    await connection.subscriptions_sent(nc)  # before anyone is told we are ready
    return service
