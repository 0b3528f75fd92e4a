"""Connecting a service to NATS: reconnecting forever, an inbox prefix of its own, TLS
that must verify, and closing cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from typing import Any

import nats.errors
from nats.aio.client import Client

from services.runtime import tls
from services.runtime.settings import Settings

log = logging.getLogger("domed.bus")

SERVICE_KINDS = ("router", "executor", "projector")

_NOT_A_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def inbox_prefix(name: str, service: str = "") -> str:
    """The inbox prefix of a service's connection: ``_INBOX_domed-<service>``.

    Each service gets its own, so the deployment (deploy/nats/accounts.conf) can allow a
    service to subscribe to its own replies only; with the shared ``_INBOX`` any service's
    credentials could read the replies to another's requests (the executor reads secret
    parameters back from a KV bucket). ``service`` is the kind (``router``, ``executor``,
    ``projector``), never a custom ``--name``, which may differ per executor. Without it a
    connection named ``domed-<kind>`` gets that kind's prefix, any other name its own.
    The prefix is one subject token: characters other than letters, digits, ``_`` and ``-``
    become ``_``.
    """
    if not service:
        kind = name.removeprefix("domed-")
        service = kind if kind in SERVICE_KINDS and name == f"domed-{kind}" else ""
    label = f"domed-{service}" if service else name
    return "_INBOX_" + _NOT_A_TOKEN.sub("_", label)


async def connect(
    settings: Settings,
    name: str,
    *,
    service: str = "",
    client: Client | None = None,
    **options: Any,
) -> Client:
    """Connect with reconnects forever, so a NATS restart heals by itself.

    ``client`` is the (unconnected) client to connect, nats-py's own unless given: the
    projector passes the one that reads a stream raw (``services.runtime.ordered``).

    ``service`` (or ``settings.service``) is the service kind that names the inbox prefix;
    see :func:`inbox_prefix`.

    With TLS options (``settings.tls``) the first connection must be TLS with a server
    certificate that verifies: else ``tls.TlsRefused`` saying why, instead of retrying
    forever what cannot work.
    """
    kwargs: dict[str, Any] = {
        "servers": [u.strip() for u in settings.nats_url.split(",")],
        "name": name,
        "inbox_prefix": inbox_prefix(name, service or settings.service),
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 2,
        "allow_reconnect": True,
    }
    if settings.nats_creds:
        kwargs["user_credentials"] = settings.nats_creds
    context = tls.client_context(settings.tls)
    if context is not None:
        kwargs["tls"] = context
    refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    nc = client if client is not None else Client()

    async def _report(exc: Exception) -> None:
        if (
            isinstance(exc, (ssl.SSLError, tls.TlsRefused))
            and not nc.is_connected
            and not refused.done()
        ):
            refused.set_result(exc)
        # A permissions violation means this user's allowlist and what domed does disagree
        # (deploy/nats/accounts.conf): an operator must see it. The rest is reconnect noise.
        if "permissions violation" in str(exc).lower():
            log.error("nats refused: %s (%s)", exc, name)
        else:
            log.debug("nats: %r", exc)

    kwargs.setdefault("error_cb", _report)
    kwargs.update(options)
    if context is not None:
        tls.refuse_plaintext(nc)
    connecting: asyncio.Future[Any] = asyncio.ensure_future(nc.connect(**kwargs))
    try:
        await asyncio.wait([connecting, refused], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not connecting.done() and not refused.done():  # we were canceled
            connecting.cancel()
    if connecting.done():
        refused.cancel()
        connecting.result()
        return nc
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    with contextlib.suppress(Exception):
        await nc.close()
    exc = refused.result()
    if isinstance(exc, tls.TlsRefused):
        raise exc
    raise tls.TlsRefused(f"TLS to the server failed: {exc}") from exc


async def subscriptions_sent(nc: Client) -> None:
    """Return once the server has every subscription this connection made.

    ``nc.flush()`` alone does not do it in nats-py 2.16: its PING goes straight to the
    socket while new subscriptions wait in a buffer for the flusher task, so its PONG can
    come back before the server has seen them (measured: a request right after a
    projector said "ready" found no responders in about one restart in eight). By the
    time a first round trip ends the flusher has written them, so a second PING follows
    them.
    """
    await nc.flush()
    await nc.flush()


async def disconnect(nc: Client) -> None:
    """Drain the connection (what was published goes out, subscriptions end cleanly), or
    just close it when it cannot drain: a service stopped while NATS is away (drain
    refuses to run on a reconnecting connection) must still exit."""
    try:
        await nc.drain()
    except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError):
        await nc.close()
