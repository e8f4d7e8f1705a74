"""Role injection contracts: ask the role injector for the messages an agent sees in a given role.

The coordinator sends a :class:`RoleInjectRequest` (the user query, the replies so far with the role
each was given, and the role to play) on ``trinity.role.inject``; the injector answers with a
:class:`RoleInjectReply` holding the agent's ``list[Message]`` and the role-pack version that built it.

Example:
    >>> req = RoleInjectRequest(request_id="q1", turn=0, agent_id=2, role=Role.WORKER, query="2+2?")
    >>> req.history
    []
"""

from __future__ import annotations

import msgspec

from schemas.common import Message, NonNegInt, RequestId, Role
from schemas.errors import require


class TranscriptEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One earlier agent reply of a run: which turn, which agent, in which role, what it said."""

    turn: NonNegInt
    agent_id: NonNegInt
    role: Role
    content: str


class RoleInjectRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Build the messages for ``agent_id`` playing ``role`` at ``turn``.

    ``history`` lists the run's earlier agent replies, oldest first. ``role_pack`` names the pack to use
    (``None``: the injector's default pack).
    """

    request_id: RequestId
    turn: NonNegInt
    agent_id: NonNegInt
    role: Role
    query: str
    history: list[TranscriptEntry] = msgspec.field(default_factory=list)
    role_pack: str | None = None

    def __post_init__(self) -> None:
        require(bool(self.query.strip()), "query", "must not be empty")
        turns = [h.turn for h in self.history]
        require(turns == sorted(turns), "history", "entries must be ordered by turn, oldest first")
        require(all(t < self.turn for t in turns), "history", f"entries must precede turn {self.turn}")


class RoleInjectReply(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The agent's messages (system prompt first) and the role pack (``name/version``) that built them."""

    request_id: RequestId
    turn: NonNegInt
    role: Role
    messages: list[Message]
    role_pack: str
    prompt_sha256: str = ""

    def __post_init__(self) -> None:
        require(len(self.messages) > 0, "messages", "must not be empty")


__all__ = ["RoleInjectReply", "RoleInjectRequest", "TranscriptEntry"]
