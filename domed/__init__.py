"""domed's Python client: submit jobs, follow their events, wait for them, read their
artifacts, from asyncio code, speaking only domed's NATS contract.

    async with domed.connect("nats://127.0.0.1:4222") as client:
        job = await client.submit("demo.echo", {"text": "hi"}, labels={"ci": "1"})
        async for event in job.events():      # typed events, gap-free, ends with the terminal
            ...
        final = await job.wait()               # the terminal

Every failure is a ``domed.DomedError`` carrying the error ``code`` (``domed.errors``).
Events are the ``contracts.events`` types and replies the ``contracts.api`` types,
re-exported here. docs/client.md is the guide.
"""

from __future__ import annotations

from contracts.api import (
    CancelReply,
    ExplainReply,
    JobsGetReply,
    JobsListReply,
    JobState,
    ToolsListReply,
)
from contracts.events import Cancel, Event, Log, Progress, Queued, Started, Terminal
from domed.artifacts import BUCKET as ARTIFACTS_BUCKET
from domed.artifacts import ArtifactRef
from domed.client import Client, Connecting, connect, submit_subjects
from domed.errors import (
    AlreadyTerminal,
    ArtifactError,
    ArtifactMissing,
    DigestMismatch,
    DomedError,
    IdempotencyConflict,
    Internal,
    InvalidParams,
    InvalidReply,
    InvalidRequest,
    NoResponders,
    NotPermitted,
    TooLarge,
    Unavailable,
    UnknownArtifact,
    UnknownJob,
    UnknownTool,
    Unreachable,
)
from domed.job import Job

__all__ = [
    "ARTIFACTS_BUCKET",
    "AlreadyTerminal",
    "ArtifactError",
    "ArtifactMissing",
    "ArtifactRef",
    "Cancel",
    "CancelReply",
    "Client",
    "Connecting",
    "DigestMismatch",
    "DomedError",
    "Event",
    "ExplainReply",
    "IdempotencyConflict",
    "Internal",
    "InvalidParams",
    "InvalidReply",
    "InvalidRequest",
    "Job",
    "JobState",
    "JobsGetReply",
    "JobsListReply",
    "Log",
    "NoResponders",
    "NotPermitted",
    "Progress",
    "Queued",
    "Started",
    "Terminal",
    "TooLarge",
    "ToolsListReply",
    "Unavailable",
    "UnknownArtifact",
    "UnknownJob",
    "UnknownTool",
    "Unreachable",
    "connect",
    "submit_subjects",
]
