"""Read a Thinker's ``<suggested_role>...</suggested_role>`` tag.

Rule: tag names match case-insensitively with optional whitespace inside the angle brackets
(``< Suggested_Role >``); the content may span lines. When a reply has several tags, the **last** one
counts (the Thinker's final word). The content is stripped of whitespace and of the decoration
``* _ ` " ' . : ;`` around it, then parsed as a role name case-insensitively. A tag whose content is no
role name is *unknown*: the suggestion is ignored (the routed role stands) and recorded.

Example:
    >>> parse_suggestion("plan... <SUGGESTED_ROLE> verifier </suggested_role>")
    Suggestion(raw='verifier', role=<Role.VERIFIER: 2>)
    >>> parse_suggestion("<suggested_role>Critic</suggested_role>")
    Suggestion(raw='Critic', role=None)
    >>> parse_suggestion("no tag") is None
    True
"""

from __future__ import annotations

import re
from typing import NamedTuple

from schemas.common import Role

_TAG = re.compile(r"<\s*suggested_role\s*>(.*?)<\s*/\s*suggested_role\s*>", re.IGNORECASE | re.DOTALL)
_DECORATION = " \t\r\n*_`\"'.:;"
MAX_RAW_CHARS = 64


class Suggestion(NamedTuple):
    """The tag's stripped text (truncated to 64 characters) and the role it names (``None`` if unknown)."""

    raw: str
    role: Role | None


def parse_suggestion(text: str) -> Suggestion | None:
    """The last ``<suggested_role>`` tag of ``text``, or ``None`` when there is none."""
    found = _TAG.findall(text)
    if not found:
        return None
    raw = str(found[-1]).strip(_DECORATION)
    try:
        role: Role | None = Role.parse(raw)
    except ValueError:
        role = None
    return Suggestion(raw[:MAX_RAW_CHARS], role)
