"""Which bus errors mean what: JetStream unavailable for now (retried), a compare-and-set
that lost, a stream at its limits; and retrying an operation while JetStream is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors

from contracts.errors import DomedError, ErrorCode

log = logging.getLogger("domed.bus")

T = TypeVar("T")

WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErr: a compare-and-set that lost
# JSStreamStoreFailedF: the server could not store a message; with a stream limit's
# "maximum ... exceeded" as its description when `discard: new` refuses it.
STREAM_STORE_FAILED = 10077

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
)


def is_wrong_last_sequence(exc: BaseException) -> bool:
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code == WRONG_LAST_SEQUENCE


def is_stream_full(exc: BaseException) -> bool:
    """A write refused because the stream is at a limit (``max_bytes``, ``max_msgs``; its
    ``discard: new`` keeps old events). It answers 503 like a cluster electing a leader,
    but retrying soon does not help: only expiring events or a raised limit do."""
    description = getattr(exc, "description", None) or ""
    return (
        isinstance(exc, nats.js.errors.APIError)
        and exc.err_code == STREAM_STORE_FAILED
        and description.startswith("maximum ")
    )


def unavailable(exc: BaseException) -> DomedError:
    """The ``unavailable`` reply for a bus error: JetStream unreachable, or (503 from the
    server itself, e.g. a stream at its ``max_bytes``) refusing, with the server's words."""
    if isinstance(exc, nats.js.errors.APIError) and exc.description:
        return DomedError(
            ErrorCode.UNAVAILABLE,
            f"JetStream refused it: {exc.description} (err_code {exc.err_code})",
        )
    return DomedError(ErrorCode.UNAVAILABLE, f"JetStream is not reachable: {type(exc).__name__}")


async def retry_until(
    deadline_s: float,
    op: Callable[[], Awaitable[T]],
    *,
    pause_s: float = 0.1,
    until: asyncio.Event | None = None,
    what: str = "",
    full_pause_s: float = 1.0,
) -> T:
    """Run ``op`` until it succeeds or the deadline passes; retry only bus unavailability.

    Retrying a publish with the same ``Nats-Msg-Id`` is safe: the stream stores it once.

    With ``until``, a deadline that passes starts another window of ``deadline_s`` (with
    a warning that ``what`` cannot be stored yet), until that event is set: for what only
    this process can store, such as how a run ended. A stream at its limits is then
    retried every ``full_pause_s``; without ``until``, or once it is set, it is not.
    """
    end = time.monotonic() + deadline_s
    while True:
        try:
            return await op()
        except UNAVAILABLE_ERRORS as exc:
            full = is_stream_full(exc)
            if until is None or until.is_set():
                if time.monotonic() + pause_s >= end or full:
                    raise
                await asyncio.sleep(pause_s)
                continue
            if time.monotonic() >= end:
                log.warning("%s cannot be stored yet (%r); still trying", what, exc)
                end = time.monotonic() + deadline_s
            with contextlib.suppress(TimeoutError):  # a long pause ends when ``until`` is set
                await asyncio.wait_for(until.wait(), full_pause_s if full else pause_s)
