"""A node: the actors named in the settings, each on its own NATS connection, under one supervisor.

Each actor is a supervised child (one-for-one, exponential backoff, restart intensity from
``node.max_restarts`` per ``node.restart_period_s``). A child connects, starts its actor, waits until the
node drains, then drains its actor (stop taking work, finish in-flight) and its connection. An actor that
crashes is restarted with a fresh connection.

Example:
    >>> node = Node(load_settings())                      # doctest: +SKIP
    >>> await node.run_until_signal()                     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from nats.aio.client import Client

from bus.connection import connect
from config.settings import Settings
from supervisors import Backoff, ChildContext, ChildSpec, Intensity, Strategy, Supervisor, SupervisorHealth
from supervisors.signals import run_until_signal

log = logging.getLogger(__name__)


class ConnectionLost(Exception):
    """An actor's NATS connection closed for good (reconnects exhausted or closed under it)."""


class Actor(Protocol):
    """What every actor offers a node."""

    async def start(self) -> None: ...

    async def drain(self, timeout: float = ...) -> None: ...


ActorFactory = Callable[[Client, Settings], Actor]


def _trace_sink(nc: Client, s: Settings) -> Actor:
    from actors.trace_sink.actor import TraceSinkActor

    return TraceSinkActor(nc, s.trace_sink)


def _model_runtime(nc: Client, s: Settings) -> Actor:
    from actors.model_runtime.actor import ModelRuntimeActor

    return ModelRuntimeActor(nc, s.model_runtime, fleet=s.fleet)


def _fleet_registry(nc: Client, s: Settings) -> Actor:
    from actors.fleet_registry.actor import FleetRegistryActor

    return FleetRegistryActor(nc, s.fleet)


def _provider_agents(nc: Client, s: Settings) -> Actor:
    from actors.provider_agents.actor import ProviderAgentsActor

    return ProviderAgentsActor(nc, s.provider_agents)


def _role_injector(nc: Client, s: Settings) -> Actor:
    from actors.role_injector.actor import RoleInjectorActor

    return RoleInjectorActor(nc, s.role_injector)


def _coordinator(nc: Client, s: Settings) -> Actor:
    from actors.coordinator.actor import CoordinatorActor

    injector = None
    if s.coordinator.role_inject_mode == "local":  # role packs built in-process instead of over the bus
        from actors.role_injector.actor import local_injector, registry_from_settings

        injector = local_injector(registry_from_settings(s.role_injector))
    placement = None
    if s.fleet.placement == "registry":  # leases from the fleet registry; else the queue-group route subjects
        from actors.coordinator.placement import PlacementClient

        placement = PlacementClient(nc, s.fleet, owner=s.fleet.owner or f"{s.node.node_id}.coordinator")
    return CoordinatorActor(nc, s.coordinator, local_injector=injector, placement=placement)


def _gateway(nc: Client, s: Settings) -> Actor:
    from actors.gateway.actor import GatewayActor

    return GatewayActor(nc, s.gateway)


#: Actor name -> factory. Imports are deferred so a node loads only the actors it runs (a coordinator-only
#: node never imports torch).
FACTORIES: dict[str, ActorFactory] = {
    "trace_sink": _trace_sink,
    "model_runtime": _model_runtime,
    "fleet_registry": _fleet_registry,
    "provider_agents": _provider_agents,
    "role_injector": _role_injector,
    "coordinator": _coordinator,
    "gateway": _gateway,
}


class Node:
    """The supervised actors of one process."""

    def __init__(self, settings: Settings, factories: dict[str, ActorFactory] | None = None,
                 on_started: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.settings = settings
        self.factories = factories or FACTORIES
        self.on_started = on_started
        n = settings.node
        children = [ChildSpec(name, self._child(name), shutdown_timeout=n.drain_timeout_s + 5.0)
                    for name in n.actors]
        self.supervisor = Supervisor(
            f"node-{n.node_id}", children, strategy=Strategy.ONE_FOR_ONE,
            intensity=Intensity(max_restarts=n.max_restarts, period=n.restart_period_s),
            backoff=Backoff(base=0.5, factor=2.0, max_delay=15.0),
        )

    def _child(self, name: str) -> Callable[[ChildContext], Awaitable[None]]:
        factory = self.factories[name]
        s = self.settings

        async def run(ctx: ChildContext) -> None:
            nc = await connect(s.nats, name=f"{s.node.node_id}.{name}")
            try:
                actor = factory(nc, s)
                await actor.start()
                ctx.logger.info("actor %s serving (restart %d)", name, ctx.restart_count)
                if self.on_started is not None:
                    await self.on_started(name)
                while not ctx.is_draining:
                    ctx.heartbeat()
                    if nc.is_closed:
                        raise ConnectionLost(f"actor {name}: NATS connection closed; restarting with a new one")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ctx.wait_draining(), timeout=0.25)
                await actor.drain(timeout=s.node.drain_timeout_s)
            finally:
                # The actor has drained its own work; flush what it published, then close. (nc.drain() would
                # wait on pull-consumer inboxes that never empty.)
                if not nc.is_closed:
                    with contextlib.suppress(Exception):
                        await nc.flush(timeout=2)
                    await nc.close()

        return run

    async def start(self) -> None:
        """Start every actor's child."""
        await self.supervisor.start()

    async def stop(self) -> None:
        """Drain every actor (reverse start order) and stop."""
        await self.supervisor.stop()

    def health(self) -> SupervisorHealth:
        """Health snapshot of the node's actors."""
        return self.supervisor.health()

    async def run_until_signal(self) -> None:
        """Start, serve until SIGINT/SIGTERM, then drain gracefully."""
        await self.start()
        await run_until_signal(self.supervisor)
