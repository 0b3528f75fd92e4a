"""Error codes of the request/reply API, and the one exception type that carries them.

    DomedError(code, message, details)
      code: one of ErrorCode — a closed set, each with its HTTP-like status

A service raises ``DomedError`` where the problem is found; one wrapper per service
turns it into the Services-API error reply (headers ``Nats-Service-Error`` and
``Nats-Service-Error-Code``, body ``{"error": {code, message, details?}}``).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import msgspec
from msgspec import Meta


class ErrorCode(enum.StrEnum):
    """``error.code`` of an error reply; ``STATUS`` maps each to its HTTP-like status."""

    INVALID_REQUEST = "invalid_request"
    INVALID_PARAMS = "invalid_params"
    UNKNOWN_TOOL = "unknown_tool"
    UNKNOWN_JOB = "unknown_job"
    ALREADY_TERMINAL = "already_terminal"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.UNKNOWN_TOOL: 404,
    ErrorCode.UNKNOWN_JOB: 404,
    ErrorCode.ALREADY_TERMINAL: 409,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
"""The ``Nats-Service-Error-Code`` status each error code is replied with."""

MEANING: dict[ErrorCode, str] = {
    ErrorCode.INVALID_REQUEST: "the body is not JSON, or not the request's shape",
    ErrorCode.INVALID_PARAMS: "params fail the manifest's JSON Schema; `details` lists each "
    "failure with its path",
    ErrorCode.UNKNOWN_TOOL: "no manifest has that id",
    ErrorCode.UNKNOWN_JOB: "no job has that id",
    ErrorCode.ALREADY_TERMINAL: "cancel of a job that has already ended",
    ErrorCode.IDEMPOTENCY_CONFLICT: "the `idempotency_key` was already used for a different "
    "request (another tool, params, timeout or labels); nothing was stored",
    ErrorCode.TOO_LARGE: "the body, a parameter value, the labels or the cancel reason is over "
    "its cap; `details` names the cap (`cap`, `limit`, `size`, `path`); nothing was stored. The "
    "caps are router settings; defaults: body 256 KiB (`max_body_bytes`), each parameter's "
    "value 64 KiB as JSON (`max_param_bytes`), all labels 16 KiB as JSON "
    "(`max_labels_bytes`), a cancel reason 1 KiB (`max_reason_bytes`)",
    ErrorCode.UNAVAILABLE: "the service cannot reach JetStream (retry later)",
    ErrorCode.INTERNAL: "a bug: the service logged it; the message says nothing more",
}
"""What each error code means, for the reference and the AsyncAPI document."""


class TerminalErrorCode(enum.StrEnum):
    """``error.code`` values inside a terminal event."""

    SPAWN_FAILED = "spawn_failed"
    EXECUTOR_SHUTDOWN = "executor_shutdown"
    EXECUTOR_LOST = "executor_lost"
    LIMIT_EXCEEDED = "limit_exceeded"
    INVALID_RESULT = "invalid_result"
    ARTIFACT_FAILED = "artifact_failed"
    QUEUE_TIMEOUT = "queue_timeout"


TERMINAL_MEANING: dict[TerminalErrorCode, str] = {
    TerminalErrorCode.SPAWN_FAILED: "the command could not start (state `failed`)",
    TerminalErrorCode.EXECUTOR_SHUTDOWN: "the executor was stopped and canceled the job once "
    "its drain time was over (state `canceled`)",
    TerminalErrorCode.EXECUTOR_LOST: "the executor running it vanished and the tool is not "
    "`idempotent` (state `lost`)",
    TerminalErrorCode.LIMIT_EXCEEDED: "the job went past one of its manifest's resource "
    "limits and was stopped; `error.limit` names it (state `failed`)",
    TerminalErrorCode.INVALID_RESULT: "what the job wrote to `$DOMED_RESULT` is not JSON, is "
    "larger than `limits.max_result_bytes` or fails the manifest's `result_schema` (state "
    "`failed`)",
    TerminalErrorCode.ARTIFACT_FAILED: "the job's artifacts could not all be stored: past "
    "`limits.max_artifact_bytes`, not a regular file of the job's, or the upload failed "
    "(state `failed`)",
    TerminalErrorCode.QUEUE_TIMEOUT: "the job waited to start longer than its "
    "`queue_timeout_s` and never started (state `timed_out`)",
}
"""What each terminal error code means, for the reference."""


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """What went wrong."""

    code: Annotated[str, Meta(description="One of the error codes.")]
    message: Annotated[str, Meta(description="A sentence for people.")]
    details: Annotated[
        Any, Meta(description="For `invalid_params`: a list of `{path, message}`.")
    ] = None


class ErrorReply(msgspec.Struct):
    """The body of every error reply; the headers `Nats-Service-Error` (the message) and
    `Nats-Service-Error-Code` (the HTTP-like status) come with it."""

    error: Annotated[ErrorBody, Meta(description="The error.")]


class DomedError(Exception):
    """A failure a client should see as a typed error reply."""

    def __init__(self, code: ErrorCode, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        """The status this error is replied with (``STATUS`` of its code)."""
        return STATUS[self.code]

    def body(self) -> ErrorReply:
        """The error reply this error is answered with."""
        return ErrorReply(ErrorBody(self.code.value, self.message, self.details))
