"""Parity of the ``sakana`` routing profile with an independent re-implementation of Sakana's episode loop.

``SakanaEpisode`` below is written from ``fugu``'s ``Task.step_trinity``, ``Task._get_obs``,
``Task._format_router_messages``, ``Task._parse_thinker_response`` and ``Task._parse_verification_response``
(trinity mode, thinking tag ``idea``) and ``EvaluationManager.get_action``'s chat template call, without
using the project's rule code: its router text comes from transformers' ``apply_chat_template`` over the real
Qwen3 template. Scripted episodes (seeded logits and replies with ideas, suggestions and verdict phrasings)
run through both; the coordinator's router input text (formatted by the runtime's formatter), its routes,
stops and answers must equal the reference's, under argmax and under seeded sampling.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from actors.coordinator.state_machine import CallContext, Policy, coordinate
from actors.model_runtime.formatting import router_text
from actors.model_runtime.tokenizer import default_tokenizer_path
from schemas import Budget, CoordinationRequest, StopReason
from schemas.coordination import AgentCallIntent
from schemas.routing import RouteLogits, RouteRequest
from tests.coordinator.fakes import FakeWorld

N_AGENTS = 7
ROLE_NAMES = ["solver", "thinker", "verifier"]
SYSTEM = ("You are a message dispatcher whose job is to coordinate {num_agents} agents to solve a problem. "
          "You check the problem and the discussion history and then decide which agent should respond next. "
          "Your first generated token's hidden state will be used as signal for decision making.")


@pytest.fixture(scope="module")
def hf_tok():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(str(Path(default_tokenizer_path()).parent))


def pick(logits: np.ndarray, u: float | None) -> int:
    """argmax, or ``np.random.choice(p=softmax)`` as an inverse-CDF draw of ``u``."""
    if u is None:
        return int(np.argmax(logits))
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return int(min(np.searchsorted(np.cumsum(p), u, side="right"), len(p) - 1))


class SakanaEpisode:
    """Sakana's trinity episode state, re-implemented for the test."""

    def __init__(self, query: str, tok, max_turns: int = 5) -> None:  # type: ignore[no-untyped-def]
        self.user = query
        self.tok = tok
        self.max_turns = max_turns
        self.response: str | None = None
        self.suggested_role: str | None = None
        self.ref_id = 0
        self.num_turns = 0
        self.texts: list[str] = []
        self.routes: list[tuple[int, int]] = []

    def router_text(self) -> str:
        msgs = [{"role": "system", "content": SYSTEM.format(num_agents=N_AGENTS)},
                {"role": "user", "content": self.user}]
        return str(self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                                enable_thinking=False))

    def add_thought(self, response: str) -> None:
        if "<idea>" in response:
            m = re.search("<idea>(.*?)</idea>", response, re.DOTALL)
            thought = m.group(1).strip() if m else response.replace("<idea>", "").replace("</idea>", "")
        else:
            thought = response.replace("<idea>", "").replace("</idea>", "")
        if thought != "":
            tag = f"reference_thought_{self.ref_id}"
            self.user += "\n" + f"<{tag}>{thought}</{tag}>"
            self.ref_id += 1

    @staticmethod
    def parse_thinker(text: str) -> str | None:
        role = None
        if "<suggested_role>" in text:
            m = re.search(r"<suggested_role>(.*?)</suggested_role>", text, re.DOTALL)
            if m:
                role = m.group(1).strip()
                if role not in ("solver", "verifier"):
                    role = None
        suggestion = None
        if "<suggestion>" in text:
            m = re.search(r"<suggestion>(.*?)</suggestion>", text, re.DOTALL)
            suggestion = m.group(1).strip() if m else None
        return role if (role is not None and suggestion is not None) else None

    @staticmethod
    def accepted(text: str) -> bool:
        low = text.lower().strip()
        if low.startswith("accept"):
            return True
        if low.startswith("reject"):
            return False
        return "accept" in low and "reject" not in low

    def run(self, logits_of, reply_of, rng: random.Random | None) -> str:  # type: ignore[no-untyped-def]
        while True:
            text = self.router_text()
            logits = np.asarray(logits_of(self.num_turns), dtype=np.float64)
            agent = pick(logits[:-3], rng.random() if rng else None)
            role_id = pick(logits[-3:], rng.random() if rng else None)
            role = ROLE_NAMES[role_id]
            if self.suggested_role:
                role, self.suggested_role = self.suggested_role, None
                role_id = ROLE_NAMES.index(role)
            if self.num_turns >= self.max_turns:
                return "max_turns"
            if role == "verifier" and self.response is None:
                self.texts.append(text)
                return "verifier_before_worker"
            self.texts.append(text)
            self.routes.append((agent, role_id))
            reply = reply_of(agent, role_id, self.num_turns)
            if role_id == 0:
                self.response = reply
                self.add_thought(reply)
            elif role_id == 1:
                self.suggested_role = self.parse_thinker(reply)
            elif self.accepted(reply):
                return "accepted"
            self.num_turns += 1


