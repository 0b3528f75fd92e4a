"""The whole NATS surface of domed in two tables: the job events and the request/reply
endpoints, each with the message types it carries.

The reference pages in docs/reference/ and the AsyncAPI document are generated from
these tables and the types they name; a test checks that the services register
exactly these endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from contracts import api, events, subjects


@dataclass(frozen=True)
class EventKind:
    """One kind of job event: its type, the service that writes it, and one line on it."""

    kind: str
    type: Any
    written_by: str
    summary: str


@dataclass(frozen=True)
class EndpointSpec:
    """One request/reply endpoint: its subject, the service that answers, its message
    schemas (keys of ``contracts.schemas.all_schemas()``) and one line on it."""

    subject: str
    service: str
    request: str  # a key of contracts.schemas.all_schemas()
    reply: str
    summary: str

    @property
    def address(self) -> str:
        """The subject as documented: a wildcard endpoint's ``>`` is the tool id it
        stands for (``domed.jobs.submit.{tool_id}``)."""
        return self.subject.replace(">", "{tool_id}")


EVENTS: Final[tuple[EventKind, ...]] = (
    EventKind("queued", events.Queued, "router", "The router accepted a job."),
    EventKind("cancel", events.Cancel, "router", "Someone asked to cancel the job."),
    EventKind("started", events.Started, "executor", "An executor started an attempt."),
    EventKind("log", events.Log, "executor", "Output lines of an attempt, in order."),
    EventKind(
        "progress", events.Progress, "executor", "An output line matched the progress regex."
    ),
    EventKind(
        "terminal",
        events.Terminal,
        "executor, or the router for a job canceled before it started",
        "How the job ended: its one and last event.",
    ),
)
"""Every kind of job event, in the order a job's events usually come."""

ENDPOINTS: Final[tuple[EndpointSpec, ...]] = (
    EndpointSpec(
        subjects.SUBMIT_TOOL,
        subjects.SERVICE_ROUTER,
        "submit.tool.request",
        "submit.reply",
        "Submit a job of the tool the subject names (its dots are subject tokens): the "
        "router checks it against the manifest and stores `queued`. NATS permissions on "
        "these subjects decide who may run which tool.",
    ),
    EndpointSpec(
        subjects.SUBMIT,
        subjects.SERVICE_ROUTER,
        "submit.request",
        "submit.reply",
        "Submit a job, the tool named in the body; for trusted callers (a permission on "
        "it grants every tool).",
    ),
    EndpointSpec(
        subjects.CANCEL,
        subjects.SERVICE_ROUTER,
        "cancel.request",
        "cancel.reply",
        "Cancel a queued or running job (stores `cancel`).",
    ),
    EndpointSpec(
        subjects.TOOLS_LIST,
        subjects.SERVICE_ROUTER,
        "tools.list.request",
        "tools.list.reply",
        "The catalogue.",
    ),
    EndpointSpec(
        subjects.TOOLS_GET,
        subjects.SERVICE_ROUTER,
        "tools.get.request",
        "tools.get.reply",
        "One tool's manifest, as JSON.",
    ),
    EndpointSpec(
        subjects.TOOLS_EXPLAIN,
        subjects.SERVICE_ROUTER,
        "tools.explain.request",
        "tools.explain.reply",
        "What a submit would run; nothing runs.",
    ),
    EndpointSpec(
        subjects.JOBS_GET,
        subjects.SERVICE_PROJECTOR,
        "jobs.get.request",
        "jobs.get.reply",
        "One job's state.",
    ),
    EndpointSpec(
        subjects.JOBS_LIST,
        subjects.SERVICE_PROJECTOR,
        "jobs.list.request",
        "jobs.list.reply",
        "Jobs, newest first, filtered by state, tool or label; paged.",
    ),
    EndpointSpec(
        subjects.JOBS_EVENTS,
        subjects.SERVICE_PROJECTOR,
        "jobs.events.request",
        "jobs.events.reply",
        "One job's stored events, in stream order; paged.",
    ),
    EndpointSpec(
        subjects.JOBS_ARTIFACT,
        subjects.SERVICE_PROJECTOR,
        "jobs.artifact.request",
        "jobs.artifact.reply",
        "One chunk of one of a job's artifacts; a file is read chunk by chunk.",
    ),
)
"""Every request/reply endpoint domed serves, in the order the reference lists them."""

JOB_STATES: Final[dict[str, str]] = {
    "queued": "stored, waiting for an executor",
    "running": "an executor started it",
    "succeeded": "the command exited 0",
    "failed": "the command exited non-zero, or could not start",
    "canceled": "canceled before or while it ran",
    "timed_out": "it ran longer than its `timeout_s`",
    "lost": "its executor vanished and the tool is not `idempotent` (or its retries ran out)",
}
"""What each job state means, for the reference."""


def request_types() -> dict[str, type[Any]]:
    """Endpoint subject -> request type, for the test that services serve this table."""
    by_name = {
        "submit.request": api.SubmitRequest,
        "submit.tool.request": api.ToolSubmitRequest,
        "cancel.request": api.CancelRequest,
        "tools.list.request": api.ToolsListRequest,
        "tools.get.request": api.ToolsGetRequest,
        "tools.explain.request": api.ExplainRequest,
        "jobs.get.request": api.JobsGetRequest,
        "jobs.list.request": api.JobsListRequest,
        "jobs.events.request": api.JobsEventsRequest,
        "jobs.artifact.request": api.JobsArtifactRequest,
    }
    return {e.subject: by_name[e.request] for e in ENDPOINTS}
