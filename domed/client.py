"""The client: one connection to NATS and every call of domed's API over it.

Each call is one request of the request/reply API (or a read of the event stream or the
artifact bucket) and speaks only the contract: replies are the ``contracts.api`` types,
events the ``contracts.events`` types, and every failure one of ``domed.errors``.
"""

from __future__ import annotations

import builtins
import ssl
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from contracts import subjects
from contracts.api import (
    CancelReply,
    ExplainReply,
    JobsGetReply,
    JobsListReply,
    SubmitReply,
    ToolsListReply,
)
from contracts.events import TERMINAL_STATES, Event, Terminal
from domed import api, artifacts, follow
from domed.artifacts import ArtifactRef
from domed.errors import NoResponders, NotPermitted
from domed.job import Job
from services.runtime.settings import resolve_nats_creds, resolve_nats_url


def submit_subjects(tool: str) -> builtins.list[str]:
    """The subjects a submit of ``tool`` is sent to, in order, until one has a responder.

    First the per-tool subject ``domed.jobs.submit.<tool>``, where NATS permissions can
    tell one tool from another; then ``domed.jobs.submit`` with the tool in the body, for a
    router that serves only that. A tool id that cannot be written as subject tokens
    goes to ``domed.jobs.submit`` alone (whose router answers ``unknown_tool``).
    """
    if subjects.is_subject_tokens(tool):
        return [subjects.submit_subject(tool), subjects.SUBMIT]
    return [subjects.SUBMIT]


