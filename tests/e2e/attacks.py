"""The permission attacks of issue 14, each run AS a given NATS user against a real nats-server, counting what got
through. Used by ``tests/e2e/test_permissions.py`` (with the generated permissions: every count must be 0) and by
``scripts/probe_attacks.py`` (with and without them, side by side).

A :class:`Lab` is one nats-server, either with ``run.py nats-auth``'s users (``secure=True``) or open (the
control: every process connects anonymously with nats-py's default ``_INBOX``), and the system on it: the
scripted fake runtime and agents (``tests/e2e/fake_services.py``, slowed so that a faster forger would win), the
real role injector, coordinator and trace sink, each on its own user.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from actors.coordinator.actor import CoordinatorActor
from actors.fleet_registry.actor import FleetRegistryActor
from actors.provider_agents.actor import ProviderAgentsActor
from actors.role_injector.actor import RoleInjectorActor
from actors.trace_sink.actor import TraceSinkActor
from actors.trace_sink.render import TraceFilter
from bus import rpc, subjects
from bus.codec import decode, encode
from bus.connection import connect_options
from bus.embedded import NatsServerProcess
from bus.errors import RemoteError
from bus.jetstream import (
    MSG_ID_HEADER,
    ConsumerSpec,
    ensure_consumer,
    ensure_stream,
    jobs_consumer_spec,
    jobs_stream_spec,
    results_stream_spec,
    trace_stream_spec,
)
from bus.service import ActorService, Endpoint, RequestContext
from config.coordinator import CoordinatorSettings
from config.fleet import FleetSettings
from config.nats import NatsSettings
from config.provider_agents import AgentSpec, ProviderAgentsSettings, ProviderKind, ProviderSettings, RetrySettings
from config.trace_sink import JsonlSettings, TraceSinkSettings
from ops.client import build_request, stored_result, submit, submit_job, tail
from ops.nats_auth import TRACE_SINK_DURABLE, NatsUser, generate_users, inbox_prefix, render_authorization
from schemas import AgentCallIntent, AgentCallReceipt, Message, Role, RouteLogits, RouteRequest
from schemas.coordination import CoordinationResult
from schemas.fleet import FleetStatus, FleetStatusRequest
from tests.coordinator.fakes import make_logits
from tests.e2e.fake_services import fake_services
from tests.fleet.support import heartbeat
from tests.provider_agents.loopback import LoopbackServer, Reply

USERS = ["coordinator", "model_runtime", "provider_agents", "role_injector", "trace_sink", "client",
         "tenant-alice", "tenant-bob", "gateway", "fleet_registry", "agents-a", "agents-b", "runtime-r1", "runtime-r2"]
#: the per-host agents users (``nats-auth --agents-user a=0,1 --agents-user b=2,3,4,5,6``)
SCOPED_AGENTS = {"agents-a": (0, 1), "agents-b": (2, 3, 4, 5, 6)}
#: the node whose readiness the coordinator user may answer
NODE = "node-a"
#: how long a refused request is given before it counts as refused (a permission violation drops it silently)
REFUSED_AFTER_S = 1.0
FORGED = "ACCEPT FORGED-BY-ATTACKER"


@dataclass
class Outcome:
    """One attack: how many attempts, how many got through, and what the attacker saw."""

    name: str
    attempts: int = 0
    succeeded: int = 0
    seen: int = 0
    notes: list[str] = field(default_factory=list)
    #: what the server reported to the attacker's connection(s) (lower case), e.g. ``permissions violation ...``
    violations: list[str] = field(default_factory=list)

    @property
    def refused(self) -> int:
        return self.attempts - self.succeeded


class Conn:
    """A connection as one user that records the permission violations the server reports to it."""

    def __init__(self, nc: Client, violations: list[str]) -> None:
        self.nc, self.violations = nc, violations

    async def violated(self, fragment: str, wait_s: float = REFUSED_AFTER_S) -> bool:
        """True once the server reported a violation whose text holds ``fragment``."""
        for _ in range(int(wait_s / 0.02)):
            if any(fragment in v for v in self.violations):
                return True
            await self.nc.flush()
            await asyncio.sleep(0.02)
        return any(fragment in v for v in self.violations)


class Lab:
    """A nats-server with (``secure``) or without per-actor permissions, and the system running on it."""

    def __init__(self, secure: bool, tmp: Path) -> None:
        self.secure, self.tmp = secure, tmp
        self.users: dict[str, NatsUser] = {}
        config = ""
        if secure:
            self.users = {u.user: u for u in generate_users(USERS, nodes={NODE: "coordinator"}, agents=SCOPED_AGENTS)}
            config = render_authorization(self.users.values())
        self.server = NatsServerProcess.start(name="trinity-attacks", config_text=config)
        self.conns: list[Client] = []
        self.actors: list[Any] = []
        self.jsonl = tmp / "trace.jsonl"

    def settings(self, user: str) -> NatsSettings:
        """How ``user`` connects (anonymously with the default inbox in the control)."""
        if not self.secure:
            return NatsSettings(servers=[self.server.url], embedded="never")
        u = self.users[user]
        return NatsSettings(servers=[self.server.url], user=u.user, password=u.password, embedded="never",
                            inbox_prefix=inbox_prefix(u.user))

    async def connect(self, user: str) -> Conn:
        """A connection as ``user`` whose permission violations are recorded."""
        violations: list[str] = []

        async def on_error(e: Exception) -> None:
            violations.append(str(e).lower())

        opts = connect_options(self.settings(user), name=f"attack-{user}") | {"allow_reconnect": False}
        nc = await nats.connect(**opts, error_cb=on_error)
        self.conns.append(nc)
        return Conn(nc, violations)

    async def start_system(self, *, route_delay: float = 0.3, agent_delay: float = 0.3) -> Client:
        """Start fake runtime and agents, role injector, coordinator and trace sink, each on its own user; returns
        the operator client's connection."""
        rt, ag, ri, co, ts = [(await self.connect(u)).nc for u in
                              ("model_runtime", "provider_agents", "role_injector", "coordinator", "trace_sink")]
        self.actors = [*fake_services(rt, ag, route_delay=route_delay, agent_delay=agent_delay),
                       RoleInjectorActor(ri),
                       CoordinatorActor(co, CoordinatorSettings(route_timeout_s=5.0, agent_timeout_s=5.0)),
                       TraceSinkActor(ts, TraceSinkSettings(jsonl=JsonlSettings(path=str(self.jsonl))))]
        for a in self.actors:
            await a.start()
        return (await self.connect("client")).nc

    async def retire(self, conn: Conn, out: Outcome) -> None:
        """End an attacker's connection, keeping what the server told it in ``out``."""
        await conn.nc.flush()
        await asyncio.sleep(0.1)  # a violation arrives asynchronously, after the refused operation
        out.violations += conn.violations
        await conn.nc.close()

    async def close(self) -> None:
        for a in reversed(self.actors):
            with contextlib.suppress(Exception):
                await a.drain(timeout=1.0)
        for nc in self.conns:
            with contextlib.suppress(Exception):
                await nc.close()
        self.server.close()


