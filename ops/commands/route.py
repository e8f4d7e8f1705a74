"""``run.py route``: route one transcript in-process and print the decision (agent, role, logits, margins, hash)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import msgspec

from ops.commands import CommandError, UsageError
from ops.commands._common import (
    add_router_flags,
    check_router_flags,
    existing_file,
    load_cli_router,
    vector_routing_profile,
    with_routing_profile,
)

NAME = "route"
HELP = "route a transcript (JSON file) or a --prompt in-process and print the decision"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``route``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--transcript", metavar="FILE", help='JSON: [{"role", "content"}, ...] or {"messages": [...]}')
    src.add_argument("--prompt", help="a single user message")
    p.add_argument("--agents", metavar="0,1,..", help="agent mask: only these agent ids may be chosen")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.add_argument("--routing-profile", choices=["elixir-port", "sakana"],
                   help="routing profile to route under (default: sakana for the real vector sakana_model_iter_60.npy, "
                        "else model_runtime.routing_profile); the transcript is read as that profile's router input")
    add_router_flags(p)


def _messages(args: argparse.Namespace) -> list[Any]:
    from schemas.common import Message

    if args.prompt is not None:
        if not args.prompt.strip():
            raise UsageError("--prompt is empty")
        return [Message("user", args.prompt)]
    path = existing_file(args.transcript, "--transcript")
    assert path is not None
    try:
        raw = json.loads(path.read_text())
        items = raw["messages"] if isinstance(raw, dict) else raw
        messages = msgspec.convert(items, list[Message])
    except (json.JSONDecodeError, KeyError, TypeError, msgspec.ValidationError) as e:
        raise UsageError(f"--transcript {path}: expected a list of {{role, content}} messages "
                         f"(or {{\"messages\": [...]}}): {e}") from None
    if not messages:
        raise UsageError(f"--transcript {path}: no messages")
    return messages


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Route and print; exit 1 when the transcript cannot be routed."""
    import asyncio

    from actors.model_runtime.errors import ModelRuntimeError
    from schemas.routing import decide
    from schemas.sakana import RuntimeProfile

    check_router_flags(args)
    messages = _messages(args)
    mask = None
    if args.agents:
        try:
            mask = [int(a) for a in args.agents.split(",") if a.strip()]
        except ValueError:
            raise UsageError(f"--agents {args.agents!r}: expected comma-separated agent ids") from None
    routing = args.routing_profile or vector_routing_profile(args.vector) or settings.model_runtime.routing_profile
    settings = with_routing_profile(settings, routing)
    router = await asyncio.to_thread(load_cli_router, args, settings, "route")
    try:
        logits = await asyncio.to_thread(router, messages)
        decision = decide(logits, RuntimeProfile(name=settings.model_runtime.profile), mask)
    except (ModelRuntimeError, ValueError) as e:
        raise CommandError(f"cannot route: {e}") from None
    out = {"agent_id": decision.agent_id, "role": decision.role.name.lower(), "role_id": int(decision.role),
           "agent_margin": decision.agent_margin, "role_margin": decision.role_margin,
           "confidence": decision.confidence.value, "route_hash": decision.route_hash,
           "agent_logits": decision.agent_logits, "role_logits": decision.role_logits,
           "agent_ranking": decision.agent_ranking, "token_count": logits.token_count,
           "transcript_hash": logits.transcript_hash, "routing_profile": logits.routing_profile,
           "source": router.source}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"agent {decision.agent_id}, role {out['role']} (confidence {out['confidence']})")
        print(f"margins: agent {decision.agent_margin:.4f}, role {decision.role_margin:.4f}")
        print("agent logits: " + ", ".join(f"{v:.4f}" for v in decision.agent_logits))
        print("role logits (worker, thinker, verifier): " + ", ".join(f"{v:.4f}" for v in decision.role_logits))
        print(f"route hash {decision.route_hash}  tokens {logits.token_count}  "
              f"routing profile {logits.routing_profile}")
        if router.source.get("synthetic") == "true":
            print("note: synthetic (random-weight) checkpoint: the decision is deterministic but meaningless")
    return 0
