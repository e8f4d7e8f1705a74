"""A node: the actors named in the settings, each on its own NATS connection, under one supervisor.

Each actor is a supervised child (one-for-one, exponential backoff, restart intensity from
``node.max_restarts`` per ``node.restart_period_s``). A child connects, starts its actor, waits until the
node drains, then drains its actor (stop taking work, finish in-flight) and its connection. An actor that
crashes is restarted with a fresh connection.

Watched loops: an actor may expose ``watches()`` (:class:`~supervisors.watch.LoopWatch` of its inner
loops, e.g. a JetStream fetch loop); the child checks them while it serves, so a loop that died or stopped
consuming while work is pending crashes the child (one log line saying why) and the actor is restarted.

Readiness: every actor is ``starting`` until its ``start()`` returned (for the trace sink and the
coordinator's job consumer that means their first fetch round trip succeeded), then ``serving``;
``restarting``, ``draining``, ``stopped`` and ``failed`` follow the supervisor. When every actor serves, the
node logs one line (``node node-1 ready: trace_sink, ... serving (42.1 s)``), answers ``ready: true`` on
``trinity.node.status.<node_id>`` (:class:`NodeStatus`, JSON; ``run.py status --wait-ready`` waits on it)
and, with ``node.ready_file``, writes the same status there (removed when the node stops).

Metrics: with ``node.metrics_port`` set the node serves its process's Prometheus metrics (:mod:`bus.metrics`)
on ``http://node.metrics_host:port/metrics``, plus ``trinity_node_ready`` and ``trinity_actor_serving{actor}``.

Stopping: the drain is bounded by ``node.drain_timeout_s`` in all: each actor drains with what is left of
it (the trace sink, drained last, keeps ``node.trace_drain_share`` of it to export the last runs' events),
and :meth:`Node.run_until_signal` given ``hard_exit`` ends the process past the deadline, naming the
actors that did not finish.

Example:
    >>> node = Node(load_settings())                      # doctest: +SKIP
    >>> await node.run_until_signal()                     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol
from wsgiref.simple_server import WSGIServer

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import metrics, subjects
from bus.connection import connect
from bus.errors import BusError
from config.settings import Settings
from supervisors import (
    Backoff,
    ChildContext,
    ChildSpec,
    ChildState,
    Intensity,
    Strategy,
    Supervisor,
    SupervisorHealth,
)
from supervisors.signals import HardExit, run_until_signal, stop_within
from supervisors.watch import LoopWatch

log = logging.getLogger(__name__)


class ConnectionLost(Exception):
    """An actor's NATS connection closed for good (reconnects exhausted or closed under it)."""


#: Node status requests: ``trinity.node.status.<node_id>`` (empty payload -> :class:`NodeStatus` JSON).
NODE_STATUS_PREFIX = subjects.NODE_STATUS_PREFIX
node_status_subject = subjects.node_status


class NodeStatus(msgspec.Struct, frozen=True):
    """A node's readiness: ``ready`` when every actor is ``serving``; per-actor state and restarts."""

    node_id: str
    ready: bool
    actors: dict[str, str]
    restarts: dict[str, int]
    uptime_s: float
    ready_after_s: float | None = None
    pid: int = 0


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


#: Actor name -> the module its factory imports. A child imports it in a worker thread before building the
#: actor: importing torch and transformers takes seconds, and on the event loop it starved every other actor
#: of the process (a JetStream API call of the trace sink timed out at start: ``crashed: TimeoutError()``).
ACTOR_MODULES: dict[str, str] = {
    "trace_sink": "actors.trace_sink.actor",
    "model_runtime": "actors.model_runtime.actor",
    "fleet_registry": "actors.fleet_registry.actor",
    "provider_agents": "actors.provider_agents.actor",
    "role_injector": "actors.role_injector.actor",
    "coordinator": "actors.coordinator.actor",
}


def _import_all(modules: list[str]) -> None:
    for m in modules:
        importlib.import_module(m)


