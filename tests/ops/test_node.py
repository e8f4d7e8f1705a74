"""A node over a real nats-server: actors on their own connections, supervised, restarted, drained."""

from __future__ import annotations

import asyncio
import json
from typing import ClassVar

import msgspec
import nats
import pytest
from nats.aio.client import Client

from bus import rpc
from bus.embedded import NatsServerProcess
from bus.errors import NoResponders
from bus.service import ActorService, Endpoint, RequestContext
from config.nats import NatsSettings
from config.node import NodeSettings
from config.settings import Settings, load_settings
from ops.node import Node
from schemas import Message


class EchoActor:
    """A minimal actor: serves ``t.node.echo``; ``crash`` makes its connection die (a crashed process)."""

    instances: ClassVar[list[EchoActor]] = []

    def __init__(self, nc: Client, settings: Settings) -> None:
        self.nc = nc
        self.drained = False
        self.in_flight_done = 0

        async def echo(req: Message, ctx: RequestContext) -> Message:
            if req.content == "slow":
                await asyncio.sleep(0.5)
                self.in_flight_done += 1
            return req

        self.service = ActorService(nc, name="node-echo", endpoints=[Endpoint("echo", "t.node.echo", Message, echo)])
        EchoActor.instances.append(self)

    async def start(self) -> None:
        await self.service.start()
        await self.nc.flush()

    async def drain(self, timeout: float = 10.0) -> None:
        await self.service.drain(timeout=timeout)
        self.drained = True


def _settings(url: str) -> Settings:
    return msgspec.structs.replace(load_settings(environ={}), nats=NatsSettings(servers=[url]),
                                   node=NodeSettings(actors=["coordinator"], node_id="t1", drain_timeout_s=5.0,
                                                     max_restarts=3, restart_period_s=30.0))


async def test_node_serves_restarts_a_crashed_actor_and_drains(fresh_nats_server: NatsServerProcess) -> None:
    EchoActor.instances.clear()
    started: list[str] = []

    async def on_started(name: str) -> None:
        started.append(name)

    node = Node(_settings(fresh_nats_server.url), factories={"coordinator": EchoActor}, on_started=on_started)
    await node.start()
    client = await nats.connect(fresh_nats_server.url)
    for _ in range(200):
        if started:
            break
        await asyncio.sleep(0.05)
    assert started == ["coordinator"], node.health().to_dict()
    assert await rpc.request(client, "t.node.echo", Message(role="user", content="a"), Message, timeout=2)

    # the actor's connection is killed under it: the supervisor restarts the child with a fresh one
    first = EchoActor.instances[0]
    await first.nc.close()
    for _ in range(200):
        if len(started) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(started) == 2 and len(EchoActor.instances) == 2
    health = node.health().to_dict()
    assert json.dumps(health)  # serialisable for a health endpoint
    out = await rpc.request(client, "t.node.echo", Message(role="user", content="b"), Message, timeout=2)
    assert out.content == "b"

    # graceful drain: an in-flight request finishes before the node stops
    slow = asyncio.create_task(rpc.request(client, "t.node.echo", Message(role="user", content="slow"), Message,
                                           timeout=5))
    await asyncio.sleep(0.1)
    await node.stop()
    assert (await slow).content == "slow"
    assert EchoActor.instances[-1].drained and EchoActor.instances[-1].in_flight_done == 1
    with pytest.raises(NoResponders):
        await rpc.request(client, "t.node.echo", Message(role="user", content="c"), Message, timeout=1)
    await client.close()
