"""Verifier verdict and Thinker suggestion parsing rules."""

from __future__ import annotations

import pytest

from actors.coordinator.suggestions import parse_suggestion
from actors.coordinator.verdict import SAKANA_VOCABULARY, parse_verdict
from schemas import Role, Verdict

A, R = Verdict.ACCEPT, Verdict.REVISE


@pytest.mark.parametrize(("text", "verdict", "parsed"), [
    ("ACCEPT", A, True),
    ("  accept.", A, True),
    ("ACCEPT: looks right", A, True),
    ("**ACCEPT**", A, True),
    ("> Accept\nthe answer is fine", A, True),
    ("# ACCEPT", A, True),
    ("`accept`", A, True),
    ("\n\taccept,fine", A, True),
    ("REVISE: step 2 is wrong", R, True),
    ("revise", R, True),
    ("**Revise** - missing units", R, True),
    # the same words in other forms, and labels, mean what they say (were unparsed before role pack /2)
    ("ACCEPTED", A, True),
    ("Verdict: ACCEPT", A, True),
    ("**Verdict:** accept - fine", A, True),
    ("Decision - REVISE", R, True),
    ("REJECT: wrong sum", R, True),
    ("Revised answer: 42", R, True),
    # what SmolLM2 wrote with the old pack: the copied bookkeeping header is skipped
    ("[turn 2 | Verifier | agent 2]\nACCEPT. The answer is correct.", A, True),
    ("**[turn 1 | Verifier | agent 5]** REVISE. 17 + 25 = 42.", R, True),
    ("[turn 2 | Verifier | agent 2] 17 + 25 = 32.", R, False),
    ("ACCEPT. The answer is correct.", A, True),
    ("REVISE. The answer is wrong: 2 + 2 = 4.", R, True),
    # still unparseable: no verdict word first
    ("acceptable", R, False),
    ("I accept", R, False),
    ("The answer is correct.", R, False),
    ("[ACCEPT]", A, True),
    ("[note] ACCEPT", R, False),
    ("accept2", A, True),  # the word is the run of letters: "accept"
    ("", R, False),
    ("   ", R, False),
    ("ÀCCEPT", R, False),
])
def test_verdict_rule(text: str, verdict: Verdict, parsed: bool) -> None:
    v = parse_verdict(text)
    assert (v.verdict, v.parsed) == (verdict, parsed)


@pytest.mark.parametrize(("text", "verdict", "parsed"), [
    ("accept", A, True),
    ("Accept, although one could reject the units", A, True),  # starts with accept
    ("I accept this answer", A, True),  # contains accept and not reject
    ("acceptable", A, True),
    ("I would not accept it; reject", R, True),  # contains both and does not start with accept
    ("Reject.", R, True),
    ("looks fine", R, False),
])
def test_sakana_vocabulary(text: str, verdict: Verdict, parsed: bool) -> None:
    v = parse_verdict(text, SAKANA_VOCABULARY)
    assert (v.verdict, v.parsed) == (verdict, parsed)


def test_verdict_excerpt_is_stripped_and_bounded() -> None:
    v = parse_verdict("  REVISE " + "x" * 500)
    assert v.excerpt.startswith("REVISE x") and len(v.excerpt) == 120


@pytest.mark.parametrize(("text", "raw", "role"), [
    ("<suggested_role>Worker</suggested_role>", "Worker", Role.WORKER),
    ("plan\n<SUGGESTED_ROLE>  verifier\n</Suggested_Role>", "verifier", Role.VERIFIER),
    ("< suggested_role >thinker< / suggested_role >", "thinker", Role.THINKER),
    ("<suggested_role>**Verifier.**</suggested_role>", "Verifier", Role.VERIFIER),
    ("<suggested_role>worker</suggested_role> then <suggested_role>thinker</suggested_role>", "thinker",
     Role.THINKER),
    ("<suggested_role>Critic</suggested_role>", "Critic", None),
    ("<suggested_role></suggested_role>", "", None),
])
def test_suggestion_rule(text: str, raw: str, role: Role | None) -> None:
    s = parse_suggestion(text)
    assert s is not None and (s.raw, s.role) == (raw, role)


@pytest.mark.parametrize("text", ["", "no tag", "<suggested_role>worker", "suggested_role: worker"])
def test_no_suggestion(text: str) -> None:
    assert parse_suggestion(text) is None


def test_unknown_suggestion_raw_is_truncated() -> None:
    s = parse_suggestion("<suggested_role>" + "z" * 500 + "</suggested_role>")
    assert s is not None and s.role is None and len(s.raw) == 64
