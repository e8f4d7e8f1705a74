"""The texts of Sakana's ``fugu`` episode (trinity mode) that more than one actor must build identically.

Under the ``sakana`` routing profile the router and the agents read one shared *context*, as in ``fugu``'s
``Task``: the user message ``messages[-1]["content"]``, which starts as the task prompt followed by
``"\\n"`` and :data:`COLLABORATION_PROMPT` (``Task._format_user_prompt``; the query here stands for the
task's own prompt), and grows by ``"\\n<reference_thought_N>thought</reference_thought_N>"`` for each
Worker (solver) reply with a non-empty thought (``Task._get_obs``). The model runtime wraps the context in
the router's chat template (``actors/model_runtime/formatting.py``); the role injector's ``fugu`` packs put
it into the agents' prompts (``actors/role_injector/fugu.py``); the coordinator reads Thinker replies with
the same rule (:func:`parse_thinker`). Pure text, no logic beyond ``fugu``'s string rules.

Example:
    >>> context("2+2?", ["<idea>add</idea> 4"]).endswith("\\n<reference_thought_0>add</reference_thought_0>")
    True
    >>> parse_thinker("<suggestion>check</suggestion><suggested_role>verifier</suggested_role>")
    ('verifier', 'check')
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: ``Task.thinking_tag``: a Worker reply's thought is the text inside the first ``<idea>...</idea>``.
THINKING_TAG = "idea"
#: ``Task.DEFAULT_COLLABORATION_PROMPT`` (trinity mode), appended to the task prompt after ``"\n"``.
COLLABORATION_PROMPT = (
    "You may see other agents' reference thought in <reference_thought> tag. In that case, "
    "you should analyse those infomation, and then give response to the query. "
)
#: ``_parse_thinker_response``'s accepted role names.
SUGGESTED_ROLES = ("solver", "verifier")
_IDEA = re.compile(f"<{THINKING_TAG}>(.*?)</{THINKING_TAG}>", re.DOTALL)
_ROLE_TAG = re.compile(r"<suggested_role>(.*?)</suggested_role>", re.DOTALL)
_SUGGESTION_TAG = re.compile(r"<suggestion>(.*?)</suggestion>", re.DOTALL)


def thought(reply: str) -> str:
    """The thought a Worker reply contributes: the stripped text of the first ``<idea>...</idea>`` when the
    reply has one, else the reply with ``<idea>``/``</idea>`` removed (not stripped)."""
    open_tag, close_tag = f"<{THINKING_TAG}>", f"</{THINKING_TAG}>"
    if open_tag in reply and (m := _IDEA.search(reply)) is not None:
        return m.group(1).strip()
    return reply.replace(open_tag, "").replace(close_tag, "")


def context(query: str, worker_replies: Iterable[str]) -> str:
    """The shared user message: ``query``, ``"\\n"`` + :data:`COLLABORATION_PROMPT`, then one
    ``"\\n<reference_thought_N>...</reference_thought_N>"`` per Worker reply with a non-empty thought (N from 0)."""
    text = f"{query}\n{COLLABORATION_PROMPT}"
    n = 0
    for reply in worker_replies:
        if t := thought(reply):
            text += f"\n<reference_thought_{n}>{t}</reference_thought_{n}>"
            n += 1
    return text


def parse_thinker(text: str) -> tuple[str | None, str | None]:
    """``(suggested_role, suggestion)`` of a Thinker reply, or ``(None, None)``: the first
    ``<suggested_role>`` tag (stripped) must be ``solver`` or ``verifier`` and a ``<suggestion>...</suggestion>``
    tag must be present (its stripped text is the suggestion), as ``Task._parse_thinker_response``."""
    role = None
    if (m := _ROLE_TAG.search(text)) is not None:
        role = m.group(1).strip()
        role = role if role in SUGGESTED_ROLES else None
    suggestion = m2.group(1).strip() if (m2 := _SUGGESTION_TAG.search(text)) is not None else None
    if role is None or suggestion is None:
        return None, None
    return role, suggestion


__all__ = ["COLLABORATION_PROMPT", "SUGGESTED_ROLES", "THINKING_TAG", "context", "parse_thinker", "thought"]
