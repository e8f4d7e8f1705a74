"""Build an agent's messages for a role: system prompt, the user query, earlier replies, the instruction.

Pure: no I/O. With ``history_style="messages"`` (the default) the layout is::

    system:    <role's system prompt>
    user:      <query>
    assistant: <header>\\n<reply>          (one per earlier reply, oldest first)
    user:      <role's instruction>

With ``"inline"`` the query, the replies and the instruction go into one ``user`` message after the system
prompt, for chat templates that require strict user/assistant alternation.

Example:
    >>> from schemas import Role
    >>> from schemas.roles import RoleInjectRequest
    >>> from actors.role_injector.packs import DEFAULT_PACK
    >>> reply = build(DEFAULT_PACK, RoleInjectRequest(request_id="q", turn=0, agent_id=1,
    ...               role=Role.WORKER, query="What is 2+2?"))
    >>> [m.role for m in reply.messages]
    ['system', 'user', 'user']
"""

from __future__ import annotations

import hashlib

import msgspec

from actors.role_injector.packs import RolePack
from schemas.common import Message
from schemas.roles import RoleInjectReply, RoleInjectRequest, TranscriptEntry


def render_reply(pack: RolePack, entry: TranscriptEntry) -> str:
    """An earlier reply with the pack's header (turn, role, agent)."""
    header = pack.reply_header.format(turn=entry.turn, role=entry.role.label, agent_id=entry.agent_id)
    return f"{header}\n{entry.content}"


def build_messages(pack: RolePack, request: RoleInjectRequest) -> list[Message]:
    """The messages ``request.agent_id`` sees when playing ``request.role`` (see the module docstring)."""
    prompt = pack.prompt(request.role)
    messages = [Message(role="system", content=prompt.system)]
    if pack.history_style == "inline":
        parts = [f"User request:\n{request.query}"]
        if request.history:
            parts.append("Replies so far:\n\n" + "\n\n".join(render_reply(pack, h) for h in request.history))
        parts.append(prompt.instruction)
        messages.append(Message(role="user", content="\n\n".join(parts)))
        return messages
    messages.append(Message(role="user", content=request.query))
    messages.extend(Message(role="assistant", content=render_reply(pack, h)) for h in request.history)
    messages.append(Message(role="user", content=prompt.instruction))
    return messages


def prompt_sha256(messages: list[Message]) -> str:
    """sha256 of the messages' canonical JSON (what traces record instead of the prompt text)."""
    return hashlib.sha256(msgspec.json.encode(messages)).hexdigest()


def build(pack: RolePack, request: RoleInjectRequest) -> RoleInjectReply:
    """Answer a :class:`RoleInjectRequest` with ``pack``."""
    messages = build_messages(pack, request)
    return RoleInjectReply(request_id=request.request_id, turn=request.turn, role=request.role,
                           messages=messages, role_pack=pack.pack_id, prompt_sha256=prompt_sha256(messages))
