"""The coordinator's routing-profile rules, pure: what the router sees, how replies are read, how logits decide.

One module for every rule that differs between the routing profiles (:mod:`schemas.profiles`), so the
coordinator and a trainer import the same code and what is trained is what is served:

* :func:`observation` — which transcript entries the router reads (``elixir-port``: the query and every
  reply; ``sakana``: the query and the Worker replies only — Sakana's ``Task._get_obs`` is only called for
  a solver's reply; Thinker and Verifier replies never enter the router's input). The model runtime turns
  these messages into text (``actors/model_runtime/formatting.py``).
* :func:`read_verdict` — ``elixir-port``: :func:`.verdict.parse_verdict` (ACCEPT/REVISE as the first word);
  ``sakana``: :func:`sakana_accepts` (``fugu`` ``Task._parse_verification_response``).
* :func:`read_suggestion` — ``elixir-port``: :func:`.suggestions.parse_suggestion` (last tag, our role
  names); ``sakana``: :func:`sakana_suggestion` (``fugu`` ``Task._parse_thinker_response``).
* :data:`VERIFIER_BEFORE_WORKER` — ``elixir-port``: run it as a Worker; ``sakana``: end the run, no call
  (``Task.step_trinity`` returns done with reward 0).
* :func:`choose` — ``argmax`` (:func:`schemas.routing.decide`) or ``sample``: agent, then role, each drawn
  from the softmax of its logits at ``temperature`` with a seeded ``random.Random`` (Sakana's
  ``step_trinity`` ``logits2id``: ``np.random.choice`` over the softmax, which is an inverse-CDF draw).

Example:
    >>> sakana_accepts("Verdict: ACCEPT")
    True
    >>> sakana_suggestion("<suggestion>check</suggestion><suggested_role>solver</suggested_role>")
    Suggestion(raw='solver', role=<Role.WORKER: 0>)
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

import msgspec

from actors.coordinator.suggestions import Suggestion, parse_suggestion
from actors.coordinator.verdict import EXCERPT_CHARS, ParsedVerdict, parse_verdict
from schemas import fugu
from schemas.common import Message, Role
from schemas.coordination import Verdict
from schemas.fingerprint import route_hash
from schemas.profiles import ELIXIR_PORT, SAKANA, check_routing_profile
from schemas.roles import TranscriptEntry
from schemas.routing import RouteDecision, RouteLogits, decide
from schemas.sakana import RuntimeProfile

#: What a Verifier chosen before any Worker reply does, per profile (``worker``: runs as a Worker; ``end``:
#: the run ends with no call).
VERIFIER_BEFORE_WORKER: dict[str, str] = {ELIXIR_PORT: "worker", SAKANA: "end"}
#: The decision rule a profile uses unless the deployment says otherwise.
DEFAULT_RULE: dict[str, str] = {ELIXIR_PORT: "argmax", SAKANA: "sample"}
#: The role pack a profile asks the injector for unless the deployment names one (``None``: the injector's
#: default); ``sakana-fugu/1`` holds Sakana's own agent prompts (``actors/role_injector/fugu.py``).
DEFAULT_ROLE_PACK: dict[str, str | None] = {ELIXIR_PORT: None, SAKANA: "sakana-fugu/1"}
#: Sakana's role names of ``<suggested_role>`` (``Task._parse_thinker_response`` accepts these two only).
SAKANA_SUGGESTED_ROLES: dict[str, Role] = {"solver": Role.WORKER, "verifier": Role.VERIFIER}
_SAKANA_ROLE_TAG = re.compile(r"<suggested_role>(.*?)</suggested_role>", re.DOTALL)
_SAKANA_SUGGESTION_TAG = re.compile(r"<suggestion>(.*?)</suggestion>", re.DOTALL)


def observation(profile: str, query: str, history: Sequence[TranscriptEntry]) -> list[Message]:
    """The messages the router reads this turn: the query as ``user``, then replies as ``assistant``.

    ``elixir-port``: every reply, in order. ``sakana``: only the Worker replies.
    """
    check_routing_profile(profile)
    keep = [h for h in history if profile == ELIXIR_PORT or h.role is Role.WORKER]
    return [Message(role="user", content=query), *(Message(role="assistant", content=h.content) for h in keep)]


def sakana_accepts(text: str) -> bool:
    """Sakana's verdict rule: a reply starting with "accept" accepts, one starting with "reject" rejects;
    otherwise it accepts when it contains "accept" and not "reject" (all ignoring case); unclear rejects."""
    low = text.lower().strip()
    if low.startswith("accept"):
        return True
    if low.startswith("reject"):
        return False
    return "accept" in low and "reject" not in low


def read_verdict(profile: str, text: str) -> ParsedVerdict:
    """A Verifier reply read under ``profile``; ``parsed`` is False where the rule fell back to its default."""
    check_routing_profile(profile)
    if profile == ELIXIR_PORT:
        return parse_verdict(text)
    low = text.lower().strip()
    decisive = low.startswith(("accept", "reject")) or (("accept" in low) != ("reject" in low))
    verdict = Verdict.ACCEPT if sakana_accepts(text) else Verdict.REVISE
    return ParsedVerdict(verdict, decisive, text.strip()[:EXCERPT_CHARS])


def sakana_suggestion(text: str) -> Suggestion | None:
    """Sakana's Thinker rule (:func:`schemas.fugu.parse_thinker`, the one the role injector's ``fugu`` pack uses
    too): the first ``<suggested_role>`` tag, stripped, must be exactly ``solver`` or ``verifier`` and the reply
    must also hold a ``<suggestion>...</suggestion>`` tag; otherwise no suggestion applies. ``None`` when there is
    no role tag at all; a tag that does not apply comes back with role ``None`` (recorded as ignored)."""
    m = _SAKANA_ROLE_TAG.search(text)
    if m is None:
        return None
    raw = m.group(1).strip()
    role, _ = fugu.parse_thinker(text)
    if role is not None:
        return Suggestion(raw[:64], SAKANA_SUGGESTED_ROLES[role])
    has_suggestion = _SAKANA_SUGGESTION_TAG.search(text) is not None
    return Suggestion(raw[:64] if has_suggestion else f"{raw[:40]} (no <suggestion> tag)", None)


def read_suggestion(profile: str, text: str) -> Suggestion | None:
    """A Thinker reply's suggested role under ``profile`` (see the module docs)."""
    check_routing_profile(profile)
    return parse_suggestion(text) if profile == ELIXIR_PORT else sakana_suggestion(text)


