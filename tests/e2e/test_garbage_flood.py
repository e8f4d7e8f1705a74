"""Garbage flood: every public subject of a running node gets garbage (random bytes, wrong types, oversized
payloads, broken invariants, unknown agents, invalid budgets), each garbage request gets a typed error reply,
and then a normal request still runs.

Real actors over a real nats-server: coordinator (request/reply and work queue), role injector, model runtime
(tiny synthetic Qwen3 checkpoint, real tokenizer) and provider agents (OpenAI-compatible provider on a
loopback HTTP server).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from actors.coordinator.actor import CoordinatorActor
from actors.provider_agents.actor import ProviderAgentsActor
from actors.role_injector.actor import RoleInjectorActor
from bus import subjects
from bus.codec import peek_request_id
from bus.embedded import NatsServerProcess
from bus.errors import RemoteError
from bus.jetstream import MSG_ID_HEADER
from bus.rpc import error_from_msg
from config.coordinator import CoordinatorSettings
from config.model_runtime import ModelRuntimeSettings
from config.provider_agents import AgentSpec, ProviderAgentsSettings, ProviderKind, ProviderSettings, RetrySettings
from config.secrets import Secret
from ops.client import build_request, stored_result, submit, submit_job
from schemas import ErrorCode, RunStatus
from schemas.wire import ErrorReply
from tests.provider_agents.loopback import LoopbackServer, Reply

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RUNTIME_ID = "rt-flood"
OPENAI_REPLY = {"choices": [{"message": {"role": "assistant", "content": "ACCEPT: 42"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
TYPED = set(ErrorCode)


def garbage(valid: dict[str, Any], rng: random.Random) -> list[bytes]:
    """Garbage for one subject: random bytes, not-JSON, invalid UTF-8 in a string, wrong JSON types, wrong field
    types, unknown fields, and an oversized payload (6 MB: over every endpoint's limit, under the server's 8 MB
    max_payload)."""
    wrong_types = {k: ([] if isinstance(v, str) else "x") for k, v in valid.items()}
    first = next(iter(valid))
    bad_utf8 = [json.dumps({**valid, first: "@@"}).encode().replace(b'"@@"', b'"' + raw + b'"')
                for raw in (b"\xff\xfe", b"ok\xed\xa0\x80", b"\xc3\x28")]  # invalid UTF-8 inside a string
    return [
        *bad_utf8,
        os.urandom(rng.randint(1, 512)), b"", b"{", b"null", b"[]", b"42", b'"a string"', b"\xff\xfe\x00",
        json.dumps(wrong_types).encode(), json.dumps({**valid, "unexpected_field": 1}).encode(),
        json.dumps({k: v for i, (k, v) in enumerate(valid.items()) if i}).encode(),  # a required field missing
        b'{"request_id": "' + b"x" * (6 * 1024 * 1024) + b'"}',
    ]


@pytest.fixture
async def node(fresh_nats_server: NatsServerProcess, tmp_path: Path) -> AsyncIterator[tuple[Client, dict[str, Any]]]:
    from actors.model_runtime.actor import ModelRuntimeActor
    from actors.model_runtime.checkpoints import build_checkpoint, qwen3_tiny_config
    from actors.model_runtime.engine import RouterEngine
    from actors.model_runtime.tokenizer import RouterTokenizer

    url = fresh_nats_server.url
    nc = await nats.connect(url, name="flood-actors")
    async with LoopbackServer() as http:
        http.script(Reply(200, OPENAI_REPLY))
        providers = ProviderAgentsSettings(
            providers=[ProviderSettings(name="loop", kind=ProviderKind.OPENAI, base_url=http.url + "/v1",
                                        api_key=Secret("sk-flood-0123456789"),
                                        retry=RetrySettings(max_attempts=1))],
            agents=[AgentSpec(agent_id=i, name=f"loop-{i}", provider="loop", model="m") for i in range(7)])
        ckpt = build_checkpoint(tmp_path / "tiny", qwen3_tiny_config(), seed=7, preset="qwen3-tiny-synthetic")
        rt_settings = ModelRuntimeSettings(runtime_id=RUNTIME_ID, num_threads=None)
        engine = await asyncio.to_thread(RouterEngine.load, rt_settings, checkpoint_dir=ckpt,
                                         tokenizer=RouterTokenizer.load())
        actors: dict[str, Any] = {
            "runtime": ModelRuntimeActor(nc, rt_settings, engine=engine),
            "agents": ProviderAgentsActor(nc, providers),
            "injector": RoleInjectorActor(nc),
            "coordinator": CoordinatorActor(nc, CoordinatorSettings(route_timeout_s=10.0, agent_timeout_s=10.0)),
        }
        for a in actors.values():
            await a.start()
        try:
            yield nc, actors
        finally:
            for a in reversed(list(actors.values())):
                await a.drain(timeout=2.0)
            await nc.close()


async def _flood(nc: Client, subject: str, payloads: list[bytes]) -> list[ErrorReply]:
    async def one(data: bytes) -> ErrorReply:
        msg = await nc.request(subject, data, timeout=10.0)
        err = error_from_msg(msg)
        assert err is not None, f"{subject}: garbage {data[:40]!r} got a normal reply {msg.data[:200]!r}"
        return err

    return list(await asyncio.gather(*(one(p) for p in payloads)))


async def test_garbage_on_every_subject_gets_typed_errors_then_a_normal_request_runs(
        node: tuple[Client, dict[str, Any]], fresh_nats_server: NatsServerProcess) -> None:
    _nc, actors = node
    client = await nats.connect(fresh_nats_server.url, name="flood-client")
    rng = random.Random(9)
    msg = {"role": "user", "content": "hi"}
    valid = {
        subjects.coord_request(): {"request_id": "g1", "query": "q"},
        subjects.role_inject(): {"request_id": "g1", "turn": 0, "agent_id": 1, "role": 0, "query": "q"},
        subjects.route("torch", "base"): {"request_id": "g1", "turn": 0, "messages": [msg]},
        subjects.agent_call(1): {"request_id": "g1", "turn": 0, "agent_id": 1, "role": 0, "messages": [msg]},
        subjects.runtime_control(RUNTIME_ID): {"op": "ensure"},
    }
    # broken invariants and semantic garbage the contracts refuse, per subject
    semantic = {
        subjects.coord_request(): [
            {"request_id": "g2", "query": "q", "budget": {"max_turns": 0}},           # invalid budget
            {"request_id": "g3", "query": "q", "budget": {"deadline_ms": -5}},        # invalid budget
            {"request_id": "g4", "query": "q", "budget": {"max_cost_usd": -1.0}},     # invalid budget
            {"request_id": "g5", "query": "   "},                                    # empty query
            {"request_id": "g6", "query": "q", "agent_mask": [-1]},                  # impossible agent id
            {"request_id": "bad id with spaces", "query": "q"},
            {"request_id": "g7", "query": "x" * 300_000},                            # oversized transcript
        ],
        subjects.role_inject(): [{"request_id": "g1", "turn": 0, "agent_id": 1, "role": 9, "query": "q"}],
        subjects.route("torch", "base"): [{"request_id": "g1", "turn": -1, "messages": [msg]},
                                          {"request_id": "g1", "turn": 0, "messages": []}],
        subjects.agent_call(1): [
            {"request_id": "g1", "turn": 0, "agent_id": 99, "role": 0, "messages": [msg]},  # unknown agent
            {"request_id": "g1", "turn": 0, "agent_id": 1, "role": 0, "messages": []},
            {"request_id": "g1", "turn": 0, "agent_id": 1, "role": 0, "messages": [msg], "max_tokens": 0},
        ],
        subjects.runtime_control(RUNTIME_ID): [{"op": "explode"}],
    }
    try:
        codes: dict[str, list[ErrorCode]] = {}
        for subject, v in valid.items():
            payloads = garbage(v, rng) + [json.dumps(s).encode() for s in semantic[subject]]
            replies = await _flood(client, subject, payloads * 3)  # each one three times, all at once
            assert all(r.code in TYPED and r.message for r in replies)
            codes[subject] = [r.code for r in replies]
            assert ErrorCode.TOO_LARGE in codes[subject], subject
            assert ErrorCode.MALFORMED in codes[subject], subject
        # an unknown agent on a known agent's subject is named as such
        assert ErrorCode.UNKNOWN_AGENT in codes[subjects.agent_call(1)]

        # the work queue: each garbage job gets a typed error result stored under its id (Nats-Msg-Id), unless
        # its (readable) body names another request id: then nothing is stored, it must not answer for another id
        js = client.jetstream()
        jobs = garbage(valid[subjects.coord_request()], rng) + [json.dumps(s).encode()
                                                                for s in semantic[subjects.coord_request()]]
        for i, data in enumerate(jobs):
            await js.publish(subjects.COORD_JOBS, data, headers={MSG_ID_HEADER: f"garbage-{i}"})
        await js.publish(subjects.COORD_JOBS, b"no id at all")  # no id to answer on: dropped and counted
        too_large = CoordinatorSettings().max_request_bytes
        answered = [i for i, data in enumerate(jobs) if len(data) > too_large or peek_request_id(data) is None]
        assert len(answered) >= 8
        job_codes = []
        for i in answered:
            for _ in range(200):
                try:
                    if await stored_result(client, f"garbage-{i}") is not None:
                        raise AssertionError(f"garbage job {i} produced a result")
                except RemoteError as e:
                    job_codes.append(e.code)
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"garbage job {i} got no error result")
        assert set(job_codes) <= TYPED and ErrorCode.MALFORMED in job_codes and ErrorCode.TOO_LARGE in job_codes
        coordinator: CoordinatorActor = actors["coordinator"]
        for _ in range(100):
            if coordinator.jobs.counters.malformed >= len(jobs) + 1:
                break
            await asyncio.sleep(0.05)
        assert coordinator.jobs.counters.malformed == len(jobs) + 1
        assert (await js.stream_info(subjects.JOBS_STREAM)).state.messages == 0
        for i in set(range(len(jobs))) - set(answered):
            assert await stored_result(client, f"garbage-{i}") is None  # its body named another id

        # every actor kept serving: a normal request runs, both ways
        for send, rid in ((submit, "after-flood-1"), (submit_job, "after-flood-2")):
            res = await send(client, build_request("What is 17 + 25?", request_id=rid, deadline_s=60.0),
                             timeout=60.0)
            assert res.status == RunStatus.OK and len(res.turns) >= 1, res
            assert all(t.receipt is not None and t.receipt.content == "ACCEPT: 42" for t in res.turns)
        stats = coordinator.service.stats()["coordinate"]
        assert stats["malformed"] > 0 and stats["too_large"] > 0 and stats["crashed"] == 0
        print(f"\ntyped error replies per subject: { {s: len(c) for s, c in codes.items()} }; jobs: {len(job_codes)}")
    finally:
        await client.close()