def _others_inboxes(lab: Lab, me: str) -> list[str]:
    if not lab.secure:
        return ["_INBOX.>"]
    return ["_INBOX.>", *(f"{inbox_prefix(u)}.>" for u in lab.users if u != me)]


async def snoop(lab: Lab, client: Client, attacker: str) -> Outcome:
    """``attacker`` subscribes to everyone's reply inboxes while a job and a request run; counts what it reads."""
    out = Outcome(f"inbox snooping as {attacker}")
    conn = await lab.connect(attacker)
    got: list[Msg] = []

    async def grab(msg: Msg) -> None:
        got.append(msg)

    for subject in _others_inboxes(lab, attacker):
        await conn.nc.subscribe(subject, cb=grab)
        out.attempts += 1
    await conn.nc.flush()
    await submit_job(client, build_request("victim secret question", request_id=f"snoop-job-{attacker}"),
                     timeout=20.0)
    await submit(client, build_request("victim secret question", request_id=f"snoop-req-{attacker}"), timeout=20.0)
    await conn.nc.flush()
    out.seen = len(got)
    out.succeeded = out.attempts if got else 0
    await lab.retire(conn, out)
    return out


def _agent_forger(out: Outcome) -> Any:
    """A callback answering every agent call it sees with a ``FORGED`` receipt (counted in ``out.seen``)."""

    async def answer(msg: Msg) -> None:
        intent = decode(msg.data, AgentCallIntent)
        out.seen += 1
        receipt = AgentCallReceipt(request_id=intent.request_id, turn=intent.turn, agent_id=intent.agent_id,
                                   content=FORGED, provider="fake", model="fake-1")
        with contextlib.suppress(Exception):
            await msg.respond(encode(receipt))

    return answer


