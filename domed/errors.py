"""The exceptions the client raises: each carries a ``code``.

    DomedError(code, message, details)
      an error reply of the API, one class per code (contracts.errors.ErrorCode):
        InvalidRequest, InvalidParams, UnknownTool, UnknownJob, AlreadyTerminal,
        IdempotencyConflict, TooLarge, Unavailable (NoResponders), Internal
      found on the client's side:
        Unreachable      no NATS server at the URL (``unreachable``)
        NotPermitted     NATS refused to let this user publish the request (``not_permitted``)
        InvalidReply     a reply that is not what the contract says (``invalid_reply``)
        ArtifactError    an artifact that cannot be read as the terminal lists it:
          UnknownArtifact   the job lists no artifact of that name (``unknown_artifact``)
          ArtifactMissing   listed, but not in the bucket (expired) (``artifact_missing``)
          DigestMismatch    the bytes read are not the ones listed (``digest_mismatch``)

``except domed.DomedError`` catches all of them; ``exc.code`` is the API's error code
(equal to the ``contracts.errors.ErrorCode`` member) or one of the client's own above.
"""

from __future__ import annotations

from typing import Any

from contracts.errors import ErrorCode


class DomedError(Exception):
    """A failed call: ``code`` says what kind, ``message`` says it for people, ``details``
    is the reply's (for ``invalid_params``: a list of ``{path, message}``)."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


class InvalidRequest(DomedError):
    """``invalid_request``: the body was not the request's shape."""


class InvalidParams(DomedError):
    """``invalid_params``: the params fail the tool's schema; ``details`` lists each failure."""


class UnknownTool(DomedError):
    """``unknown_tool``: no manifest has that id."""


class UnknownJob(DomedError):
    """``unknown_job``: no job has that id."""


class AlreadyTerminal(DomedError):
    """``already_terminal``: the job to cancel has already ended."""


class IdempotencyConflict(DomedError):
    """``idempotency_conflict``: the key was used for a different request."""


class TooLarge(DomedError):
    """``too_large``: a body, parameter value, the labels or a reason is over its cap."""


class Unavailable(DomedError):
    """``unavailable``: the service cannot reach JetStream, or no service answered."""


class NoResponders(Unavailable):
    """``unavailable``: no service subscribes to the request's subject (domed is not running,
    or not one that serves this subject)."""


class Internal(DomedError):
    """``internal``: a bug in the service, which logged it."""


class Unreachable(DomedError):
    """``unreachable``: no NATS server answers at the URL."""


class NotPermitted(DomedError):
    """``not_permitted``: NATS refused to let this user publish on ``subject``; nothing
    reached domed, and asking again will not help."""

    def __init__(self, subject: str) -> None:
        super().__init__(
            "not_permitted",
            f"NATS does not permit this user to publish on {subject}",
            {"subject": subject},
        )
        self.subject = subject


class InvalidReply(DomedError):
    """``invalid_reply``: a service answered with something the contract does not allow."""


class ArtifactError(DomedError):
    """An artifact could not be read as the job's terminal lists it."""


class UnknownArtifact(ArtifactError):
    """``unknown_artifact``: the job lists no artifact of that name (or has not ended)."""


class ArtifactMissing(ArtifactError):
    """``artifact_missing``: listed, but the object is gone from its bucket (its TTL passed)."""


class DigestMismatch(ArtifactError):
    """``digest_mismatch``: the object's bytes are not the size and SHA-256 the terminal
    lists; nothing of it is returned or kept."""


BY_CODE: dict[str, type[DomedError]] = {
    ErrorCode.INVALID_REQUEST: InvalidRequest,
    ErrorCode.INVALID_PARAMS: InvalidParams,
    ErrorCode.UNKNOWN_TOOL: UnknownTool,
    ErrorCode.UNKNOWN_JOB: UnknownJob,
    ErrorCode.ALREADY_TERMINAL: AlreadyTerminal,
    ErrorCode.IDEMPOTENCY_CONFLICT: IdempotencyConflict,
    ErrorCode.TOO_LARGE: TooLarge,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.INTERNAL: Internal,
}
"""The exception class of each API error code; a code this client does not know yet
becomes a plain ``DomedError`` with that code."""


def error_for(code: str, message: str, details: Any = None) -> DomedError:
    """The exception for an error reply's ``{code, message, details}``."""
    return BY_CODE.get(code, DomedError)(code, message, details)
