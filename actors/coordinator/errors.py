"""Coordinator errors: one class per kind, each message says what to do.

The state machine's ports (route, role injection, agent call) raise :class:`RouteFailed`,
:class:`RoleInjectFailed` and :class:`AgentCallFailed`; the bus-facing actor translates bus errors into
them, so the pure logic never sees NATS.
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base class of the coordinator's errors."""


class PortError(CoordinatorError):
    """A call the state machine made through one of its ports failed.

    ``code`` is a :class:`~schemas.wire.ErrorCode` value (``"deadline"``, ``"unavailable"``...).
    """

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        self.code, self.message, self.retryable = code, message, retryable
        super().__init__(f"{code}: {message}")


class RouteFailed(PortError):
    """The model runtime could not give routing logits for a turn."""


class RoleInjectFailed(PortError):
    """The role injector could not build an agent's messages."""


class AgentCallFailed(PortError):
    """An agent call failed (the coordinator falls back to the next-best agent)."""


class DuplicateRequestConflict(CoordinatorError):
    """A request id was reused with a different payload."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"request id {request_id!r} was already used for a different request; "
                         "use a fresh request_id for a new question (identical resubmissions get the same result)")


class CoordinatorConfigError(CoordinatorError):
    """The coordinator's settings or wiring are inconsistent."""