async def _forged_runs(client: Client, out: Outcome, prefix: str, runs: int = 3) -> None:
    """``runs`` scripted runs (agent 1 as Worker, agent 2 as Verifier); a run with a ``FORGED`` receipt succeeded."""
    for i in range(runs):
        res = await submit(client, build_request("What is 17 + 25?", request_id=f"{prefix}-{i}"), timeout=20.0)
        out.attempts += 1
        if any(t.receipt is not None and FORGED in t.receipt.content for t in res.turns):
            out.succeeded += 1
        out.notes.append(f"answer={res.answer!r}")


async def forge_agents(lab: Lab, client: Client) -> Outcome:
    """As ``provider_agents``: take every agent call (no queue group) and answer ``FORGED`` first."""
    out = Outcome("forged agent answers as provider_agents")
    conn = await lab.connect("provider_agents")
    await conn.nc.subscribe("trinity.agent.*.call", cb=_agent_forger(out))
    await conn.nc.flush()
    await _forged_runs(client, out, "forge-agent")
    await lab.retire(conn, out)
    return out


async def forge_other_hosts_agents(lab: Lab, client: Client) -> Outcome:
    """As ``agents-a`` (agent ids 0 and 1 only): take agent 2's calls, another host's, in the ``agents`` queue
    group and outside it, and watch its own ids' calls outside the queue group; answer ``FORGED`` first. The
    scripted runs call agent 1 (Worker) and agent 2 (Verifier)."""
    out = Outcome("answering another host's agents as agents-a")
    conn = await lab.connect("agents-a")
    answer = _agent_forger(out)
    await conn.nc.subscribe(subjects.agent_call(2), queue=subjects.QUEUE_AGENTS, cb=answer)
    for agent_id in (2, 0, 1):
        await conn.nc.subscribe(subjects.agent_call(agent_id), cb=answer)
    await conn.nc.flush()
    await _forged_runs(client, out, "forge-host-agent")
    await lab.retire(conn, out)
    return out


async def forge_routes(lab: Lab, client: Client) -> Outcome:
    """As ``model_runtime``: take every route request (no queue group) and answer logits forcing agent 6."""
    out = Outcome("forged route logits as model_runtime")
    conn = await lab.connect("model_runtime")

    async def answer(msg: Msg) -> None:
        req = decode(msg.data, RouteRequest)
        out.seen += 1
        with contextlib.suppress(Exception):
            await msg.respond(encode(make_logits(req.request_id, req.turn, 6, Role.WORKER)))

    await conn.nc.subscribe("trinity.route.*.*", cb=answer)
    await conn.nc.flush()
    for i in range(3):
        res = await submit(client, build_request("What is 17 + 25?", request_id=f"forge-route-{i}"), timeout=20.0)
        out.attempts += 1
        if any(t.decision.agent_id == 6 for t in res.turns):
            out.succeeded += 1
    await lab.retire(conn, out)
    return out


#: marks the forged heartbeats: a registry that took one shows runtime r2 with this queue depth (+ attempt)
FORGED_QUEUE = 1000


async def _fleet_view(status_nc: Client, beat: Any, n: int) -> FleetStatus:
    """Have the forger publish its own (allowed) heartbeat number ``n`` and wait until the registry shows it: the
    registry then took, or dropped, everything the forger published before (one connection, in order)."""
    await beat(subjects.runtime_heartbeat("r1"), "r1", n)
    for _ in range(250):
        st = await rpc.request(status_nc, subjects.FLEET_STATUS, FleetStatusRequest(), FleetStatus, timeout=5.0)
        mine = st.runtime("r1")
        if mine is not None and mine.queue_depth == n:
            return st
        await asyncio.sleep(0.02)
    raise AssertionError(f"the registry never showed runtime r1's heartbeat {n}")


