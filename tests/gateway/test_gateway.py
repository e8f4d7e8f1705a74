"""The OpenAI-compatible gateway, exercised with the official ``openai`` client against a running node (gateway,
coordinator, role injector under ``ops.node.Node``) on a real nats-server, with scripted fake runtime and agents."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from bus.embedded import NatsServerProcess
from config.gateway import GatewaySettings
from config.secrets import Secret
from ops.client import wait_job
from schemas import Role, RunStatus, StopReason
from tests.gateway.support import COST, TOKENS, gateway_node

KEY = "sk-gateway-test-key-1"


def _client(base_url: str, key: str = KEY) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60.0)


async def test_non_streaming_answer_usage_and_request_id(fresh_nats_server: NatsServerProcess) -> None:
    async with gateway_node(fresh_nats_server.url, GatewaySettings(port=0, api_keys=[Secret(KEY)])) as run:
        client = _client(run.base_url)
        models = await client.models.list()
        assert [m.id for m in models.data] == ["trinity", "trinity:base"]

        raw = await client.chat.completions.with_raw_response.create(
            model="trinity", messages=[{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "What is 17 + 25?"}])
        completion = raw.parse()
        rid = raw.headers["x-trinity-request-id"]
        assert completion.id == f"chatcmpl-{rid}"
        assert completion.object == "chat.completion" and completion.model == "trinity"
        assert completion.choices[0].message.content == "42"
        assert completion.choices[0].finish_reason == "stop"
        # two agent calls (Worker, Verifier), each 7 prompt + 3 completion tokens and $0.01
        assert completion.usage is not None
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) \
            == (2 * TOKENS[0], 2 * TOKENS[1], 2 * sum(TOKENS))
        assert completion.usage.model_extra["cost_usd"] == pytest.approx(2 * COST)
        trinity = completion.model_extra["trinity"]
        assert (trinity["request_id"], trinity["stop_reason"], trinity["turns"], trinity["answer_turn"]) == \
            (rid, "accepted", 2, 0)
        assert [(a["agent_id"], a["role"]) for a in trinity["agents"]] == [(1, "worker"), (2, "verifier")]

        # the run went through the durable work queue: its result is stored under the request id
        stored = await wait_job(run.client, rid, timeout=0)
        assert (stored.status, stored.answer, stored.stop_reason) == (RunStatus.OK, "42", StopReason.ACCEPTED)
        # the system message and the question became the query the agents saw
        assert any("Be brief.\n\nWhat is 17 + 25?" in m.content for c in run.world.calls if c.request_id == rid
                   for m in c.messages)


async def test_streaming_one_chunk_per_turn_then_answer_then_done(fresh_nats_server: NatsServerProcess) -> None:
    async with gateway_node(fresh_nats_server.url, GatewaySettings(port=0, api_keys=[Secret(KEY)])) as run:
        client = _client(run.base_url)
        stream = await client.chat.completions.create(
            model="trinity", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "What is 17 + 25?"}])
        chunks = [c async for c in stream]
        rid = chunks[0].id.removeprefix("chatcmpl-")
        assert all(c.id == f"chatcmpl-{rid}" and c.object == "chat.completion.chunk" for c in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        turns = [c.model_extra["trinity"]["turn"] for c in chunks if (c.model_extra.get("trinity") or {})
                 .get("event") == "turn"]
        assert [(t["turn"], t["agent_id"], t["role"], t.get("verdict")) for t in turns] == \
            [(0, 1, "worker", None), (1, 2, "verifier", "accept")]
        assert [t["prompt_tokens"] for t in turns] == [TOKENS[0], TOKENS[0]]
        reasoning = [c.choices[0].delta.model_extra.get("reasoning_content") for c in chunks if c.choices]
        assert [r for r in reasoning if r] == ["turn 0: agent 1 (fake/fake-1) as Worker\n",
                                               "turn 1: agent 2 (fake/fake-1) as Verifier, verdict ACCEPT\n"]
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert content == "42"
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens == 2 * sum(TOKENS)
        # the earlier turns were prepended as context
        assert any("Conversation so far:\nuser: Hi\nassistant: Hello!\n\nWhat is 17 + 25?" in m.content
                   for c in run.world.calls if c.request_id == rid for m in c.messages)

        # the raw SSE ends with data: [DONE]
        async with httpx.AsyncClient(timeout=60.0) as http:
            r = await http.post(f"{run.base_url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                                json={"model": "trinity", "stream": True,
                                      "messages": [{"role": "user", "content": "q"}]})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = [line.removeprefix("data: ") for line in r.text.split("\n\n") if line]
            assert events[-1] == "[DONE]"
            kinds = [(json.loads(e).get("trinity") or {}).get("event") for e in events[:-1]]
            assert kinds.count("turn") == 2


async def test_errors_in_openai_shape_through_the_client(fresh_nats_server: NatsServerProcess) -> None:
    async with gateway_node(fresh_nats_server.url, GatewaySettings(port=0, api_keys=[Secret(KEY)])) as run:
        with pytest.raises(openai.AuthenticationError) as auth:
            await _client(run.base_url, key="sk-wrong-key").chat.completions.create(
                model="trinity", messages=[{"role": "user", "content": "q"}])
        assert auth.value.status_code == 401 and auth.value.code == "invalid_api_key"
        client = _client(run.base_url)
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "q"}])
        assert bad.value.code == "model_not_found" and bad.value.param == "model"
        assert "trinity" in bad.value.message
        with pytest.raises(openai.BadRequestError) as empty:
            await client.chat.completions.create(model="trinity", messages=[])
        assert empty.value.code == "empty_messages"
        with pytest.raises(openai.BadRequestError) as turns:
            await client.chat.completions.create(model="trinity", messages=[{"role": "user", "content": "q"}],
                                                 extra_body={"max_turns": 0})
        assert turns.value.code == "invalid_max_turns" and turns.value.param == "max_turns"
        async with httpx.AsyncClient(timeout=30.0) as http:
            r = await http.get(f"{run.base_url}/nope", headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_route"
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            r = await http.post(f"{run.base_url}/chat/completions", content=b"{not json",
                                headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
            r = await http.get(f"{run.base_url}/models")
            assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        # a run that ends without any Worker reply: 422 with the stop reason as the code, and the request id
        run.world.route_plan = lambda turn: (3, Role.THINKER)
        with pytest.raises(openai.UnprocessableEntityError) as none:
            await client.chat.completions.create(model="trinity", messages=[{"role": "user", "content": "q"}],
                                                 extra_body={"max_turns": 1})
        assert none.value.code == "max_turns" and none.value.response.headers["x-trinity-request-id"]


async def test_429_with_retry_after_over_max_concurrency(fresh_nats_server: NatsServerProcess) -> None:
    settings = GatewaySettings(port=0, max_concurrency=1, retry_after_s=3)
    async with gateway_node(fresh_nats_server.url, settings, slow_agents={1: 1.5}) as run:
        client = _client(run.base_url, key="unused")  # no api_keys: the gateway is open
        first = asyncio.create_task(client.chat.completions.create(
            model="trinity", messages=[{"role": "user", "content": "slow one"}]))
        for _ in range(600):  # hang guard only
            if run.gateway.in_flight == 1:
                break
            await asyncio.sleep(0.01)
        assert run.gateway.in_flight == 1
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="trinity", messages=[{"role": "user", "content": "q"}])
        assert limited.value.response.headers["retry-after"] == "3"
        assert limited.value.code == "too_many_requests"
        assert (await first).choices[0].message.content == "42"
        assert run.gateway.in_flight == 0
        ok = await client.chat.completions.create(model="trinity", messages=[{"role": "user", "content": "q"}])
        assert ok.choices[0].message.content == "42"


async def test_drain_finishes_the_request_in_flight(fresh_nats_server: NatsServerProcess) -> None:
    async with gateway_node(fresh_nats_server.url, slow_agents={1: 1.0}) as run:
        client = _client(run.base_url, key="unused")
        gw = run.gateway
        first = asyncio.create_task(client.chat.completions.create(
            model="trinity", messages=[{"role": "user", "content": "slow one"}]))
        for _ in range(600):  # hang guard only
            if gw.in_flight == 1:
                break
            await asyncio.sleep(0.01)
        await gw.drain(timeout=10.0)
        assert (await first).choices[0].message.content == "42"
        with pytest.raises(openai.APIConnectionError):  # the port is closed
            await client.chat.completions.create(model="trinity", messages=[{"role": "user", "content": "q"}])


async def test_an_idle_connection_outlives_the_clients_keep_alive(fresh_nats_server: NatsServerProcess) -> None:
    """The server keeps an idle connection longer than httpx's (and the openai client's) 5 s keep-alive expiry:
    with equal timeouts a client may reuse a connection the server is closing, and the request dies with
    ``ReadError`` (seen as 5-16 lost of 1,000 concurrent streams in scripts/bench_gateway.py)."""
    assert httpx.Limits().keepalive_expiry == 5.0
    async with gateway_node(fresh_nats_server.url, GatewaySettings(port=0)) as run:
        reader, writer = await asyncio.open_connection("127.0.0.1", run.gateway.port)
        request = b"GET /v1/models HTTP/1.1\r\nhost: gateway\r\n\r\n"
        try:
            for _ in range(2):
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                await asyncio.sleep(5.5)  # idle past the client's expiry: the server must not have closed it
            assert not reader.at_eof()
        finally:
            writer.close()