class Client:
    """A connection to domed through NATS. Make one with :func:`connect`; it is closed by
    ``async with`` or :meth:`close`. Calls may run concurrently."""

    def __init__(self, nc: api.Connection, request_timeout: float = 5.0) -> None:
        self._nc = nc
        self.request_timeout = request_timeout

    @property
    def nc(self) -> api.Connection:
        """The underlying nats-py connection, for reads this client does not wrap."""
        return self._nc

    async def close(self) -> None:
        """Close the connection (what was published goes out first)."""
        if not self._nc.is_closed:
            await self._nc.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, subject: str, body: Any, reply_type: type[Any]) -> Any:
        return await api.request(self._nc, subject, body, reply_type, self.request_timeout)

    # jobs

    async def submit(
        self,
        tool: str,
        params: dict[str, Any] | None = None,
        *,
        labels: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        queue_timeout_s: float | None = None,
    ) -> Job:
        """Submit a job of ``tool``; the returned :class:`Job` follows it.

        Raises ``UnknownTool``, ``InvalidParams``, ``IdempotencyConflict``, ``TooLarge``...
        as the router answers, and ``NotPermitted`` when NATS does not let this user submit
        that tool. A repeated ``idempotency_key`` gives the first job (``job.duplicate``).
        """
        body: dict[str, Any] = {"params": params or {}}
        if labels:
            body["labels"] = labels
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        if queue_timeout_s is not None:
            body["queue_timeout_s"] = queue_timeout_s
        reply = await self._submit(tool, body)
        return Job(self, reply.job_id, tool=tool, duplicate=reply.duplicate)

    async def _submit(self, tool: str, body: dict[str, Any]) -> SubmitReply:
        # A router without per-tool subjects has no responder there, and a user whose
        # permissions predate them is refused there: both go on to the general subject.
        # If every subject fails, the per-tool subject's failure is the one that says
        # what the caller lacks (that tool), so it is the one raised.
        failures: builtins.list[NoResponders | NotPermitted] = []
        for subject in submit_subjects(tool):
            # The per-tool subject names the tool; the general one needs it in the body.
            sent = body if subject != subjects.SUBMIT else {"tool": tool, **body}
            try:
                reply: SubmitReply = await self._call(subject, sent, SubmitReply)
                return reply
            except (NoResponders, NotPermitted) as exc:
                failures.append(exc)
        raise failures[0]

    def job(self, job_id: str) -> Job:
        """A handle on an existing job, to follow, wait for, cancel or read artifacts of."""
        return Job(self, job_id)

    async def cancel(self, job_id: str, reason: str | None = None) -> CancelReply:
        """Ask for the job to be canceled. ``state`` is ``canceled`` if it had not started,
        ``running`` while its executor stops it. ``AlreadyTerminal`` if it has ended."""
        body: dict[str, Any] = {"job_id": job_id}
        if reason is not None:
            body["reason"] = reason
        reply: CancelReply = await self._call(subjects.CANCEL, body, CancelReply)
        return reply

    async def get(self, job_id: str) -> JobsGetReply:
        """The job's state as the projector has it (``UnknownJob`` if none)."""
        reply: JobsGetReply = await self._call(subjects.JOBS_GET, {"job_id": job_id}, JobsGetReply)
        return reply

    async def list(
        self,
        *,
        state: str | None = None,
        tool: str | None = None,
        label: str | None = None,
        submitted_by: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobsListReply:
        """One page of jobs, newest first; pass the reply's ``next_cursor`` as ``cursor``
        for the next. ``label`` is written ``key=value``; ``submitted_by`` is a NATS user
        name (as the server named the submitter)."""
        body = {
            k: v
            for k, v in (
                ("state", state),
                ("tool", tool),
                ("label", label),
                ("submitted_by", submitted_by),
                ("limit", limit),
                ("cursor", cursor),
            )
            if v is not None
        }
        reply: JobsListReply = await self._call(subjects.JOBS_LIST, body, JobsListReply)
        return reply

    async def events(
        self, job_id: str, *, follow: bool = True, idle_timeout: float | None = None
    ) -> AsyncIterator[Event]:
        """The job's events in stream order, each once, from its first.

        ``follow``: go on live until the terminal (the last event of every job); else stop
        at what is stored now. ``idle_timeout``: raise ``TimeoutError`` after that many
        seconds without an event. ``UnknownJob`` if the job does not exist.
        """
        if follow:
            async for _, event in _follow(self._nc, job_id, idle_timeout):
                yield event
        else:
            async for _, event in _history(self._nc, job_id):
                yield event

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Terminal:
        """The job's terminal event, once it has ended. ``timeout``: raise ``TimeoutError``
        after that many seconds without any event of the job."""
        async for event in self.events(job_id, idle_timeout=timeout):
            if isinstance(event, Terminal):
                return event
        raise AssertionError("a followed job ends with its terminal")  # pragma: no cover

    # artifacts

    async def artifacts(self, job_id: str) -> builtins.list[ArtifactRef]:
        """The artifacts the job's terminal lists (none before it ends). A job that has
        ended in the stream but not yet in the projector's store is read from the
        stream's events after what the store has of it."""
        state = await self.get(job_id)
        if state.state in TERMINAL_STATES:
            return artifacts.listed(state)
        async for _, event in follow.history(self._nc, job_id, after=state.last_seq):
            if isinstance(event, Terminal):
                return artifacts.listed(event)
        return []

    async def artifact(self, job_id: str, name: str) -> bytes:
        """The bytes of the job's artifact ``name``, checked against the size and SHA-256
        its terminal lists (``DigestMismatch`` otherwise, ``UnknownArtifact`` if it lists
        none of that name, ``ArtifactMissing`` if the object is gone)."""
        entry = artifacts.find(job_id, await self.artifacts(job_id), name)
        return await artifacts.read(self._nc, entry)

    async def save_artifact(self, job_id: str, name: str, path: str | Path) -> Path:
        """Like :meth:`artifact`, written to ``path`` instead of held in memory; ``path``
        is only created once the bytes check out."""
        entry = artifacts.find(job_id, await self.artifacts(job_id), name)
        return await artifacts.save(self._nc, entry, Path(path))

    async def read_artifact(self, entry: ArtifactRef) -> bytes:
        """The bytes of one listed artifact (an entry of a terminal's ``artifacts``),
        checked against its size and SHA-256."""
        return await artifacts.read(self._nc, entry)

    # tools

    async def tools(self) -> ToolsListReply:
        """The catalogue: every tool the router serves."""
        reply: ToolsListReply = await self._call(subjects.TOOLS_LIST, {}, ToolsListReply)
        return reply

    async def tool(self, tool_id: str) -> dict[str, Any]:
        """One tool's manifest, as JSON (``UnknownTool`` if none)."""
        reply: dict[str, Any] = await self._call(subjects.TOOLS_GET, {"id": tool_id}, dict)
        return reply

    async def explain(self, tool: str, params: dict[str, Any] | None = None) -> ExplainReply:
        """What a submit of ``tool`` with ``params`` would run; nothing runs."""
        body = {"tool": tool, "params": params or {}}
        reply: ExplainReply = await self._call(subjects.TOOLS_EXPLAIN, body, ExplainReply)
        return reply


# The follow recipe's own names, kept apart from the ``follow`` argument above.
_follow = follow.follow_job
_history = follow.history


class Connecting:
    """What :func:`connect` returns: ``await`` it for a :class:`Client`, or use it with
    ``async with`` to have the client closed at the end of the block."""

    def __init__(
        self,
        url: str | None,
        creds: str | None,
        name: str,
        tls: ssl.SSLContext | None,
        request_timeout: float,
        reconnect: bool,
        options: dict[str, Any],
    ) -> None:
        self._args = (url, creds, name, tls, request_timeout, reconnect, options)
        self._client: Client | None = None

    async def _open(self) -> Client:
        url, creds, name, tls, request_timeout, reconnect, options = self._args
        nc = await api.open_connection(
            resolve_nats_url(url),
            resolve_nats_creds(creds),
            name=name,
            tls=tls,
            reconnect=reconnect,
            options=options,
        )
        return Client(nc, request_timeout)

    def __await__(self) -> Generator[Any, None, Client]:
        return self._open().__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._open()
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()


def connect(
    url: str | None = None,
    creds: str | None = None,
    *,
    name: str = "domed-client",
    tls: ssl.SSLContext | None = None,
    request_timeout: float = 5.0,
    reconnect: bool = True,
    **nats_options: Any,
) -> Connecting:
    """Connect to domed's NATS, as the ``domed`` command does.

    ``url``: a NATS URL or a comma-separated list of them; default ``$DOMED_NATS_URL``,
    else ``$NATS_URL``, else ``nats://127.0.0.1:4222`` (the embedded server of ``domed
    up``). ``creds``: a credentials file; default ``$DOMED_NATS_CREDS``, else
    ``$NATS_CREDS``. ``tls``: an ``ssl.SSLContext`` for a TLS server. ``request_timeout``:
    seconds each request waits for its reply (``Unavailable`` after). ``reconnect``: keep
    reconnecting when the connection is lost. Other keyword arguments go to nats-py's
    ``connect``.

    ``Unreachable`` if no server answers.
    """
    return Connecting(url, creds, name, tls, request_timeout, reconnect, nats_options)


def to_builtins(value: Any) -> Any:
    """A reply or event as plain JSON-able Python values (dicts, lists, strings...)."""
    return msgspec.to_builtins(value)
