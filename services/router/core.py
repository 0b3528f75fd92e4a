"""The router's pure rules: check a request against the catalogue and build the queued event."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from typing import Any

from contracts.api import ExplainReply, SubmitRequest
from contracts.errors import DomedError, ErrorCode
from contracts.events import Queued, now_iso
from services.catalogue.loader import Tool
from services.catalogue.render import (
    env_names,
    mask_params,
    param_errors,
    render_argv,
    with_defaults,
)


def find_tool(tools: Mapping[str, Tool], tool_id: str) -> Tool:
    tool = tools.get(tool_id)
    if tool is None:
        close = difflib.get_close_matches(tool_id, list(tools), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DomedError(
            ErrorCode.UNKNOWN_TOOL, f"no tool has id {tool_id!r}{hint}", {"close_matches": close}
        )
    return tool


def checked_params(tool: Tool, params: Mapping[str, Any]) -> dict[str, Any]:
    """Params with schema defaults filled, or invalid_params listing every failure by path."""
    failures = param_errors(tool.validator, params)
    if failures:
        raise DomedError(
            ErrorCode.INVALID_PARAMS, f"{len(failures)} parameter error(s) for {tool.id}", failures
        )
    return with_defaults(tool.manifest, params)


def effective_timeout(tool: Tool, requested: float | None) -> float:
    limit = tool.manifest.timeout_s
    if requested is None:
        return limit
    if not requested > 0:
        raise DomedError(
            ErrorCode.INVALID_REQUEST, "timeout_s must be a positive number of seconds"
        )
    if requested > limit:
        raise DomedError(
            ErrorCode.INVALID_REQUEST, f"timeout_s {requested} exceeds the tool's timeout_s {limit}"
        )
    return requested


def check_labels(labels: Mapping[str, str]) -> None:
    for key in labels:
        if not key or len(key) > 128 or any(c in key for c in "=,\x00"):
            raise DomedError(
                ErrorCode.INVALID_REQUEST,
                f"label key {key!r} must be 1-128 chars without '=', ',' or NUL",
            )


def build_queued(tool: Tool, req: SubmitRequest, job_id: str, params: dict[str, Any]) -> Queued:
    """Validate everything that can be checked before a job exists; return its queued event."""
    check_labels(req.labels)
    timeout_s = effective_timeout(tool, req.timeout_s)
    # Rendering now means a request that cannot render is refused, not failed at run time.
    render_argv(
        tool.manifest, params, tool_dir=tool.tool_dir, job_id=job_id, work_dir="/nonexistent"
    )
    return Queued(
        job_id=job_id,
        tool=tool.id,
        tool_version=tool.manifest.version,
        manifest_sha256=tool.sha256,
        params=mask_params(tool.manifest, params),
        submitted_at=now_iso(),
        timeout_s=timeout_s,
        labels=dict(req.labels),
        idempotency_key=req.idempotency_key,
    )


def idempotency_slot(key: str) -> str:
    """A KV key for an idempotency key of any length or alphabet."""
    return hashlib.sha256(key.encode()).hexdigest()


def explain(tool: Tool, params: Mapping[str, Any]) -> ExplainReply:
    checked = checked_params(tool, params)
    argv = render_argv(
        tool.manifest,
        checked,
        tool_dir=tool.tool_dir,
        job_id="<job_id>",
        work_dir="<work_dir>",
        masked=tool.manifest.secrets,
    )
    return ExplainReply(
        argv=argv,
        working_dir_policy=tool.manifest.working_dir_policy,
        env_names=env_names(tool.manifest),
        timeout_s=tool.manifest.timeout_s,
        manifest_sha256=tool.sha256,
    )
