"""A node with ``node.metrics_port`` serves its process's Prometheus metrics over HTTP (scraped as Prometheus
would: text format, parsed), counting what its actors did; without the setting it opens no port."""

from __future__ import annotations

import asyncio

import httpx
import msgspec
import nats
from prometheus_client.parser import text_string_to_metric_families

from bus import rpc
from bus.embedded import NatsServerProcess
from config.nats import NatsSettings
from config.node import NodeSettings
from config.settings import Settings, load_settings
from ops.node import Node
from schemas import Message
from tests.ops.test_node import EchoActor


def _settings(url: str, metrics_port: int | None) -> Settings:
    return msgspec.structs.replace(load_settings(environ={}), nats=NatsSettings(servers=[url]),
                                   node=NodeSettings(actors=["coordinator"], node_id="tm", drain_timeout_s=5.0,
                                                     metrics_port=metrics_port))


async def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert resp.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


async def test_node_serves_metrics_of_what_its_actors_did(fresh_nats_server: NatsServerProcess) -> None:
    node = Node(_settings(fresh_nats_server.url, metrics_port=0), factories={"coordinator": EchoActor})
    await node.start()
    client = await nats.connect(fresh_nats_server.url)
    try:
        await asyncio.wait_for(node.wait_ready(), timeout=30)
        assert node.metrics_port is not None and node.metrics_port > 0
        before = await _scrape(node.metrics_port)
        key = ("trinity_endpoint_requests_total", (("endpoint", "echo"), ("outcome", "ok"), ("service", "node-echo")))
        for i in range(5):
            await rpc.request(client, "t.node.echo", Message(role="user", content=f"m{i}"), Message, timeout=2)
        after = await _scrape(node.metrics_port)
        assert after[key] - before.get(key, 0.0) == 5
        count = ("trinity_endpoint_seconds_count", (("endpoint", "echo"), ("service", "node-echo")))
        assert after[count] - before.get(count, 0.0) == 5
        assert after[("trinity_node_ready", ())] == 1.0
        assert after[("trinity_actor_serving", (("actor", "coordinator"),))] == 1.0
    finally:
        port = node.metrics_port
        await node.stop()
        await client.close()
    async with httpx.AsyncClient() as http:  # stopped with the node
        try:
            await http.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            raise AssertionError("the metrics endpoint still answers after the node stopped")
        except httpx.ConnectError:
            pass


async def test_metrics_are_off_by_default(fresh_nats_server: NatsServerProcess) -> None:
    assert NodeSettings().metrics_port is None
    node = Node(_settings(fresh_nats_server.url, metrics_port=None), factories={"coordinator": EchoActor})
    await node.start()
    try:
        await asyncio.wait_for(node.wait_ready(), timeout=30)
        assert node.metrics_port is None and node._metrics_server is None
    finally:
        await node.stop()
