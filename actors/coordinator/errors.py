"""Coordinator errors: one class per kind, each message says what to do.

The state machine's ports (route, role injection, agent call) raise :class:`RouteFailed`,
:class:`RoleInjectFailed` and :class:`AgentCallFailed`; the bus-facing actor translates bus errors into
them, so the pure logic never sees NATS.
"""

from __future__ import annotations

from typing import Self

from bus.errors import ContractError
from schemas.wire import ErrorCode, ErrorReply


class CoordinatorError(ContractError):
    """Base class of the coordinator's errors (a :class:`~bus.errors.ContractError`)."""


class PortError(CoordinatorError):
    """A call the state machine made through one of its ports failed.

    ``code`` is an :class:`~schemas.wire.ErrorCode` (a code's string value, e.g. ``"deadline"``, is accepted and
    converted; an unknown one raises ``ValueError``).
    """

    def __init__(self, code: ErrorCode | str, message: str, *, retryable: bool = False) -> None:
        code = ErrorCode(code)
        super().__init__(message, code=code, retryable=retryable, text=f"{code.value}: {message}")

    @classmethod
    def from_reply(cls, reply: ErrorReply, prefix: str = "") -> Self:
        """The port error for a bus failure already mapped by :func:`bus.errors.error_contract`."""
        return cls(reply.code, f"{prefix}{reply.message}", retryable=reply.retryable)


class RouteFailed(PortError):
    """The model runtime could not give routing logits for a turn."""


class RoleInjectFailed(PortError):
    """The role injector could not build an agent's messages."""


class AgentCallFailed(PortError):
    """An agent call failed (the coordinator falls back to the next-best agent)."""


class DuplicateRequestConflict(CoordinatorError):
    """A request id was reused with a different payload."""

    code = ErrorCode.INVALID

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"request id {request_id!r} was already used for a different request; "
                         "use a fresh request_id for a new question (identical resubmissions get the same result)")


class CoordinatorConfigError(CoordinatorError):
    """The coordinator's settings or wiring are inconsistent."""

    code = ErrorCode.INVALID
