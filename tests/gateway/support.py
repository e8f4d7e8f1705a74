"""A running node with the gateway, a coordinator and a role injector (``ops.node.Node``, each actor on its own
connection) plus the scripted fake runtime and agents of :mod:`tests.coordinator.fakes` on a real nats-server.

The script (as in :mod:`tests.e2e.fake_services`): turn 0 routes to agent 1 as Worker (answers ``42``), turn
1 to agent 2 as Verifier (``ACCEPT``), so a run ends accepted after two turns. Every agent call reports
``tokens`` prompt/completion tokens and ``cost`` dollars.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec
import nats
from nats.aio.client import Client

from actors.gateway.actor import GatewayActor
from config.coordinator import CoordinatorSettings
from config.gateway import GatewaySettings
from config.nats import NatsSettings
from config.node import NodeSettings
from config.settings import Settings, load_settings
from ops.node import FACTORIES, Node
from schemas import Role
from tests.coordinator.fakes import BusFakes, FakeWorld, plan_of, reply_by_role

TOKENS = (7, 3)
COST = 0.01


@dataclass
class Running:
    """What a test talks to."""

    node: Node
    gateway: GatewayActor
    fakes: BusFakes
    world: FakeWorld
    client: Client

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}/v1"


def scripted_world() -> FakeWorld:
    """Worker ``42`` then Verifier ``ACCEPT``, with tokens and cost on every call."""
    return FakeWorld(route_plan=plan_of([(1, Role.WORKER), (2, Role.VERIFIER)]),
                     reply_plan=reply_by_role(worker="42", verifier="ACCEPT"), tokens_per_call=TOKENS,
                     cost_per_call=COST)


@asynccontextmanager
async def gateway_node(url: str, gateway: GatewaySettings | None = None, *, slow_agents: dict[int, float] | None = None,
                       world: FakeWorld | None = None, coordinator: CoordinatorSettings | None = None,
                       ) -> AsyncIterator[Running]:
    """Start the node (role injector, coordinator, gateway) and the fakes; stop everything afterwards."""
    world = world or scripted_world()
    client = await nats.connect(url, name="gateway-test-fakes")
    fakes = BusFakes(client, world, slow_agents=slow_agents)
    await fakes.start()
    settings: Settings = msgspec.structs.replace(
        load_settings(environ={}), nats=NatsSettings(servers=[url]),
        node=NodeSettings(actors=["role_injector", "coordinator", "gateway"], node_id="gw-test", drain_timeout_s=5.0),
        coordinator=coordinator or CoordinatorSettings(route_timeout_s=5.0, agent_timeout_s=30.0,
                                                       role_inject_mode="bus"),
        gateway=gateway or GatewaySettings(port=0))
    made: list[GatewayActor] = []

    def gateway_factory(nc: Client, s: Settings) -> GatewayActor:
        actor = FACTORIES["gateway"](nc, s)
        assert isinstance(actor, GatewayActor)
        made.append(actor)
        return actor

    started: list[str] = []

    async def on_started(name: str) -> None:
        started.append(name)

    node = Node(settings, factories={**FACTORIES, "gateway": gateway_factory}, on_started=on_started)
    await node.start()
    try:
        for _ in range(600):  # hang guard only
            if len(started) == 3:
                break
            await asyncio.sleep(0.05)
        assert sorted(started) == ["coordinator", "gateway", "role_injector"], node.health().to_dict()
        yield Running(node=node, gateway=made[-1], fakes=fakes, world=world, client=client)
    finally:
        await node.stop()
        await fakes.drain()
        await client.close()
