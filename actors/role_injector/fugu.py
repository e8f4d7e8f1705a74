"""Agent prompts laid out as Sakana's ``fugu`` builds them (trinity mode): the ``fugu`` history style.

State is read from the request's history exactly as ``fugu``'s ``Task`` keeps it:

* ``context`` — the shared user message (:func:`schemas.fugu.context`: the query, the collaboration sentence,
  each Worker reply's thought as ``<reference_thought_N>``); the router reads the same text.
* ``response`` — the latest Worker reply (``Task.response``), or none.
Template fields: ``{context}``, ``{info}`` (the Thinker's), ``{query}`` (= ``context``, the Verifier's name for
it) and ``{response}``.

* ``suggestion`` — the text of the last Thinker's ``<suggestion>`` while it is in effect: a Thinker reply sets
  it (``_parse_thinker_response``: ``None`` unless the reply also names ``solver`` or ``verifier``), and a
  Worker or Verifier turn clears it after using it (``step_trinity``).

Messages per role (``_format_agent_messages``, ``_format_thinker_messages``, ``_format_verifier_messages``),
each ``[system, user]``:

* Worker: ``context``, then the Worker's ``suggestion`` template when a suggestion is in effect (appended
  with no separator, as ``fugu`` does).
* Thinker: the template with ``info`` = ``context`` + ``"\\n\\nCurrent response:\\n" + response`` when there is
  a non-empty response (the Thinker never sees the suggestion).
* Verifier: the template with ``query`` = ``context`` (``fugu`` removes ``reference_agent_thoughts`` from it,
  which stays ``""`` in trinity mode, so nothing is removed) and ``response`` (``"None"`` before any Worker
  reply, as Python formats it), then the Verifier's ``suggestion`` template when one is in effect.

Example:
    >>> from actors.role_injector.packs import FUGU_PACK
    >>> from schemas import Role
    >>> from schemas.roles import RoleInjectRequest
    >>> msgs = fugu_messages(FUGU_PACK, RoleInjectRequest(request_id="q", turn=0, agent_id=1,
    ...                                                   role=Role.WORKER, query="What is 2+2?"))
    >>> [m.role for m in msgs], msgs[1].content.startswith("What is 2+2?\\nYou may see")
    (['system', 'user'], True)
"""

from __future__ import annotations

from actors.role_injector.packs import RolePack
from schemas import fugu
from schemas.common import Message, Role
from schemas.roles import RoleInjectRequest, TranscriptEntry

#: What ``_format_thinker_messages`` puts between the context and the latest response.
CURRENT_RESPONSE = "\n\nCurrent response:\n"


def suggestion_in_effect(history: list[TranscriptEntry]) -> str | None:
    """The last Thinker's suggestion text if no Worker or Verifier turn has followed it (see the module docs)."""
    suggestion: str | None = None
    for entry in history:
        suggestion = fugu.parse_thinker(entry.content)[1] if entry.role is Role.THINKER else None
    return suggestion


def fugu_messages(pack: RolePack, request: RoleInjectRequest) -> list[Message]:
    """The ``[system, user]`` messages ``request.role`` gets under ``fugu``'s layout (see the module docs)."""
    prompt = pack.prompt(request.role)
    history = request.history
    context = fugu.context(request.query, (h.content for h in history if h.role is Role.WORKER))
    response = next((h.content for h in reversed(history) if h.role is Role.WORKER), None)
    suggestion = suggestion_in_effect(history)
    info = context + (f"{CURRENT_RESPONSE}{response}" if response else "")
    user = prompt.template.format(context=context, info=info, query=context, response=str(response))
    if suggestion and prompt.suggestion and request.role is not Role.THINKER:
        user += prompt.suggestion.format(suggestion=suggestion)
    return [Message(role="system", content=prompt.system), Message(role="user", content=user)]


__all__ = ["CURRENT_RESPONSE", "fugu_messages", "suggestion_in_effect"]