async def forge_other_runtimes(lab: Lab) -> Outcome:
    """As ``runtime-r1``, against a fleet registry (``fleet_registry``) and runtime r2's direct route (served as
    ``runtime-r2``): heartbeat as r2 on r2's subject; heartbeat on its own subject naming r2 in the payload (each
    would make a registry place work on r2, a runtime that is not there); take r2's direct route subject (and its
    control subject) and answer forged logits before r2 does. A heartbeat attempt succeeded when the registry
    lists r2 with the forged queue depth; the route attempt when the forger's logits came back."""
    out = Outcome("another runtime's heartbeats and route as runtime-r1")
    registry = FleetRegistryActor((await lab.connect("fleet_registry")).nc, FleetSettings(), registry_id="reg-attacks")
    await registry.start()
    lab.actors.append(registry)
    client = await lab.connect("client")
    rogue = await lab.connect("runtime-r1")

    async def beat(subject: str, runtime_id: str, queue: int) -> None:
        hb = heartbeat(runtime_id, queue=queue, max_queue=10_000, ts=time.time())
        await rogue.nc.publish(subject, encode(hb))

    n = 1
    await _fleet_view(client.nc, beat, n)
    for i, subject in enumerate((subjects.runtime_heartbeat("r2"), subjects.runtime_heartbeat("r1")), 1):
        await beat(subject, "r2", FORGED_QUEUE + i)
        n += 1
        view = (await _fleet_view(client.nc, beat, n)).runtime("r2")
        out.attempts += 1
        if view is not None and view.queue_depth == FORGED_QUEUE + i:
            out.succeeded += 1
            out.notes.append(f"heartbeat on {subject} listed r2")

    async def legit(req: RouteRequest, ctx: RequestContext) -> RouteLogits:
        await asyncio.sleep(0.3)  # slower than the forger, which would win any race it is let into
        return msgspec.structs.replace(make_logits(req.request_id, req.turn, 1, Role.WORKER), runtime_id="r2")

    r2 = ActorService((await lab.connect("runtime-r2")).nc, name="runtime-r2", endpoints=[
        Endpoint("route-direct", subjects.runtime_route("r2"), RouteRequest, legit)])
    await r2.start()
    lab.actors.append(r2)

    async def forge(msg: Msg) -> None:
        req = decode(msg.data, RouteRequest)
        out.seen += 1
        with contextlib.suppress(Exception):
            await msg.respond(encode(msgspec.structs.replace(make_logits(req.request_id, req.turn, 6, Role.WORKER),
                                                             runtime_id="forger")))

    await rogue.nc.subscribe(subjects.runtime_route("r2"), cb=forge)
    await rogue.nc.subscribe(subjects.runtime_control("r2"), cb=forge)
    await rogue.nc.flush()
    coordinator = await lab.connect("coordinator")
    reply = await rpc.request(coordinator.nc, subjects.runtime_route("r2"),
                              RouteRequest("forge-direct", 0, [Message(role="user", content="q")]), RouteLogits,
                              timeout=5.0)
    out.attempts += 1
    if reply.runtime_id != "r2":
        out.succeeded += 1
        out.notes.append(f"route to r2 answered by {reply.runtime_id}")
    await lab.retire(rogue, out)
    return out


async def ack_hijack(lab: Lab, attacker: str = "provider_agents", jobs: int = 4) -> Outcome:
    """A coordinator holds ``jobs`` job deliveries; ``attacker`` terminates every delivery it can see, and every
    one it can guess the ack subject of. Counts jobs gone from the queue (a terminated work-queue job is lost)."""
    out = Outcome(f"job ack hijack (+TERM) as {attacker}")
    owner = await lab.connect("coordinator")
    js = owner.nc.jetstream()
    await ensure_stream(js, jobs_stream_spec())
    await ensure_consumer(js, subjects.JOBS_STREAM, jobs_consumer_spec(ack_wait_s=30.0))
    client = await lab.connect("client")
    for i in range(jobs):
        await client.nc.jetstream().publish(subjects.COORD_JOBS, encode(build_request("q", request_id=f"hj-{i}")),
                                            headers={MSG_ID_HEADER: f"hj-{i}"})
    rogue = await lab.connect(attacker)

    async def term(msg: Msg) -> None:
        if msg.reply and msg.reply.startswith("$JS.ACK."):
            out.seen += 1
            await rogue.nc.publish(msg.reply, b"+TERM")

    for subject in _others_inboxes(lab, attacker):
        await rogue.nc.subscribe(subject, cb=term)
    await rogue.nc.flush()
    sub = await js.pull_subscribe_bind(durable=subjects.JOBS_CONSUMER, stream=subjects.JOBS_STREAM)
    held = await sub.fetch(jobs, timeout=5.0)
    for m in held:  # and the guessed ack subjects, for a rogue that sees nothing
        seq = m.metadata.sequence
        await rogue.nc.publish(f"$JS.ACK.{subjects.JOBS_STREAM}.{subjects.JOBS_CONSUMER}.1.{seq.stream}."
                               f"{seq.consumer}.0.0", b"+TERM")
    await rogue.nc.flush()
    await asyncio.sleep(0.5)
    for m in held:
        with contextlib.suppress(Exception):
            await m.nak()
    await owner.nc.flush()
    info = await js.stream_info(subjects.JOBS_STREAM)
    out.attempts = jobs
    out.succeeded = jobs - info.state.messages
    await lab.retire(rogue, out)
    return out


