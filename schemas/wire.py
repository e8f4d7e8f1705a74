"""Typed error replies: what an actor answers when it cannot serve a request.

The reply body is an :class:`ErrorReply`; the bus also sets nats micro's ``Nats-Service-Error`` and
``Nats-Service-Error-Code`` headers, so generic NATS tools see the error too.
"""

from __future__ import annotations

import enum

import msgspec

from schemas.redaction import scrub_text


class ErrorCode(enum.StrEnum):
    """Kinds of error reply. ``status`` is the HTTP-like code set in the micro error header."""

    MALFORMED = "malformed"
    INVALID = "invalid"
    TOO_LARGE = "too_large"
    NOT_FOUND = "not_found"
    UNKNOWN_AGENT = "unknown_agent"
    OVERLOADED = "overloaded"
    DEADLINE = "deadline"
    UNAVAILABLE = "unavailable"
    UPSTREAM = "upstream"
    DRAINING = "draining"
    INTERNAL = "internal"

    @property
    def status(self) -> int:
        """HTTP-like status for the micro error-code header."""
        return _STATUS[self]


_STATUS = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.INVALID: 422,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNKNOWN_AGENT: 404,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.DEADLINE: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UPSTREAM: 502,
    ErrorCode.DRAINING: 503,
    ErrorCode.INTERNAL: 500,
}


class ErrorReply(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A typed error: machine-readable ``code``, a message the user can act on, and safe details."""

    code: ErrorCode
    message: str
    retryable: bool = False
    details: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        # an error reply is published, stored and logged: it never carries a credential (a URL's userinfo...)
        msgspec.structs.force_setattr(self, "message", scrub_text(self.message))
        if self.details:
            msgspec.structs.force_setattr(self, "details", {k: scrub_text(v) for k, v in self.details.items()})
