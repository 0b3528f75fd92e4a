"""The router's pure rules: check a request against the catalogue and build the queued event."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from contracts import subjects
from contracts.api import ExplainReply, SubmitRequest, ToolSubmitRequest
from contracts.errors import DomedError, ErrorCode
from contracts.events import Queued, SubmittedBy, now_iso
from services.catalogue.loader import Tool
from services.catalogue.paths import confined_params
from services.catalogue.render import (
    env_names,
    mask_params,
    param_errors,
    render_argv,
    with_defaults,
)

_encoder = msgspec.json.Encoder()
_sorted_encoder = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True)
class Caps:
    """What one client request may store; over a cap is ``too_large`` and nothing is stored."""

    body_bytes: int = 256 * 1024
    param_bytes: int = 64 * 1024
    param_depth: int = 32
    labels_bytes: int = 16 * 1024
    reason_bytes: int = 1024


def too_large(what: str, cap: str, size: int, limit: int, path: str | None = None) -> DomedError:
    details: dict[str, Any] = {"cap": cap, "size": size, "limit": limit}
    if path is not None:
        details["path"] = path
    return DomedError(
        ErrorCode.TOO_LARGE, f"{what} is {size} bytes, over the cap of {limit} ({cap})", details
    )


def check_body(size: int, caps: Caps) -> None:
    if size > caps.body_bytes:
        raise too_large("the request body", "max_body_bytes", size, caps.body_bytes)


def check_sizes(params: Mapping[str, Any], labels: Mapping[str, str], caps: Caps) -> None:
    """Each parameter's value and the labels are within their caps, and no value is nested
    deeper than ``caps.param_depth`` (which the schema check and every later encoding
    could not go through without running out of stack)."""
    for name, value in params.items():
        if _depth_over(value, caps.param_depth):
            reason = f"is nested deeper than {caps.param_depth} levels"
            raise DomedError(
                ErrorCode.INVALID_PARAMS,
                f"parameter {name!r} {reason}",
                [{"path": f"$.{name}", "message": reason}],
            )
        size = len(_encoder.encode(value))
        if size > caps.param_bytes:
            raise too_large(
                f"parameter {name!r}", "max_param_bytes", size, caps.param_bytes, f"$.{name}"
            )
    size = len(_encoder.encode(labels))
    if size > caps.labels_bytes:
        raise too_large("the labels", "max_labels_bytes", size, caps.labels_bytes, "$.labels")


def check_reason(reason: str | None, caps: Caps) -> None:
    size = len(reason.encode("utf-8", "surrogatepass")) if reason else 0
    if size > caps.reason_bytes:
        raise too_large("the reason", "max_reason_bytes", size, caps.reason_bytes, "$.reason")


def _depth_over(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def fingerprint(tool: Tool, params: Mapping[str, Any], timeout_s: float, labels: Any) -> str:
    """What an idempotency key is bound to: the tool, params, timeout and labels. Secret
    values are left out (masked), so the stored fingerprint is no hash of a secret to guess
    at: a retry that differs only in a secret's value counts as the same request."""
    canonical = {
        "tool": tool.id,
        "params": mask_params(tool.manifest, params),
        "timeout_s": timeout_s,
        "labels": labels,
    }
    return hashlib.sha256(_sorted_encoder.encode(canonical)).hexdigest()


def find_tool(tools: Mapping[str, Tool], tool_id: str) -> Tool:
    tool = tools.get(tool_id)
    if tool is None:
        candidates = tool_id if len(tool_id) <= 256 else ""  # difflib is quadratic
        close = difflib.get_close_matches(candidates, list(tools), n=3, cutoff=0.5)
        tool_id = tool_id if len(tool_id) <= 256 else tool_id[:256] + "..."
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DomedError(
            ErrorCode.UNKNOWN_TOOL, f"no tool has id {tool_id!r}{hint}", {"close_matches": close}
        )
    return tool


def checked_params(tool: Tool, params: Mapping[str, Any]) -> dict[str, Any]:
    """Params with schema defaults filled, or invalid_params listing every failure by path
    (never repeating a secret's value), or naming a path parameter that points outside its
    roots. The params are returned as given: the executor resolves the paths again."""
    failures = param_errors(tool.validator, params, tool.manifest.secrets)
    if failures:
        raise DomedError(
            ErrorCode.INVALID_PARAMS, f"{len(failures)} parameter error(s) for {tool.id}", failures
        )
    checked = with_defaults(tool.manifest, params)
    confined_params(tool.manifest, checked, tool.tool_dir)
    return checked


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


def effective_queue_timeout(tool: Tool, requested: float | None) -> float | None:
    """How long the job may wait to start: the request's, at most the manifest's (any,
    when the manifest has none), else the manifest's."""
    limit = tool.manifest.queue_timeout_s
    if requested is None:
        return limit
    if not requested > 0 or requested != requested or requested == float("inf"):
        raise DomedError(
            ErrorCode.INVALID_REQUEST, "queue_timeout_s must be a positive number of seconds"
        )
    if limit is not None and requested > limit:
        raise DomedError(
            ErrorCode.INVALID_REQUEST,
            f"queue_timeout_s {requested} exceeds the tool's queue_timeout_s {limit}",
        )
    return requested


def check_labels(labels: Mapping[str, str]) -> None:
    for key in labels:
        if not key or len(key) > 128 or any(c in key for c in "=,\x00"):
            raise DomedError(
                ErrorCode.INVALID_REQUEST,
                f"label key {key!r} must be 1-128 chars without '=', ',' or NUL",
            )


def tool_submit(subject: str, req: ToolSubmitRequest) -> SubmitRequest:
    """The submit a request on ``domed.jobs.submit.<tool_id>`` asks for: of the subject's
    tool. A ``tool`` in the body must be that one (``invalid_request``): the server's
    permission was checked on the subject, so the body may not name another tool."""
    tool_id = subjects.tool_of_submit_subject(subject)
    if tool_id is None:  # pragma: no cover - the endpoint only receives its own subjects
        raise DomedError(ErrorCode.INVALID_REQUEST, f"{subject!r} names no tool")
    if req.tool is not None and req.tool != tool_id:
        shown = req.tool if len(req.tool) <= 256 else req.tool[:256] + "..."
        raise DomedError(
            ErrorCode.INVALID_REQUEST,
            f"the body names tool {shown!r} but the subject names {tool_id!r}; leave `tool` "
            "out, or submit on the subject of the tool you mean",
            {"subject_tool": tool_id},
        )
    return SubmitRequest(
        tool=tool_id,
        params=req.params,
        timeout_s=req.timeout_s,
        labels=req.labels,
        idempotency_key=req.idempotency_key,
    )


def build_queued(
    tool: Tool,
    req: SubmitRequest,
    job_id: str,
    params: dict[str, Any],
    submitted_by: SubmittedBy | None = None,
) -> Queued:
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
        queue_timeout_s=effective_queue_timeout(tool, req.queue_timeout_s),
        submitted_by=submitted_by,
    )


def idempotency_slot(key: str) -> str:
    """A KV key for an idempotency key of any length or alphabet."""
    return hashlib.sha256(key.encode()).hexdigest()


def explain(tool: Tool, params: Mapping[str, Any], caps: Caps) -> ExplainReply:
    check_sizes(params, {}, caps)
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