async def js_abuse(lab: Lab) -> Outcome:
    """Each non-owner tries to purge or delete streams and consumers it does not own (the client also tries to
    take over the trace sink's consumer). An attempt succeeds when the server answers OK."""
    out = Outcome("JetStream API abuse")
    owner = await lab.connect("coordinator")
    js = owner.nc.jetstream()
    sink = await lab.connect("trace_sink")

    async def restore() -> None:
        await ensure_stream(js, jobs_stream_spec())
        await ensure_stream(js, results_stream_spec())
        await ensure_stream(js, trace_stream_spec())
        await ensure_consumer(js, subjects.JOBS_STREAM, jobs_consumer_spec())
        await ensure_consumer(sink.nc.jetstream(), subjects.TRACE_STREAM,
                              ConsumerSpec(durable=TRACE_SINK_DURABLE, filter_subject=subjects.TRACE_ALL))

    attempts: list[tuple[str, str, Any]] = []
    for user in ("trace_sink", "coordinator", "client", "tenant-bob"):
        attempts += [
            (user, "purge results stream", lambda m: m.purge_stream(subjects.RESULTS_STREAM)),
            (user, "delete trace stream", lambda m: m.delete_stream(subjects.TRACE_STREAM)),
            (user, "delete trace-sink consumer", lambda m: m.delete_consumer(subjects.TRACE_STREAM,
                                                                             TRACE_SINK_DURABLE)),
            (user, "delete coordinators consumer", lambda m: m.delete_consumer(subjects.JOBS_STREAM,
                                                                               subjects.JOBS_CONSUMER)),
        ]
        if user != "trace_sink":  # the sink's own consumer is the sink's to define
            attempts.append((user, "redefine trace-sink consumer", lambda m: m.add_consumer(
                subjects.TRACE_STREAM, ConsumerConfig(durable_name=TRACE_SINK_DURABLE, name=TRACE_SINK_DURABLE,
                                                      filter_subject="trinity.trace.none.*"))))
    conns = {u: await lab.connect(u) for u in ("trace_sink", "coordinator", "client", "tenant-bob")}
    for user, what, call in attempts:
        await restore()
        out.attempts += 1
        try:
            await call(conns[user].nc.jetstream(timeout=REFUSED_AFTER_S))
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
            continue
        out.succeeded += 1
        out.notes.append(f"{user}: {what}")
    await restore()
    for conn in conns.values():
        await lab.retire(conn, out)
    return out


async def read_others_results(lab: Lab, client: Client) -> Outcome:
    """``tenant-alice`` asks; ``tenant-bob`` tries to read her result: her inbox, every inbox, the result subjects,
    the stored results of the operator's jobs, and the trace stream."""
    out = Outcome("a tenant reading another's results")
    alice = await lab.connect("tenant-alice")
    bob = await lab.connect("tenant-bob")
    got: dict[str, int] = {}

    def grabber(subject: str) -> Any:
        async def grab(msg: Msg) -> None:
            got[subject] = got.get(subject, 0) + 1
        return grab

    watched = [subjects.COORD_RESULT_ALL, *_others_inboxes(lab, "tenant-bob")]
    for subject in watched:
        await bob.nc.subscribe(subject, cb=grabber(subject))
    await bob.nc.flush()
    res = await submit(alice.nc, build_request("alice's secret question", request_id="alice-1"), timeout=20.0)
    out.notes.append(f"alice's own answer: {res.answer!r}")
    await submit_job(client, build_request("operator job", request_id="op-job-1"), timeout=20.0)
    await bob.nc.flush()
    out.attempts += len(watched)
    out.seen = sum(got.values())
    out.succeeded += len(got)  # subscriptions that read anything
    out.attempts += 1  # a stored result by id
    try:
        if await asyncio.wait_for(stored_result(bob.nc, "op-job-1"), REFUSED_AFTER_S * 3) is not None:
            out.succeeded += 1
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
        pass
    out.attempts += 1  # the trace stream (every run's question and replies)
    try:
        sub = await bob.nc.jetstream(timeout=REFUSED_AFTER_S).subscribe(
            subjects.trace_filter("alice-1"), ordered_consumer=True, stream=subjects.TRACE_STREAM)
        await sub.next_msg(timeout=REFUSED_AFTER_S)
        out.succeeded += 1
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
        pass
    await lab.retire(bob, out)
    return out


