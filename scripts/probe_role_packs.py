"""Probe how well a small local model follows the role packs: real pack, real builder, real SmolLM2.

Sends 20 Verifier prompts (10 simple questions, each once with a correct and once with a wrong Worker answer)
and 10 Worker/Thinker prompts through the role injector's pack and message builder into the in-process
SmolLM2-135M-Instruct, and prints:

* verdict parse rate (the coordinator's :func:`~actors.coordinator.verdict.parse_verdict` read a verdict),
* ACCEPT on correct answers and REVISE on wrong ones,
* replies that echo the bookkeeping tag (``[turn 2 | Verifier | agent 2]``),
* Thinker replies with a ``<suggested_role>`` the coordinator can read, Worker replies holding the answer.

Run from the repository root (``--pack`` picks a pack id the registry holds; default: the registry's default)::

    python scripts/probe_role_packs.py
    python scripts/probe_role_packs.py --pack trinity-default/1 --max-tokens 128

Greedy decoding (temperature 0), so a run is repeatable on the same machine.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the checkout you run it from (compare branches: run it from each root)

from actors.coordinator.suggestions import parse_suggestion
from actors.coordinator.verdict import parse_verdict
from actors.provider_agents.local_model import LocalModel
from actors.role_injector.builder import build_messages
from actors.role_injector.packs import PackRegistry
from config.provider_agents import LocalModelSettings
from schemas import Role, Verdict
from schemas.roles import RoleInjectRequest, TranscriptEntry

#: (question, expected answer substring, correct Worker reply, wrong Worker reply)
CASES: list[tuple[str, str, str, str]] = [
    ("What is 17 + 25?", "42", "17 + 25 = 42.", "17 + 25 = 32."),
    ("What is the capital of France?", "Paris", "The capital of France is Paris.", "The capital of France is Lyon."),
    ("What is 6 times 7?", "42", "6 times 7 is 42.", "6 times 7 is 36."),
    ("How many days are in a week?", "7", "A week has 7 days.", "A week has 5 days."),
    ("What is the largest planet in our solar system?", "Jupiter", "Jupiter is the largest planet.",
     "Mars is the largest planet."),
    ("What is 100 minus 58?", "42", "100 - 58 = 42.", "100 - 58 = 48."),
    ("What colour do you get by mixing blue and yellow?", "green", "Mixing blue and yellow gives green.",
     "Mixing blue and yellow gives purple."),
    ("What is the capital of Japan?", "Tokyo", "The capital of Japan is Tokyo.", "The capital of Japan is Beijing."),
    ("How many legs does a spider have?", "8", "A spider has 8 legs.", "A spider has 6 legs."),
    ("What is 9 squared?", "81", "9 squared is 81.", "9 squared is 72."),
]
THINKER_PLAN = "The question asks for one fact. Recall it and state it in one sentence."
#: The bookkeeping a reply must never repeat: the old header ``[turn N | Role | agent N]`` or parts of it.
TAG_ECHO = re.compile(r"\[\s*turn\s*\d+|\|\s*agent\s*\d+|\bagent\s+\d+\s*\]", re.IGNORECASE)


def _request(role: Role, query: str, history: list[TranscriptEntry], pack: str | None) -> RoleInjectRequest:
    return RoleInjectRequest(request_id="probe", turn=len(history), agent_id=2, role=role, query=query,
                             history=history, role_pack=pack)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pack", default=None, help="role pack id (default: the registry's default pack)")
    ap.add_argument("--pack-file", action="append", default=[], help="extra pack file (.toml/.json) to load")
    ap.add_argument("--max-tokens", type=int, default=128, help="completion cap per reply (offline agents: 256)")
    ap.add_argument("--show", action="store_true", help="print every reply")
    args = ap.parse_args()

    registry = PackRegistry.from_files(args.pack_file)
    pack = registry.resolve(args.pack)
    model = LocalModel(LocalModelSettings())
    model.load()

    def ask(req: RoleInjectRequest) -> str:
        msgs = build_messages(pack, req)
        return model.generate(msgs, max_tokens=args.max_tokens, temperature=0.0, seed=None, stop=[]).content

    t0 = time.perf_counter()
    replies: list[tuple[str, str]] = []
    parsed = accept_ok = revise_ok = 0
    for i, (query, _, good, bad) in enumerate(CASES):
        for correct, answer in ((True, good), (False, bad)):
            history = [TranscriptEntry(turn=0, agent_id=4, role=Role.WORKER, content=answer)]
            if i % 2:  # half the runs had a Thinker turn first
                history.insert(0, TranscriptEntry(turn=0, agent_id=3, role=Role.THINKER, content=THINKER_PLAN))
                history[1] = TranscriptEntry(turn=1, agent_id=4, role=Role.WORKER, content=answer)
            reply = ask(_request(Role.VERIFIER, query, history, pack.pack_id))
            replies.append((f"verifier {'correct' if correct else 'wrong'}: {query}", reply))
            v = parse_verdict(reply)
            parsed += v.parsed
            if correct:
                accept_ok += v.parsed and v.verdict is Verdict.ACCEPT
            else:
                revise_ok += v.parsed and v.verdict is Verdict.REVISE
    suggestions = answered = 0
    for i, (query, expected, good, _) in enumerate(CASES):
        if i < 5:
            history = [TranscriptEntry(turn=0, agent_id=3, role=Role.THINKER, content=THINKER_PLAN)]
            reply = ask(_request(Role.WORKER, query, history, pack.pack_id))
            answered += expected.lower() in reply.lower()
            replies.append((f"worker: {query}", reply))
        else:
            history = [TranscriptEntry(turn=0, agent_id=4, role=Role.WORKER, content=good)]
            reply = ask(_request(Role.THINKER, query, history, pack.pack_id))
            s = parse_suggestion(reply)
            suggestions += s is not None and s.role is not None
            replies.append((f"thinker: {query}", reply))
    echoes = [(what, r) for what, r in replies if TAG_ECHO.search(r)]
    if args.show:
        for what, r in replies:
            print(f"--- {what}\n{r}")
    n = len(CASES)
    print(f"pack {pack.pack_id}, max_tokens {args.max_tokens}, {len(replies)} replies in "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"verdict parsed:        {parsed}/{2 * n} ({100 * parsed / (2 * n):.0f}%)")
    print(f"ACCEPT on correct:     {accept_ok}/{n}")
    print(f"REVISE on wrong:       {revise_ok}/{n}")
    print(f"tag echoes:            {len(echoes)}/{len(replies)}")
    print(f"thinker suggestion:    {suggestions}/5 parsed to a role")
    print(f"worker answer correct: {answered}/5")
    for what, r in echoes[:3]:
        print(f"  echo in {what}: {r[:100]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
