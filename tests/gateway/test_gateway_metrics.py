"""Every gateway request shows in the gateway's ``$SRV.STATS`` (its ``chat_completions`` work endpoint, timed
to the last byte, streams included), in the coordinator's ``jobs`` endpoint, and in the Prometheus metrics."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from nats.aio.client import Client
from openai import AsyncOpenAI
from prometheus_client import REGISTRY

from actors.gateway.actor import SERVICE_NAME
from bus.embedded import NatsServerProcess
from config.coordinator import CoordinatorSettings
from config.gateway import GatewaySettings
from config.secrets import Secret
from tests.gateway.support import gateway_node

KEY = "sk-gateway-metrics-key"
SLOW_S = 0.3
CHAT = "/v1/chat/completions"


async def _endpoint(nc: Client, service: str, name: str) -> dict[str, Any]:
    data = json.loads((await nc.request(f"$SRV.STATS.{service}", b"", timeout=2)).data)
    return {e["name"]: e for e in data["endpoints"]}[name]  # type: ignore[no-any-return]


def _http(status: int) -> float:
    return REGISTRY.get_sample_value("trinity_gateway_http_requests_total", {"route": CHAT, "status": str(status)}) \
        or 0.0


async def test_every_completion_is_counted_and_timed(fresh_nats_server: NatsServerProcess) -> None:
    ok_before, unauth_before = _http(200), _http(401)
    async with gateway_node(fresh_nats_server.url, GatewaySettings(port=0, api_keys=[Secret(KEY)]),
                            slow_agents={1: SLOW_S}) as run:
        client = AsyncOpenAI(base_url=run.base_url, api_key=KEY, max_retries=0, timeout=60.0)
        for _ in range(2):
            done = await client.chat.completions.create(model="trinity", messages=[{"role": "user", "content": "q"}])
            assert done.choices[0].message.content == "42"
        stream = await client.chat.completions.create(model="trinity", stream=True,
                                                      messages=[{"role": "user", "content": "q"}])
        assert "42" in "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        bad = AsyncOpenAI(base_url=run.base_url, api_key="sk-wrong", max_retries=0, timeout=60.0)
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="trinity", messages=[{"role": "user", "content": "q"}])

        chat = await _endpoint(run.client, SERVICE_NAME, "chat_completions")
        assert chat["num_requests"] == 4 and chat["num_errors"] == 1 and chat["last_error"] == "http_401"
        assert chat["subject"] == f"http://127.0.0.1:{run.gateway.port}{CHAT}"
        assert chat["processing_time"] >= 3 * SLOW_S * 1e9  # each answered completion waited for the slow Worker
        jobs = await _endpoint(run.client, CoordinatorSettings().service_name, "jobs")
        assert jobs["num_requests"] == 3 and jobs["num_errors"] == 0
        assert _http(200) - ok_before == 3 and _http(401) - unauth_before == 1