async def forge_status(lab: Lab, client: Client) -> Outcome:
    """As ``model_runtime`` (and as ``provider_agents``): answer readiness for a node the attacker does not run."""
    out = Outcome("node status forgery")
    for attacker, node in (("model_runtime", NODE), ("provider_agents", NODE), ("model_runtime", "ghost")):
        rogue = await lab.connect(attacker)

        async def answer(msg: Msg) -> None:
            await msg.respond(b'{"ready": true, "forged": true}')

        sub = await rogue.nc.subscribe(subjects.node_status(node), cb=answer)
        await rogue.nc.flush()
        out.attempts += 1
        # refused: no responder at all, answered at once by the server; a forged answer may take a while under load.
        # An attacker asks again: on an open server a request right after the subscription was once answered "no
        # responders" under load (the control then read 2/3); three tries each, so that says nothing either way.
        for _ in range(3):
            try:
                reply = await client.request(subjects.node_status(node), b"", timeout=5.0)
            except (TimeoutError, nats.errors.Error) as e:
                out.notes.append(f"{attacker} for {node}: {type(e).__name__}")
                await rogue.nc.flush()
                await asyncio.sleep(0.1)
                continue
            if b"forged" in reply.data:
                out.succeeded += 1
            else:
                out.notes.append(f"{attacker} for {node}: answered {reply.data[:60]!r}")
            break
        await sub.unsubscribe()
        await lab.retire(rogue, out)
    return out


URL_PW = "UrlPassw0rd-4471"
DEAD_PW = "DeadPassw0rd-9902"
Q_PW = "hunter2-Q9x7"
AWS = "AKIAIOSFODNN7EXAMPLE"
SECRETS = (URL_PW, DEAD_PW, Q_PW, AWS)
QUESTION = f"My key is {AWS} and password={Q_PW}. What is 17 + 25?"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SecretsReport:
    """Where the secrets were looked for (``places``: name -> text read) and the two runs' results."""

    outcome: Outcome
    places: dict[str, str]
    request_result: CoordinationResult
    job_result: CoordinationResult