def softmax_draw(values: Sequence[float], allowed: Sequence[int], temperature: float, u: float) -> int:
    """The index of ``allowed`` an inverse-CDF draw ``u`` in [0, 1) picks from ``softmax(values / T)``."""
    xs = [values[i] / temperature for i in allowed]
    top = max(xs)
    weights = [math.exp(x - top) for x in xs]
    total = sum(weights)
    acc = 0.0
    for i, w in zip(allowed, weights, strict=True):
        acc += w / total
        if u < acc:
            return i
    return allowed[-1]


def choose(logits: RouteLogits, floors: RuntimeProfile, mask: Sequence[int] | None, *, profile: str,
           rule: str = "argmax", temperature: float = 1.0, rng: random.Random | None = None) -> RouteDecision:
    """The turn's decision: :func:`schemas.routing.decide` (``argmax``), or a seeded softmax sample.

    A sample draws the agent (among the allowed ones), then the role, one ``rng.random()`` each; margins and
    confidence stay those of the logits. The decision records ``profile`` and the rule.

    Raises:
        SchemaError / ValueError: logits or mask it cannot interpret.
    """
    check_routing_profile(profile)
    decision = decide(logits, floors, mask)
    decision = msgspec.structs.replace(decision, routing_profile=profile)
    if rule == "argmax":
        return decision
    if rule != "sample" or rng is None or not temperature > 0:
        raise ValueError(f"rule {rule!r} needs rule 'argmax' or 'sample' with an rng and temperature > 0")
    allowed = sorted(decision.agent_ranking)
    agent = softmax_draw(logits.agent_logits, allowed, temperature, rng.random())
    role = softmax_draw(logits.role_logits, [0, 1, 2], temperature, rng.random())
    ranking = [agent, *(a for a in decision.agent_ranking if a != agent)]
    return msgspec.structs.replace(decision, agent_id=agent, role=Role(role), agent_ranking=ranking,
                                   route_hash=route_hash(agent, role, logits.logits), rule="sample",
                                   temperature=temperature)


__all__ = [
    "DEFAULT_ROLE_PACK",
    "DEFAULT_RULE",
    "SAKANA_SUGGESTED_ROLES",
    "VERIFIER_BEFORE_WORKER",
    "choose",
    "observation",
    "read_suggestion",
    "read_verdict",
    "sakana_accepts",
    "sakana_suggestion",
    "softmax_draw",
]
