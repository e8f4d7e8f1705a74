"""Parse a Verifier reply into ACCEPT or REVISE.

The rule, precisely:

1. Strip leading characters that are whitespace or markdown/quoting decoration:
   ``* _ ` # > " ' ( [ { ~ -`` (so ``"**ACCEPT**"``, ``"> ACCEPT"``, ``"# Revise"`` work).
2. The verdict word is the maximal run of ASCII letters that follows. It must equal ``accept`` or
   ``revise`` ignoring case. Anything else (``"ACCEPTED"``, ``"acceptable"``, ``"I accept"``,
   ``"Verdict: ACCEPT"``, an empty reply) is *unparseable*.
3. ``accept`` -> ACCEPT; ``revise`` or unparseable -> REVISE (``parsed`` False for unparseable).

So ``"  accept."``, ``"ACCEPT: looks right"``, ``"**ACCEPT**"`` and ``"Accept\\nfine"`` are ACCEPT.

Example:
    >>> parse_verdict("ACCEPT: looks right")
    ParsedVerdict(verdict=<Verdict.ACCEPT: 'accept'>, parsed=True, excerpt='ACCEPT: looks right')
    >>> parse_verdict("I think it's fine").verdict
    <Verdict.REVISE: 'revise'>
"""

from __future__ import annotations

import re
from typing import NamedTuple

from schemas.coordination import Verdict

_DECORATION = " \t\r\n\f\v*_`#>\"'([{~-"
_WORD = re.compile(r"[A-Za-z]+")
EXCERPT_CHARS = 120


class ParsedVerdict(NamedTuple):
    """The verdict, whether the reply followed the ACCEPT/REVISE rule, and the reply's first characters."""

    verdict: Verdict
    parsed: bool
    excerpt: str


def parse_verdict(text: str) -> ParsedVerdict:
    """Apply the module's rule to a Verifier reply."""
    excerpt = text.strip()[:EXCERPT_CHARS]
    m = _WORD.match(text.lstrip(_DECORATION))
    word = m.group(0).lower() if m else ""
    if word == "accept":
        return ParsedVerdict(Verdict.ACCEPT, True, excerpt)
    if word == "revise":
        return ParsedVerdict(Verdict.REVISE, True, excerpt)
    return ParsedVerdict(Verdict.REVISE, False, excerpt)
