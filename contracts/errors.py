"""Error codes of the request/reply API, and the one exception type that carries them.

    DomedError(code, message, details)
      code: one of ErrorCode — a closed set, each with its HTTP-like status

A service raises ``DomedError`` where the problem is found; one wrapper per service
turns it into the Services-API error reply (headers ``Nats-Service-Error`` and
``Nats-Service-Error-Code``, body ``{"error": {code, message, details?}}``).
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class ErrorCode(enum.StrEnum):
    INVALID_REQUEST = "invalid_request"
    INVALID_PARAMS = "invalid_params"
    UNKNOWN_TOOL = "unknown_tool"
    UNKNOWN_JOB = "unknown_job"
    ALREADY_TERMINAL = "already_terminal"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.UNKNOWN_TOOL: 404,
    ErrorCode.UNKNOWN_JOB: 404,
    ErrorCode.ALREADY_TERMINAL: 409,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class TerminalErrorCode(enum.StrEnum):
    """``error.code`` values inside a terminal event."""

    SPAWN_FAILED = "spawn_failed"
    EXECUTOR_SHUTDOWN = "executor_shutdown"
    EXECUTOR_LOST = "executor_lost"


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    details: Any = None


class ErrorReply(msgspec.Struct):
    error: ErrorBody


class DomedError(Exception):
    """A failure a client should see as a typed error reply."""

    def __init__(self, code: ErrorCode, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def body(self) -> ErrorReply:
        return ErrorReply(ErrorBody(self.code.value, self.message, self.details))