async def secret_leaks(lab: Lab) -> SecretsReport:
    """Provider ``base_url``s with passwords (one reachable, one dead), a question with an AWS key id and a
    ``password=``, a provider that echoes the password; then every place an attacker could read: the reply, the
    stored result, the raw trace stream, ``tail``, the trace sink's JSONL, an error reply from the dead agent, and
    the log lines (the caller captures them into ``lab.logs``). ``succeeded`` counts (place, secret) leaks."""
    async with LoopbackServer() as provider:
        provider.script(Reply(200, {"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop",
             "message": {"role": "assistant", "content": f"ACCEPT 42 (and your password={Q_PW})"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5}}))
        host = provider.url.split("://", 1)[1]
        agents_settings = ProviderAgentsSettings(
            providers=[ProviderSettings(name="good", kind=ProviderKind.OPENAI, base_url=f"http://alice:{URL_PW}@{host}/v1",
                                        retry=RetrySettings(max_attempts=1)),
                       ProviderSettings(name="dead", kind=ProviderKind.OPENAI,
                                        base_url=f"http://bob:{DEAD_PW}@127.0.0.1:{_closed_port()}/v1",
                                        retry=RetrySettings(max_attempts=1))],
            agents=[AgentSpec(agent_id=1, name="good", provider="good", model="m"),
                    AgentSpec(agent_id=0, name="dead", provider="dead", model="m")])
        rt, ag, ri, co, ts = [(await lab.connect(u)).nc for u in
                              ("model_runtime", "provider_agents", "role_injector", "coordinator", "trace_sink")]

        async def route(req: RouteRequest, ctx: RequestContext) -> RouteLogits:
            # turn 0: agent 1 (the good provider) as Worker; then agent 0 (dead) as Verifier, failing over to 1
            agent, role = (1, Role.WORKER) if req.turn == 0 else (0, Role.VERIFIER)
            return make_logits(req.request_id, req.turn, agent, role)

        lab.actors = [ActorService(rt, name="secret-runtime", endpoints=[
                          Endpoint("route", subjects.route("torch", "base"), RouteRequest, route,
                                   queue_group=subjects.QUEUE_RUNTIMES)]),
                      ProviderAgentsActor(ag, agents_settings), RoleInjectorActor(ri),
                      CoordinatorActor(co, CoordinatorSettings(route_timeout_s=5.0, agent_timeout_s=5.0)),
                      TraceSinkActor(ts, TraceSinkSettings(jsonl=JsonlSettings(path=str(lab.jsonl))))]
        for a in lab.actors:
            await a.start()
        client = (await lab.connect("client")).nc
        places: dict[str, str] = {}
        res = await submit(client, build_request(QUESTION, request_id="sec-req", max_turns=3), timeout=30.0)
        job = await submit_job(client, build_request(QUESTION, request_id="sec-job", max_turns=3), timeout=30.0)
        places["request reply"] = msgspec.json.encode(res).decode()
        raw = await client.jetstream().get_last_msg(subjects.RESULTS_STREAM, subjects.coord_result("sec-job"))
        places["results stream"] = (raw.data or b"").decode()
        try:  # an error reply, straight from the dead agent (as the coordinator user, who may call agents)
            await rpc.request(co, subjects.agent_call(0), AgentCallIntent(
                request_id="sec-direct", turn=0, agent_id=0, role=Role.WORKER,
                messages=[Message(role="user", content="hi")]), AgentCallReceipt, timeout=10.0)
            places["error reply"] = ""
        except RemoteError as e:
            places["error reply"] = msgspec.json.encode(e.reply).decode() + str(e)
        sub = await client.jetstream().subscribe(subjects.TRACE_ALL, ordered_consumer=True,
                                                 stream=subjects.TRACE_STREAM)
        events: list[str] = []
        while True:  # the raw trace stream, as tail and any sink read it
            try:
                events.append((await sub.next_msg(timeout=1.0)).data.decode())
            except nats.errors.TimeoutError:
                break
        await sub.unsubscribe()
        places["trace stream"] = "\n".join(events)
        out = io.StringIO()
        await tail(client, TraceFilter.parse(request_id="sec-job"), replay=True, follow=False, out=out,
                   idle_timeout=1.0)
        places["tail"] = out.getvalue()
        for _ in range(100):
            if lab.jsonl.exists() and lab.jsonl.read_text().count('"run_finished"') >= 2:
                break
            await asyncio.sleep(0.05)
        places["jsonl"] = lab.jsonl.read_text() if lab.jsonl.exists() else ""
        for a in reversed(lab.actors):
            await a.drain(timeout=1.0)
        lab.actors = []
    outcome = Outcome("secret leaks", attempts=len(places) * len(SECRETS))
    outcome.notes = sorted(f"{where}: {s}" for where, text in places.items() for s in SECRETS if s in text)
    outcome.succeeded = len(outcome.notes)
    return SecretsReport(outcome, places, res, job)


async def legit_status(lab: Lab, client: Client) -> bool:
    """The coordinator user answers the readiness of the node it runs, and the client reads it."""
    conn = await lab.connect("coordinator")

    async def answer(msg: Msg) -> None:
        await msg.respond(b'{"ready": true}')

    await conn.nc.subscribe(subjects.node_status(NODE), cb=answer)
    await conn.nc.flush()
    reply = await client.request(subjects.node_status(NODE), b"", timeout=5.0)
    return msgspec.json.decode(reply.data) == {"ready": True}


async def legit_run(client: Client, request_id: str) -> CoordinationResult:
    """A whole run through the work queue (what must keep working under permissions)."""
    return await submit_job(client, build_request("What is 17 + 25?", request_id=request_id), timeout=20.0)

