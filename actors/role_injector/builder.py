"""Build an agent's messages for a role: system prompt, the user query, earlier replies, the instruction.

Pure: no I/O. A role with a ``template`` (see :mod:`.packs`) gets::

    system:    <role's system prompt>
    user:      <example user text>        (one pair per worked example)
    assistant: <example reply>
    user:      <template filled with query, latest answer, notes, history, instruction>

Otherwise, with ``history_style="messages"`` (the default) the layout is::

    system:    <role's system prompt>
    user:      <query>
    assistant: <header>\\n<reply>          (one per earlier reply, oldest first)
    user:      <role's instruction>

With ``"inline"`` the query, the replies and the instruction go into one ``user`` message after the system
prompt, for chat templates that require strict user/assistant alternation. A ``"fugu"`` pack is laid out as
Sakana's ``fugu`` does it (:mod:`.fugu`).

Example:
    >>> from schemas import Role
    >>> from schemas.roles import RoleInjectRequest
    >>> from actors.role_injector.packs import DEFAULT_PACK
    >>> reply = build(DEFAULT_PACK, RoleInjectRequest(request_id="q", turn=0, agent_id=1,
    ...               role=Role.WORKER, query="What is 2+2?"))
    >>> [m.role for m in reply.messages]
    ['system', 'user', 'assistant', 'user']
    >>> reply.messages[-1].content
    'Question: What is 2+2?\\nNotes: none'
"""

from __future__ import annotations

import hashlib
import re

import msgspec

from actors.role_injector.fugu import fugu_messages
from actors.role_injector.packs import RolePack, RolePrompt
from schemas.common import Message, Role
from schemas.roles import RoleInjectReply, RoleInjectRequest, TranscriptEntry

#: A bookkeeping header a model copied to the start of its reply (``[turn 2 | Verifier | agent 2]``):
#: removed from earlier replies before they are shown again, so copies do not pile up turn after turn.
ECHOED_HEADER = re.compile(r"^\s*\[\s*turn\s*\d+[^\]\n]{0,80}\]\s*", re.IGNORECASE)
NO_ANSWER = "none yet"
NO_NOTES = "none"


def strip_echoed_header(text: str) -> str:
    """``text`` without leading copies of the ``[turn N | Role | agent N]`` header.

    Example:
        >>> strip_echoed_header("[turn 2 | Verifier | agent 2]\\n17 + 25 = 42.")
        '17 + 25 = 42.'
    """
    while (m := ECHOED_HEADER.match(text)) is not None and m.end() > 0:
        text = text[m.end():]
    return text


def render_reply(pack: RolePack, entry: TranscriptEntry) -> str:
    """An earlier reply with the pack's header (turn, role, agent)."""
    header = pack.reply_header.format(turn=entry.turn, role=entry.role.label, agent_id=entry.agent_id)
    return f"{header}\n{strip_echoed_header(entry.content)}"


def _fill(pack: RolePack, prompt: RolePrompt, request: RoleInjectRequest) -> str:
    history = request.history
    last_worker = max((i for i, h in enumerate(history) if h.role is Role.WORKER), default=-1)
    answer = strip_echoed_header(history[last_worker].content).strip() if last_worker >= 0 else NO_ANSWER
    later = [h for h in history[last_worker + 1:] if h.role is not Role.WORKER]
    notes = strip_echoed_header(later[-1].content).strip() if later else NO_NOTES
    return prompt.template.format(query=request.query, answer=answer or NO_ANSWER, notes=notes or NO_NOTES,
                                  history="\n\n".join(render_reply(pack, h) for h in history),
                                  instruction=prompt.instruction)


def build_messages(pack: RolePack, request: RoleInjectRequest) -> list[Message]:
    """The messages ``request.agent_id`` sees when playing ``request.role`` (see the module docstring)."""
    if pack.history_style == "fugu":
        return fugu_messages(pack, request)
    prompt = pack.prompt(request.role)
    messages = [Message(role="system", content=prompt.system)]
    if prompt.template:
        for ex in prompt.examples:
            messages += [Message(role="user", content=ex.user), Message(role="assistant", content=ex.assistant)]
        messages.append(Message(role="user", content=_fill(pack, prompt, request)))
        return messages
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