WORKER_REPLIES = ["<idea>17 + 25 = 42</idea> The answer is 42.", "42", "Let me think. <idea>  carry the one </idea>",
                  "<idea></idea>", "<idea>unclosed reasoning, so 41", "  spaced  "]
THINKER_REPLIES = ["<suggestion>check it</suggestion>\n<suggested_role>verifier</suggested_role>",
                   "<suggestion>solve directly</suggestion><suggested_role> solver </suggested_role>",
                   "<suggested_role>solver</suggested_role>", "<suggestion>x</suggestion><suggested_role>worker"
                   "</suggested_role>", "no tags at all",
                   "<suggestion>a</suggestion><suggested_role>solver</suggested_role><suggested_role>verifier"
                   "</suggested_role>"]
VERIFIER_REPLIES = ["ACCEPT: correct", "REJECT: wrong", "I accept this", "Verdict: ACCEPT", "unclear",
                    "I accept. Actually reject.", "ACCEPTED", "**reject**"]


def episode(seed: int):  # type: ignore[no-untyped-def]
    rs = np.random.default_rng(seed)
    turns = [rs.normal(0.0, 1.5, N_AGENTS + 3) for _ in range(8)]
    picks = rs.integers(0, 1000, size=(8, 3))

    def logits_of(turn: int) -> list[float]:
        return [float(x) for x in turns[turn]]

    def reply_of(agent: int, role: int, turn: int) -> str:
        table = (WORKER_REPLIES, THINKER_REPLIES, VERIFIER_REPLIES)[role]
        return table[(int(picks[turn][role]) + agent) % len(table)]

    return logits_of, reply_of


STOPS = {"accepted": StopReason.ACCEPTED, "max_turns": StopReason.MAX_TURNS,
         "verifier_before_worker": StopReason.VERIFIER_BEFORE_WORKER}


@pytest.mark.parametrize("rule", ["argmax", "sample"])
async def test_sakana_profile_matches_the_reference_episode_loop(hf_tok, rule: str) -> None:  # type: ignore[no-untyped-def]
    stops: dict[str, int] = {}
    for seed in range(60):
        logits_of, reply_of = episode(seed)
        ref = SakanaEpisode("What is 17 + 25?", hf_tok)
        ref_stop = ref.run(logits_of, reply_of, random.Random(seed) if rule == "sample" else None)
        stops[ref_stop] = stops.get(ref_stop, 0) + 1

        texts: list[str] = []

        async def route(req: RouteRequest, ctx: CallContext, texts: list[str] = texts,
                        logits_of=logits_of) -> RouteLogits:  # type: ignore[no-untyped-def]
            texts.append(router_text(req.messages, "sakana", N_AGENTS))
            values = logits_of(req.turn)
            return RouteLogits(request_id=req.request_id, turn=req.turn, agent_logits=values[:N_AGENTS],
                               role_logits=values[N_AGENTS:], token_count=5, transcript_hash="0" * 64,
                               routing_profile="sakana")

        def reply(i: AgentCallIntent, reply_of=reply_of) -> str:  # type: ignore[no-untyped-def]
            return str(reply_of(i.agent_id, int(i.role), i.turn))

        world = FakeWorld(lambda t: (0, 0), reply)  # type: ignore[arg-type, return-value]
        world.route = route  # type: ignore[method-assign]
        policy = Policy(verifier_before_worker="end", routing_profile="sakana", route_rule=rule, route_seed=seed)
        res = await coordinate(CoordinationRequest(request_id=f"p{seed}", query="What is 17 + 25?",
                                                   budget=Budget(max_turns=5)), world.ports(), policy)
        called = [(t.assignment.agent_id, int(t.assignment.role)) for t in res.turns]
        assert called == ref.routes, seed
        assert texts == ref.texts, seed
        assert res.stop_reason is STOPS[ref_stop], seed
        assert res.answer == ref.response, seed
        assert len(world.calls) == len(ref.routes)
    assert len(stops) == 3, stops  # every kind of ending was exercised
