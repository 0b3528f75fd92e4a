"""One NATS connection and one request/reply round trip of the API, with each failure
turned into its exception (``domed.errors``)."""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.micro.request import ERROR_HEADER

from domed.errors import (
    InvalidReply,
    NoResponders,
    NotPermitted,
    Unavailable,
    Unreachable,
    error_for,
)
from services.runtime import tls as tls_checks
from services.runtime.settings import redact_url

T = TypeVar("T")

_enc = msgspec.json.Encoder()

# nats-py reports the server's -ERR to the error callback only, in lower case; the
# request itself would wait for its whole timeout.
_VIOLATION = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


class Connection(Nats):
    """A nats-py connection that knows which of its publishes the server refused, so a
    request on a subject this user may not publish fails at once with ``NotPermitted``."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals: dict[str, asyncio.Event] = {}

    async def on_error(self, exc: Exception) -> None:
        """Asynchronous errors are not raised anywhere (a caller sees the failed call
        instead); a permissions violation wakes the request waiting on its subject."""
        m = _VIOLATION.search(str(exc))
        if m is not None:
            for subject, refused in self.refusals.items():
                if subject.lower() == m.group(1).lower():
                    refused.set()


async def open_connection(
    url: str,
    creds: str | None,
    *,
    name: str,
    tls: ssl.SSLContext | None = None,
    reconnect: bool = True,
    options: dict[str, Any] | None = None,
) -> Connection:
    """Connect; ``Unreachable`` when no server answers at ``url`` (a comma-separated list).

    ``reconnect``: keep reconnecting after a connection is lost (a long-running program);
    the CLI, which lives for one command, turns it off. ``options`` go to nats-py's
    ``connect`` as they are.
    """
    nc = Connection()
    kwargs: dict[str, Any] = {
        "servers": [u.strip() for u in url.split(",")],
        "name": name,
        "connect_timeout": 2,
        "error_cb": nc.on_error,
    }
    # The first connect tries each server twice at most, so that no server is
    # ``Unreachable`` at once rather than a connect that never returns.
    kwargs.update(allow_reconnect=reconnect, max_reconnect_attempts=1, reconnect_time_wait=0.25)
    if creds:
        kwargs["user_credentials"] = creds
    if tls is not None:
        kwargs["tls"] = tls
        # a server that does not offer TLS gets no password in clear
        tls_checks.refuse_plaintext(nc)
    kwargs.update(options or {})
    try:
        await nc.connect(**kwargs)
    except tls_checks.TlsRefused:
        raise
    except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError, TimeoutError) as exc:
        if tls is not None and (why := _tls_failure(exc)) is not None:
            raise tls_checks.TlsRefused(f"TLS to the server failed: {why}") from exc
        raise Unreachable(
            "unreachable", f"cannot reach NATS at {redact_url(url)}", {"url": redact_url(url)}
        ) from exc
    if reconnect and "max_reconnect_attempts" not in (options or {}):
        # once connected, a lost connection is retried for good, as the services do
        nc.options["max_reconnect_attempts"] = -1
    return nc


def _tls_failure(exc: BaseException | None) -> BaseException | None:
    """The TLS error behind a failed connect, if that is what it was."""
    while exc is not None:
        if isinstance(exc, ssl.SSLError | tls_checks.TlsRefused):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def encode(body: Any) -> bytes:
    """A request body as JSON."""
    return _enc.encode(body)


def reply_body(msg: Msg, reply_type: type[T]) -> T:
    """The body of a reply as ``reply_type``; the error's exception for an error reply,
    ``InvalidReply`` for a body that is not what the contract says."""
    if msg.headers and ERROR_HEADER in msg.headers:
        try:
            data = msgspec.json.decode(msg.data) if msg.data else {}
        except msgspec.DecodeError:
            data = {}
        err = data.get("error", {}) if isinstance(data, dict) else {}
        if not isinstance(err, dict):
            err = {}
        raise error_for(
            str(err.get("code", "internal")),
            str(err.get("message", msg.headers.get(ERROR_HEADER, ""))),
            err.get("details"),
        )
    try:
        return msgspec.json.decode(msg.data or b"{}", type=reply_type)
    except msgspec.DecodeError as exc:
        raise InvalidReply("invalid_reply", f"a reply that is not the contract's: {exc}") from None


async def request(
    nc: Nats, subject: str, body: Any, reply_type: type[T], timeout: float = 5.0
) -> T:
    """Send one request and decode its reply as ``reply_type``.

    Raises the error reply's exception, ``NoResponders`` when no service subscribes to
    ``subject``, ``Unavailable`` when none answers in ``timeout`` seconds, and
    ``NotPermitted`` as soon as the server says this user may not publish on ``subject``.
    """
    payload = encode(body)
    try:
        if isinstance(nc, Connection):
            msg = await _refusable_request(nc, subject, payload, timeout)
        else:
            msg = await nc.request(subject, payload, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise NoResponders(
            "unavailable", f"no service answers {subject}; is domed running?"
        ) from None
    except nats.errors.TimeoutError:
        raise Unavailable("unavailable", f"{subject} did not answer within {timeout}s") from None
    return reply_body(msg, reply_type)


async def _refusable_request(nc: Connection, subject: str, payload: bytes, timeout: float) -> Msg:
    refused = nc.refusals.setdefault(subject, asyncio.Event())
    asking = asyncio.ensure_future(nc.request(subject, payload, timeout=timeout))
    told = asyncio.ensure_future(refused.wait())
    try:
        done, _ = await asyncio.wait({asking, told}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        told.cancel()
        if nc.refusals.get(subject) is refused:
            del nc.refusals[subject]
        if not asking.done():
            asking.cancel()
    if asking in done:
        return asking.result()
    raise NotPermitted(subject)