class Node:
    """The supervised actors of one process (see the module docstring)."""

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
        self._phase: dict[str, str] = dict.fromkeys(n.actors, "starting")
        self._ready = asyncio.Event()
        self._t0 = time.monotonic()
        self._ready_after: float | None = None
        self._drain_deadline: float | None = None
        self._status_nc: Client | None = None
        self._imports: asyncio.Future[None] | None = None
        self._metrics_server: WSGIServer | None = None
        self.metrics_port: int | None = None  # the port metrics are served on (after start), when enabled

    # -- readiness ---------------------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        """Per-actor state and whether the node is ready (every actor serving)."""
        health = self.supervisor.health()
        actors: dict[str, str] = {}
        restarts: dict[str, int] = {}
        for c in health.children:
            if c.state is ChildState.RESTARTING:
                actors[c.name] = "restarting"
            elif c.state is ChildState.FAILED:
                actors[c.name] = "failed"
            elif c.state is ChildState.STOPPED and self._phase.get(c.name) != "starting":
                actors[c.name] = "stopped"
            else:
                actors[c.name] = self._phase.get(c.name, "starting")
            restarts[c.name] = c.restarts
        ready = bool(actors) and all(v == "serving" for v in actors.values()) and self._drain_deadline is None
        return NodeStatus(node_id=self.settings.node.node_id, ready=ready, actors=actors, restarts=restarts,
                          uptime_s=round(time.monotonic() - self._t0, 3), ready_after_s=self._ready_after,
                          pid=os.getpid())

    @property
    def ready(self) -> bool:
        """True while every actor serves."""
        return self.status().ready

    async def wait_ready(self) -> None:
        """Wait until every actor served at least once (the moment of the ``ready`` log line)."""
        await self._ready.wait()

    def _set_phase(self, name: str, phase: str) -> None:
        self._phase[name] = phase
        if phase != "serving":
            return
        st = self.status()
        if not st.ready:
            return
        n = self.settings.node
        serving = ", ".join(st.actors)
        if not self._ready.is_set():
            self._ready_after = round(time.monotonic() - self._t0, 1)
            log.info("node %s ready: %s serving (%.1f s)", n.node_id, serving, self._ready_after)
            self._ready.set()
        else:
            log.info("node %s ready again: %s serving", n.node_id, serving)
        self._write_ready_file()

    def _write_ready_file(self) -> None:
        path = self.settings.node.ready_file
        if not path:
            return
        target = Path(path).expanduser()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
            tmp.write_bytes(msgspec.json.encode(self.status()))
            tmp.replace(target)
        except OSError as e:
            log.warning("node %s: cannot write the ready file %s: %s", self.settings.node.node_id, target, e)

    def _remove_ready_file(self) -> None:
        if self.settings.node.ready_file:
            with contextlib.suppress(OSError):
                Path(self.settings.node.ready_file).expanduser().unlink()

    async def _serve_status(self) -> None:
        s = self.settings
        try:
            nc = await connect(s.nats, name=f"{s.node.node_id}.status")
        except (OSError, TimeoutError, nats.errors.Error, BusError) as e:  # an extra; the actors run without it
            log.warning("node %s: status endpoint not served (%s)", s.node.node_id, e)
            return

        async def answer(msg: Msg) -> None:
            if msg.reply:
                with contextlib.suppress(Exception):
                    await msg.respond(msgspec.json.encode(self.status()))

        try:
            await nc.subscribe(node_status_subject(s.node.node_id), cb=answer)
            await nc.flush(timeout=5)
        except (OSError, TimeoutError, nats.errors.Error) as e:
            log.warning("node %s: status endpoint not served (%s)", s.node.node_id, e)
        self._status_nc = nc

    # -- children ----------------------------------------------------------------------------------------

    def _drain_budget(self, name: str) -> float:
        """Seconds an actor's drain may take now: what is left of the node's deadline, less a margin to close;
        actors other than the trace sink (drained last) also leave it ``node.trace_drain_share`` of the deadline."""
        n = self.settings.node
        reserve = 0.0
        if name != "trace_sink" and "trace_sink" in n.actors:
            reserve = n.trace_drain_share * n.drain_timeout_s
        if self._drain_deadline is None:
            return max(0.2, n.drain_timeout_s - reserve)
        return max(0.2, self._drain_deadline - time.monotonic() - 1.0 - reserve)

    def begin_drain(self) -> None:
        """Start the node's drain clock (``node.drain_timeout_s`` from now); idempotent."""
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.settings.node.drain_timeout_s

    def _child(self, name: str) -> Callable[[ChildContext], Awaitable[None]]:
        factory = self.factories[name]
        s = self.settings

        async def run(ctx: ChildContext) -> None:
            self._phase[name] = "starting"
            if self._imports is not None:  # the actor modules, imported off the event loop (once, one by one)
                await asyncio.shield(self._imports)
            nc = await connect(s.nats, name=f"{s.node.node_id}.{name}")
            actor: Actor | None = None
            drained = False
            try:
                actor = factory(nc, s)
                ctx.logger.info("actor %s starting (restart %d)", name, ctx.restart_count)
                t = time.monotonic()
                await actor.start()
                ctx.logger.info("actor %s serving (restart %d, started in %.1f s)", name, ctx.restart_count,
                                time.monotonic() - t)
                self._set_phase(name, "serving")
                if self.on_started is not None:
                    await self.on_started(name)
                watches: list[LoopWatch] = list(getattr(actor, "watches", list)())
                while not ctx.is_draining:
                    ctx.heartbeat()
                    if nc.is_closed:
                        raise ConnectionLost(f"actor {name}: NATS connection closed; restarting with a new one")
                    for w in watches:
                        await w.check()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ctx.wait_draining(), timeout=0.25)
                self._phase[name] = "draining"
                budget = self._drain_budget(name)
                ctx.logger.info("actor %s draining (up to %.1f s)", name, budget)
                drained = True
                draining = asyncio.ensure_future(actor.drain(timeout=budget))
                await asyncio.wait({draining}, timeout=budget + 0.5)
                if not draining.done():  # not awaited further: a drain that ignores cancellation never ends
                    draining.cancel()
                    ctx.logger.error("actor %s did not finish draining within %.1f s; abandoning it", name,
                                     budget + 0.5)
                else:
                    draining.result()
            except Exception:
                if actor is not None and not drained:
                    # stop what the failed incarnation started (its loops, exporters) before a restart
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(actor.drain(timeout=1.0), timeout=3.0)
                raise
            finally:
                self._phase[name] = "stopped"
                # The actor has drained its own work; flush what it published, then close. (nc.drain() would
                # wait on pull-consumer inboxes that never empty.)
                if not nc.is_closed:
                    with contextlib.suppress(Exception):
                        await nc.flush(timeout=1)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(nc.close(), timeout=2.0)

        return run

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every actor's child and the status endpoint."""
        self._t0 = time.monotonic()
        modules = [ACTOR_MODULES[n] for n in self.settings.node.actors if n in ACTOR_MODULES]
        # one thread, one module after the other: concurrent imports of transformers' lazy modules race
        self._imports = asyncio.ensure_future(asyncio.to_thread(_import_all, modules))
        await self.supervisor.start()
        await self._serve_status()
        self._serve_metrics()

    def _serve_metrics(self) -> None:
        n = self.settings.node
        if n.metrics_port is None or self._metrics_server is not None:
            return
        metrics.NODE_READY.set_function(metrics.scraped(lambda: self.status().ready))
        for name in n.actors:
            metrics.ACTOR_SERVING.labels(actor=name).set_function(
                metrics.scraped(lambda name=name: self.status().actors.get(name) == "serving"))  # type: ignore[misc]
        try:
            self._metrics_server = metrics.serve(n.metrics_port, host=n.metrics_host)
        except OSError as e:  # an extra, like the status endpoint: the actors run without it
            log.warning("node %s: metrics not served on %s:%d (%s); set node.metrics_port to a free port",
                        n.node_id, n.metrics_host, n.metrics_port, e)
            return
        self.metrics_port = self._metrics_server.server_port
        log.info("node %s: metrics on http://%s:%d/metrics", n.node_id, n.metrics_host, self.metrics_port)

    async def stop(self, hard_exit: HardExit | None = None) -> bool:
        """Drain every actor (reverse start order) within ``node.drain_timeout_s``; False when actors were
        abandoned past it (after ``hard_exit``, when given, was called)."""
        self.begin_drain()
        try:
            return await stop_within(self.supervisor, self.settings.node.drain_timeout_s, hard_exit)
        finally:
            await self._close_status()

    async def _close_status(self) -> None:
        self._remove_ready_file()
        if self._metrics_server is not None:
            server, self._metrics_server = self._metrics_server, None
            await asyncio.to_thread(server.shutdown)
            server.server_close()
        if self._status_nc is not None and not self._status_nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._status_nc.close(), timeout=2.0)
        self._status_nc = None

    def health(self) -> SupervisorHealth:
        """Health snapshot of the node's actors."""
        return self.supervisor.health()

    async def run_until_signal(self, hard_exit: HardExit | None = None) -> None:
        """Start, serve until SIGINT/SIGTERM, then drain within ``node.drain_timeout_s``; past it (or on a
        second signal) call ``hard_exit`` (e.g. :func:`supervisors.signals.hard_exit`)."""
        await self.start()
        try:
            await run_until_signal(self.supervisor, drain_deadline_s=self.settings.node.drain_timeout_s,
                                   hard_exit=hard_exit, on_drain=self.begin_drain)
        finally:
            await self._close_status()
