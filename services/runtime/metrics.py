"""Prometheus metrics over HTTP: ``GET /metrics`` on ``--metrics-addr HOST:PORT``.

Each service builds its own :class:`~prometheus_client.CollectorRegistry` (three services
may share one process in the tests) and serves it with :func:`serving`, an asyncio server
owned by the service's lifetime: it stops accepting and ends every open connection when
the ``async with`` block is left. No thread: ``prometheus_client.start_http_server`` would
run one that outlives the service's structured shutdown.

A scrape may first ``refresh`` the gauges that cost a NATS round trip (consumer and
stream info), so those are read once per scrape and never polled in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from services.runtime.lifecycle import ConfigurationError
from services.runtime.settings import parse_addr

log = logging.getLogger("domed.metrics")

# `_created` series double what is exported and no dashboard of ours uses them.
prometheus_client.disable_created_metrics()

DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
)
"""Histogram buckets for job durations and queue waits: jobs run from milliseconds to hours."""

REQUEST_MAX_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0

Refresh = Callable[[], Awaitable[None]]


class MetricsServer:
    """An HTTP/1.1 server answering ``GET /metrics`` (and ``/``) with the registry's text
    format; anything else gets 404 or 405. One request per connection."""

    def __init__(self, registry: CollectorRegistry, refresh: Refresh | None = None) -> None:
        self.registry = registry
        self.refresh = refresh
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose, for port 0)."""
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._connection, host or None, port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                status, body, ctype = await self._answer(head)
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        if len(head) > REQUEST_MAX_BYTES:
            return "431 Request Header Fields Too Large", b"", "text/plain"
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3:
            return "400 Bad Request", b"", "text/plain"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target not in (b"/metrics", b"/"):
            return "404 Not Found", b"not found; metrics are at /metrics\n", "text/plain"
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"", "text/plain"
        if self.refresh is not None:
            try:
                await self.refresh()
            except Exception as exc:  # a scrape still gets what is known
                log.debug("metrics refresh failed: %r", exc)
        body = generate_latest(self.registry)
        return "200 OK", b"" if method == b"HEAD" else body, CONTENT_TYPE_LATEST


@contextlib.asynccontextmanager
async def serving(
    addr: str, registry: CollectorRegistry | None, refresh: Refresh | None = None
) -> AsyncIterator[MetricsServer | None]:
    """Serve ``registry`` at ``http://addr/metrics`` for the block's lifetime; nothing when
    ``addr`` is empty (``registry`` may then be None). :class:`ConfigurationError` if the
    address cannot be listened on."""
    if not addr or registry is None:
        yield None
        return
    try:
        host, port = parse_addr(addr)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    server = MetricsServer(registry, refresh)
    try:
        await server.start(host, port)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {addr}: {exc}") from None
    log.info("metrics at http://%s:%d/metrics", host or "0.0.0.0", server.port)
    try:
        yield server
    finally:
        await server.close()
