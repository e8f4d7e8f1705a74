"""The coordinator and role injector actors over a real NATS server, with fake runtime and agent actors."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import pytest
from nats.aio.client import Client

from actors.coordinator.actor import CoordinatorActor
from actors.coordinator.errors import CoordinatorConfigError
from actors.role_injector.actor import RoleInjectorActor, local_injector, registry_from_settings
from bus import rpc, subjects
from bus.codec import decode
from bus.errors import RemoteError
from config.coordinator import CoordinatorSettings, RoleInjectorSettings
from schemas import (
    Budget,
    CoordinationRequest,
    CoordinationResult,
    ErrorCode,
    Role,
    RoleSource,
    RunStatus,
    StopReason,
)
from schemas.roles import RoleInjectReply, RoleInjectRequest
from schemas.trace import AgentCallFinished, TraceEvent
from tests.coordinator.fakes import BusFakes, FakeWorld, ProfiledWorld, plan_of, reply_by_role

W, T, V = Role.WORKER, Role.THINKER, Role.VERIFIER
FAST = CoordinatorSettings(route_timeout_s=2.0, agent_timeout_s=2.0, role_inject_timeout_s=2.0)


def rid() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@dataclass
class Node:
    world: FakeWorld
    fakes: BusFakes
    coordinator: CoordinatorActor
    injector: RoleInjectorActor | None


@pytest.fixture
async def make_node(nc: Client) -> AsyncIterator:  # type: ignore[type-arg]
    started: list[Node] = []

    async def make(world: FakeWorld, settings: CoordinatorSettings = FAST, *, with_injector: bool = True,
                   **fake_kw: object) -> Node:
        fakes = BusFakes(nc, world, **fake_kw)  # type: ignore[arg-type]
        await fakes.start()
        injector = RoleInjectorActor(nc) if with_injector else None
        if injector:
            await injector.start()
        local = (local_injector(registry_from_settings(RoleInjectorSettings()))
                 if settings.role_inject_mode == "local" else None)
        coordinator = CoordinatorActor(nc, settings, local_injector=local)
        await coordinator.start()
        node = Node(world, fakes, coordinator, injector)
        started.append(node)
        return node

    yield make
    for node in started:
        await node.coordinator.drain(timeout=2.0)
        if node.injector:
            await node.injector.drain()
        await node.fakes.drain()


async def submit(nc: Client, req: CoordinationRequest, timeout: float = 10.0) -> CoordinationResult:
    return await rpc.request(nc, subjects.coord_request(), req, CoordinationResult, timeout=timeout)


async def read_trace(nc: Client, request_id: str, expected: int) -> list[tuple[str, TraceEvent, dict[str, str]]]:
    js = nc.jetstream()
    sub = await js.subscribe(subjects.trace_filter(request_id), ordered_consumer=True)
    out: list[tuple[str, TraceEvent, dict[str, str]]] = []
    for _ in range(expected):
        msg = await sub.next_msg(timeout=5.0)
        out.append((msg.subject, decode(msg.data, TraceEvent), dict(msg.headers or {})))  # type: ignore[arg-type]
    await sub.unsubscribe()
    return out


async def test_run_over_the_bus_with_traces_in_jetstream(nc: Client, make_node) -> None:  # type: ignore[no-untyped-def]
    world = FakeWorld(plan_of([(1, T), (2, W), (3, V)]),
                      reply_by_role(thinker="plan <suggested_role>worker</suggested_role>", worker="42",
                                    verifier="ACCEPT"))
    node = await make_node(world)
    r = rid()
    res = await submit(nc, CoordinationRequest(request_id=r, query="What is 17 + 25?"))
    assert res.status is RunStatus.OK and res.answer == "42" and res.stop_reason is StopReason.ACCEPTED
    assert [(t.assignment.agent_id, t.assignment.role) for t in res.turns] == [(1, T), (2, W), (3, V)]
    assert res.turns[1].assignment.source is RoleSource.THINKER_SUGGESTION
    assert all(t.assignment.role_pack == "trinity-default/2" for t in res.turns)
    # the role injector served the prompts: the verifier saw its system prompt and the question with the
    # Worker's answer, and no bookkeeping (turn numbers, agent ids) small models would copy
    msgs = world.calls[2].messages
    assert msgs[0].role == "system" and "Start with ACCEPT" in msgs[0].content
    assert msgs[-1].content == "Question: What is 17 + 25?\nAnswer: 42\nIs the answer correct?"
    assert not any("turn" in m.content or "agent" in m.content for m in msgs)
    # provenance headers on the bus calls: request id, turn, causation = the event just before
    assert [(p.request_id, p.turn) for p in node.fakes.route_provenance] == [(r, 0), (r, 1), (r, 2)]
    assert await node.coordinator.traces.flush(5.0)
    trace = await read_trace(nc, r, 18)
    kinds = [ev.kind for _, ev, _ in trace]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished" and kinds.count("route_decided") == 3
    assert [s for s, _, _ in trace] == [f"trinity.trace.{r}.{k}" for k in kinds]
    events = [ev for _, ev, _ in trace]
    assert events[0].causation_id == r
    for prev, ev in itertools.pairwise(events):
        assert ev.causation_id == prev.event_id
    for _, ev, headers in trace:
        assert headers["Nats-Msg-Id"] == ev.event_id and headers["Trinity-Request-Id"] == r
        assert headers["Trinity-Causation-Id"] == ev.causation_id
    started = [ev for ev in events if ev.kind == "agent_call_started"]
    assert node.fakes.agent_provenance[0].causation_id == started[0].event_id
    finished = [ev for ev in events if isinstance(ev, AgentCallFinished)]
    assert finished[1].receipt.content.startswith("sha256:")  # contents hashed by default
    assert node.coordinator.stats()["trace"]["dropped"] == 0


async def test_agent_failures_fall_back_by_logit(nc: Client, make_node) -> None:  # type: ignore[no-untyped-def]
    # agent 3 answers a typed error, agent 0 is not served at all, agent 1 is too slow, agent 2 answers
    world = FakeWorld(plan_of([(3, W), (2, V)]), failing_agents={3})
    settings = msgspec.structs.replace(FAST, agent_timeout_s=0.3)
    await make_node(world, settings, served_agents=[1, 2, 3, 4, 5, 6], slow_agents={1: 1.0})
    res = await submit(nc, CoordinationRequest(request_id=rid(), query="q?"))
    t0 = res.turns[0]
    assert [(f.agent_id, f.error_code, f.fallback_agent_id) for f in t0.failures] == [
        (3, "upstream", 0), (0, "unavailable", 1), (1, "deadline", 2)]
    assert "no actor is serving trinity.agent.0.call" in t0.failures[1].message
    assert t0.receipt is not None and t0.receipt.agent_id == 2 and t0.assignment.agent_id == 2
    assert res.answer == "answer 0" and res.stop_reason is StopReason.ACCEPTED


async def test_agent_mask_over_the_bus(nc: Client, make_node) -> None:  # type: ignore[no-untyped-def]
    world = FakeWorld(plan_of([(6, W), (6, V)]))
    await make_node(world)
    res = await submit(nc, CoordinationRequest(request_id=rid(), query="q?", agent_mask=[4, 5]))
    assert {c.agent_id for c in world.calls} == {4}
    assert res.turns[0].decision.agent_ranking == [4, 5]


async def test_budget_over_the_bus(nc: Client, make_node) -> None:  # type: ignore[no-untyped-def]
    world = FakeWorld(plan_of([(0, W)]))
    await make_node(world)
    res = await submit(nc, CoordinationRequest(request_id=rid(), query="q?", budget=Budget(max_turns=3)))
    assert res.stop_reason is StopReason.MAX_TURNS and len(res.turns) == 3 and res.answer == "answer 2"


async def test_duplicate_ids_are_answered_once(nc: Client, make_node) -> None:  # type: ignore[no-untyped-def]
    world = FakeWorld(plan_of([(0, W), (1, V)]))
    await make_node(world, slow_agents={0: 0.2})
    req = CoordinationRequest(request_id=rid(), query="q?")
    results = await asyncio.gather(*(submit(nc, req) for _ in range(5)))
    assert len(world.calls) == 2  # one run: worker + verifier
    assert all(r == results[0] for r in results)
    again = await submit(nc, req)  # after completion: the cached result
    assert again == results[0] and len(world.calls) == 2
    with pytest.raises(RemoteError) as e:
        await submit(nc, CoordinationRequest(request_id=req.request_id, query="another question"))
    assert e.value.code is ErrorCode.INVALID and "already used for a different request" in e.value.message


async def test_local_role_injection(nc: Client, make_node) -> None:  # type: ignore[no-untyped-def]
    world = FakeWorld(plan_of([(0, W), (1, V)]))
    settings = msgspec.structs.replace(FAST, role_inject_mode="local")
    await make_node(world, settings, with_injector=False)
    res = await submit(nc, CoordinationRequest(request_id=rid(), query="q?"))
    assert res.stop_reason is StopReason.ACCEPTED and res.turns[0].assignment.role_pack == "trinity-default/2"
    with pytest.raises(CoordinatorConfigError, match="no local_injector"):
        CoordinatorActor(nc, settings)


async def test_missing_role_injector_and_runtime(nc: Client, make_node) -> None:  # type: ignore[no-untyped-def]
    world = FakeWorld(plan_of([(0, W)]))
    node = await make_node(world, msgspec.structs.replace(FAST, fleet_wait_s=0.5, fleet_retry_s=0.1),
                           with_injector=False)
    res = await submit(nc, CoordinationRequest(request_id=rid(), query="q?"))
    assert res.stop_reason is StopReason.ROLE_INJECT_FAILED and res.status is RunStatus.FAILED
    assert res.error is not None and "trinity.role.inject" in res.error
    # no runtime serves the adapter: the run waits for one (route_deferred), then fails when its wait ends
    res = await submit(nc, CoordinationRequest(request_id=rid(), query="q?", adapter="nosuchadapter"))
    assert res.stop_reason is StopReason.ROUTE_FAILED
    assert res.error is not None and "trinity.route.torch.nosuchadapter" in res.error
    assert "no runtime joined within" in res.error
    assert node.coordinator.deferred_runs == 1


async def test_bad_requests_get_typed_errors(nc: Client, make_node) -> None:  # type: ignore[no-untyped-def]
    await make_node(FakeWorld(plan_of([(0, W)])))
    msg = await nc.request(subjects.coord_request(), b'{"request_id": "x", "query": ""}', timeout=2.0)
    err = rpc.error_from_msg(msg)
    assert err is not None and err.code is ErrorCode.MALFORMED and "query" in err.message
    with pytest.raises(RemoteError) as e:
        await rpc.request(nc, subjects.ROLE_INJECT,
                          RoleInjectRequest(request_id="x", turn=0, agent_id=0, role=W, query="q", role_pack="nope/9"),
                          RoleInjectReply, timeout=2.0)
    assert e.value.code is ErrorCode.NOT_FOUND
    assert "holds sakana-fugu/1, trinity-default/1, trinity-default/2" in e.value.message


async def test_tracing_never_blocks_coordination(nc: Client, make_node) -> None:  # type: ignore[no-untyped-def]
    world = FakeWorld(plan_of([(0, W), (1, V)]))
    settings = msgspec.structs.replace(FAST, trace_buffer=2)
    node = await make_node(world, settings)
    # stall the publisher so the buffer fills up
    node.coordinator.traces._task.cancel()
    res = await submit(nc, CoordinationRequest(request_id=rid(), query="q?"))
    assert res.stop_reason is StopReason.ACCEPTED
    counters = node.coordinator.stats()["trace"]
    # 13 events: run_started, 2 x (route, role, call started/finished, budget), verdict, run_finished
    assert (counters["emitted"], counters["dropped"]) == (2, 11)


async def test_sakana_run_gets_fugu_prompts_from_the_injector(nc: Client, make_node) -> None:  # type: ignore[no-untyped-def]
    """Under the sakana profile the coordinator asks the injector (over NATS) for Sakana's own agent prompts:
    the Thinker's suggestion reaches the next agent, and every agent sees the router's context."""
    world = ProfiledWorld(plan_of([(1, T), (5, T), (2, V)]),
                          reply_by_role(thinker="<suggestion>add the tens first</suggestion>"
                                                "<suggested_role>solver</suggested_role>",
                                        worker="<idea>20 + 10 + 12</idea> 42", verifier="Verdict: ACCEPT"))
    settings = msgspec.structs.replace(FAST, routing_profile="sakana", route_rule="argmax")
    await make_node(world, settings)
    res = await submit(nc, CoordinationRequest(request_id=rid(), query="What is 17 + 25?"))
    assert res.stop_reason is StopReason.ACCEPTED and res.answer == "<idea>20 + 10 + 12</idea> 42"
    assert [t.assignment.role for t in res.turns] == [T, W, V] and res.routing_profile == "sakana"
    assert all(t.assignment.role_pack == "sakana-fugu/1" for t in res.turns)
    thinker, worker, verifier = (c.messages for c in world.calls)
    assert [m.role for m in worker] == ["system", "user"] and worker[0].content.startswith("You are a helpful")
    assert worker[1].content.startswith("What is 17 + 25?\nYou may see other agents' reference thought")
    assert worker[1].content.endswith("when drafting your response, thinking of following:\n"
                                      "<suggestion>add the tens first</suggestion>")
    assert "<suggested_role>next_agent_role</suggested_role>" in thinker[1].content
    assert "Current response" not in thinker[1].content  # no Worker reply yet
    assert "<reference_thought_0>20 + 10 + 12</reference_thought_0>\n</query>" in verifier[1].content
    assert "<response>\n<idea>20 + 10 + 12</idea> 42\n</response>" in verifier[1].content
    assert "<suggestion>" not in verifier[1].content.split("Be critical")[-1]  # the Worker used the suggestion


async def test_drain_keeps_time_to_flush_the_trace_of_a_run_that_ends_during_it(
        nc: Client, make_node) -> None:  # type: ignore[no-untyped-def]
    # A run that ends while the coordinator drains gets its run_finished onto the stream, and the runs and the
    # trace flush share one budget: the node abandons an actor at its drain budget, so a flush granted a whole
    # second budget after the runs took theirs could be cut off, losing the run's end from the trace.
    world = FakeWorld(plan_of([(1, W), (2, V)]), reply_by_role(worker="42", verifier="ACCEPT"))
    node = await make_node(world, slow_agents={1: 0.5})
    coordinator: CoordinatorActor = node.coordinator
    loop = asyncio.get_running_loop()
    granted: dict[str, tuple[float, float]] = {}  # what each step was given: (when it began, its timeout)

    def recording(name: str, method):  # type: ignore[no-untyped-def]
        async def wrapped(*, timeout: float) -> object:
            granted[name] = (loop.time(), timeout)
            return await method(timeout=timeout)
        return wrapped

    coordinator.service.drain = recording("runs", coordinator.service.drain)  # type: ignore[method-assign]
    coordinator.traces.close = recording("flush", coordinator.traces.close)  # type: ignore[method-assign]
    r = rid()
    running = asyncio.create_task(submit(nc, CoordinationRequest(request_id=r, query="What is 17 + 25?")))
    for _ in range(500):
        if world.calls:
            break
        await asyncio.sleep(0.01)
    assert world.calls, "the Worker call never started"
    began = loop.time()
    await coordinator.drain(timeout=4.0)
    res = await running
    assert (res.status, res.answer) == (RunStatus.OK, "42")
    _, runs_timeout = granted["runs"]
    flush_began, flush_timeout = granted["flush"]
    assert runs_timeout == pytest.approx(4.0 * (1 - CoordinatorActor.TRACE_FLUSH_SHARE))
    # the flush may run only to the end of the drain's own budget, and always has at least its share of it
    assert flush_began + flush_timeout <= began + 4.0 + 1e-3
    assert flush_timeout >= 4.0 * CoordinatorActor.TRACE_FLUSH_SHARE - 1e-3
    counters = coordinator.stats()["trace"]
    assert counters["published"] == counters["emitted"] and counters["dropped"] == 0
    kinds = [ev.kind for _, ev, _ in await read_trace(nc, r, counters["emitted"])]
    assert kinds[-1] == "run_finished"
