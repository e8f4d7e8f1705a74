"""Parse a Verifier reply into ACCEPT or REVISE.

The rule (:data:`DEFAULT_VOCABULARY`), precisely:

1. Skip what may precede the verdict word, as often as it occurs: whitespace and markdown/quoting
   decoration ``* _ ` # > " ' ( [ { ~ -``; a copied bookkeeping header ``[turn N | Role | agent N]`` (small
   models echo it); a label ``Verdict:``, ``Decision:`` or ``Verifier:`` (any case, decoration around it).
2. The verdict word is the maximal run of ASCII letters that follows, compared ignoring case:
   ``accept``/``accepted`` -> ACCEPT; ``revise``/``revised``/``reject``/``rejected`` -> REVISE.
3. Any other word (``"acceptable"``, ``"I accept"``, ``"Yes"``), or an empty reply, is *unparseable*:
   REVISE with ``parsed`` False, so an unclear review never ends a run.

So ``"  accept."``, ``"ACCEPT: looks right"``, ``"**ACCEPT**"``, ``"Verdict: ACCEPT"`` and
``"[turn 2 | Verifier | agent 2]\\nACCEPT"`` are ACCEPT.

A vocabulary with ``contains=True`` (Sakana's rule: accept when the reply starts with "accept", or contains
"accept" and not "reject") also decides by its words anywhere in the reply (as substrings) when the first word
is none of them: see :data:`SAKANA_VOCABULARY`.

Example:
    >>> parse_verdict("ACCEPT: looks right")
    ParsedVerdict(verdict=<Verdict.ACCEPT: 'accept'>, parsed=True, excerpt='ACCEPT: looks right')
    >>> parse_verdict("I think it's fine").verdict
    <Verdict.REVISE: 'revise'>
    >>> parse_verdict("I accept this answer", SAKANA_VOCABULARY).verdict
    <Verdict.ACCEPT: 'accept'>
"""

from __future__ import annotations

import re
from typing import NamedTuple

from schemas.coordination import Verdict

_DECORATION = " \t\r\n\f\v*_`#>\"'([{~-"
_WORD = re.compile(r"[A-Za-z]+")
_HEADER = re.compile(r"\[\s*turn\s*\d+[^\]\n]{0,80}\]", re.IGNORECASE)
_LABEL = re.compile(r"(?:verdict|decision|verifier)[\s*_`]*[:\-][\s*_`]*", re.IGNORECASE)
EXCERPT_CHARS = 120


class VerdictVocabulary(NamedTuple):
    """The words that mean ACCEPT and REVISE (lower case), and whether the rest of the reply also counts."""

    accept: frozenset[str]
    revise: frozenset[str]
    contains: bool = False


#: The role packs' ACCEPT/REVISE protocol: the first word decides.
DEFAULT_VOCABULARY = VerdictVocabulary(accept=frozenset({"accept", "accepted"}),
                                       revise=frozenset({"revise", "revised", "reject", "rejected"}))
#: Sakana's rule (``fugu``): a reply starting with "accept", or containing "accept" and not "reject".
SAKANA_VOCABULARY = VerdictVocabulary(accept=frozenset({"accept"}), revise=frozenset({"reject"}), contains=True)


class ParsedVerdict(NamedTuple):
    """The verdict, whether the reply followed the ACCEPT/REVISE rule, and the reply's first characters."""

    verdict: Verdict
    parsed: bool
    excerpt: str


def _lead(text: str) -> str:
    """``text`` from its first word after decoration, echoed headers and labels (rule 1)."""
    while True:
        text = text.lstrip(" \t\r\n\f\v")
        m = _HEADER.match(text) or _LABEL.match(text)
        if m is not None:
            text = text[m.end():]
        elif text and text[0] in _DECORATION:  # one at a time: "**[turn 2 ...]" is decoration, then a header
            text = text[1:]
        else:
            return text


def parse_verdict(text: str, vocabulary: VerdictVocabulary = DEFAULT_VOCABULARY) -> ParsedVerdict:
    """Apply the module's rule to a Verifier reply."""
    excerpt = text.strip()[:EXCERPT_CHARS]
    m = _WORD.match(_lead(text))
    word = m.group(0).lower() if m else ""
    if word in vocabulary.accept:
        return ParsedVerdict(Verdict.ACCEPT, True, excerpt)
    if word in vocabulary.revise:
        return ParsedVerdict(Verdict.REVISE, True, excerpt)
    if vocabulary.contains:  # substrings, as Sakana's rule tests them
        low = text.lower()
        if any(w in low for w in vocabulary.revise):
            return ParsedVerdict(Verdict.REVISE, True, excerpt)
        if any(w in low for w in vocabulary.accept):
            return ParsedVerdict(Verdict.ACCEPT, True, excerpt)
    return ParsedVerdict(Verdict.REVISE, False, excerpt)
