"""JSON Schemas of every wire message and of the manifest, computed from the types.

``just schemas`` writes them to ``contracts/schemas/``; a test fails when the
committed files drift from what this module computes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from contracts import api, events
from contracts.errors import ErrorReply
from contracts.manifest import manifest_json_schema

_DIALECT = "https://json-schema.org/draft/2020-12/schema"

MESSAGES: dict[str, Any] = {
    "event": events.Event,
    "event.queued": events.Queued,
    "event.cancel": events.Cancel,
    "event.started": events.Started,
    "event.log": events.Log,
    "event.progress": events.Progress,
    "event.terminal": events.Terminal,
    "submit.request": api.SubmitRequest,
    "submit.tool.request": api.ToolSubmitRequest,
    "submit.reply": api.SubmitReply,
    "cancel.request": api.CancelRequest,
    "cancel.reply": api.CancelReply,
    "tools.list.request": api.ToolsListRequest,
    "tools.list.reply": api.ToolsListReply,
    "tools.get.request": api.ToolsGetRequest,
    "tools.explain.request": api.ExplainRequest,
    "tools.explain.reply": api.ExplainReply,
    "jobs.get.request": api.JobsGetRequest,
    "jobs.get.reply": api.JobsGetReply,
    "jobs.list.request": api.JobsListRequest,
    "jobs.list.reply": api.JobsListReply,
    "jobs.events.request": api.JobsEventsRequest,
    "jobs.events.reply": api.JobsEventsReply,
    "jobs.artifact.request": api.JobsArtifactRequest,
    "jobs.artifact.reply": api.JobsArtifactReply,
    "job.state": api.JobState,
    "error.reply": ErrorReply,
}
"""File stem under ``contracts/schemas/`` -> the wire type whose JSON Schema it holds."""


def all_schemas() -> dict[str, dict[str, Any]]:
    """File stem -> JSON Schema, for every message and for the manifest."""
    out: dict[str, dict[str, Any]] = {}
    for name, tp in MESSAGES.items():
        schema = msgspec.json.schema(tp)
        schema = {"$schema": _DIALECT, "$id": f"https://domed.dev/schemas/{name}.json", **schema}
        out[name] = schema
    out["manifest"] = manifest_json_schema()
    out["tools.get.reply"] = tools_get_reply_schema()
    return out


def tools_get_reply_schema() -> dict[str, Any]:
    """The reply of ``domed.tools.get``: the manifest as JSON, every default filled in,
    plus the SHA-256 of its file."""
    manifest = manifest_json_schema()
    properties = {
        **manifest["properties"],
        "manifest_sha256": {"type": "string", "description": "SHA-256 (hex) of the manifest file."},
    }
    return {
        **manifest,
        "$id": "https://domed.dev/schemas/tools.get.reply.json",
        "title": "ToolsGetReply",
        "description": "The manifest, as JSON, with every default filled in.",
        "properties": properties,
        "required": sorted({*manifest.get("required", []), "manifest_sha256"}),
    }
