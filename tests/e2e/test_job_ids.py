"""Ids that are not one subject token, jobs whose ``Nats-Msg-Id`` is not their body's id, and invalid UTF-8,
against a real coordinator on a real nats-server: typed ``malformed`` replies on the request subject; on the
work queue, nothing runs and nothing is stored under any id but the job's own."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable

import msgspec
import nats
import pytest
from nats.aio.client import Client

from actors.coordinator.actor import CoordinatorActor
from actors.role_injector.actor import RoleInjectorActor
from bus import subjects
from bus.codec import encode
from bus.embedded import NatsServerProcess
from bus.errors import RemoteError
from bus.jetstream import MSG_ID_HEADER
from bus.rpc import error_from_msg
from config.coordinator import CoordinatorSettings
from ops.client import build_request, stored_result, submit_job
from schemas import ErrorCode, RunStatus
from tests.coordinator.fakes import BusFakes, FakeWorld
from tests.e2e.fake_services import world

FAST = CoordinatorSettings(route_timeout_s=2.0, agent_timeout_s=2.0, role_inject_mode="bus")
#: Not one subject token: a trailing newline ($ matched before it), dots, wildcards, spaces, empty, too long,
#: non-ASCII, a control character.
BAD_IDS = ["abc\n", "abc\r\n", "a.b", "a*", "*", ">", "a>", "a b", " ", "", "x" * 129, "é", "a\x00b", "a\tb"]


async def _until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if cond():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


async def _stream_messages(nc: Client, stream: str) -> int:
    return (await nc.jetstream().stream_info(stream)).state.messages


@pytest.fixture
async def node(fresh_nats_server: NatsServerProcess) -> AsyncIterator[tuple[Client, CoordinatorActor, FakeWorld]]:
    """A coordinator (request/reply and work queue), a role injector and the scripted fake runtime and agents,
    plus a separate client connection."""
    nc = await nats.connect(fresh_nats_server.url)
    client = await nats.connect(fresh_nats_server.url)
    fake_world = world()
    actors = [BusFakes(nc, fake_world), RoleInjectorActor(nc), CoordinatorActor(nc, FAST)]
    for a in actors:
        await a.start()
    coordinator = actors[-1]
    assert isinstance(coordinator, CoordinatorActor)
    try:
        yield client, coordinator, fake_world
    finally:
        for a in reversed(actors):
            await a.drain()
        await client.close()
        await nc.close()


async def test_bad_ids_and_invalid_utf8_get_typed_malformed_replies(
        node: tuple[Client, CoordinatorActor, FakeWorld]) -> None:
    client, coordinator, fake_world = node
    payloads = [json.dumps({"request_id": bad, "query": "What is 17 + 25?"}).encode() for bad in BAD_IDS]
    payloads += [b'{"request_id": "u\xff", "query": "q"}', b'{"request_id": "u1", "query": "\xed\xa0\x80"}',
                 b'{"request_id": "u2", "query": "\xc3"}']
    for data in payloads:
        msg = await client.request(subjects.coord_request(), data, timeout=5.0)
        err = error_from_msg(msg)
        assert err is not None and err.code == ErrorCode.MALFORMED, (data, msg.data)
        assert "request_id" in err.message or "UTF-8" in err.message, err.message
    stats = coordinator.service.stats()["coordinate"]
    assert stats["malformed"] == len(payloads) and stats["crashed"] == 0
    assert coordinator.dedupe.stats.started == 0 and fake_world.calls == []
    # the coordinator kept serving
    ok = await client.request(subjects.coord_request(), encode(build_request("What is 17 + 25?", request_id="ok-1")),
                              timeout=10.0)
    assert error_from_msg(ok) is None


async def test_bad_id_jobs_run_nowhere_and_store_nothing(node: tuple[Client, CoordinatorActor, FakeWorld]) -> None:
    client, coordinator, fake_world = node
    js = client.jetstream()
    jobs: list[tuple[bytes, dict[str, str] | None]] = []
    for bad in BAD_IDS:
        data = json.dumps({"request_id": bad, "query": "What is 17 + 25?"}).encode()
        jobs.append((data, None))
        if bad.strip() and "\x00" not in bad:
            jobs.append((data, {MSG_ID_HEADER: bad}))  # the probe: "abc\n" arrives as Nats-Msg-Id "abc"
    # a valid Nats-Msg-Id whose body names another (invalid) id: no error stored under the header's id either
    jobs.append((json.dumps({"request_id": "xyz\n", "query": "q"}).encode(), {MSG_ID_HEADER: "xyz"}))
    jobs.append((json.dumps({"request_id": "a.b", "query": "q"}).encode(), {MSG_ID_HEADER: "a-b"}))
    queued = 0
    for data, headers in jobs:
        ack = await js.publish(subjects.COORD_JOBS, data, headers=headers)
        queued += not ack.duplicate  # "abc\n" and "abc\r\n" both arrive as Nats-Msg-Id "abc": stored once
    assert queued >= len(jobs) - 2
    await _until(lambda: coordinator.jobs.counters.malformed == queued, "every bad job to be seen")
    assert await _stream_messages(client, subjects.RESULTS_STREAM) == 0  # stored under no id at all
    assert await _stream_messages(client, subjects.JOBS_STREAM) == 0  # terminated, not redelivered
    assert coordinator.jobs.counters.results == coordinator.jobs.counters.errors == 0
    assert fake_world.calls == [] and coordinator.dedupe.stats.started == 0

    # a job whose body cannot be read but whose Nats-Msg-Id is its own gets a typed error stored under it
    await js.publish(subjects.COORD_JOBS, b'{"request_id": "utf8-1", "query": "\xff\xfe"}',
                     headers={MSG_ID_HEADER: "utf8-1"})
    with pytest.raises(RemoteError) as ei:
        await submit_job(client, build_request("ignored: already queued", request_id="utf8-1"), timeout=10.0)
    assert ei.value.code == ErrorCode.MALFORMED and "UTF-8" in ei.value.message


async def test_a_job_whose_msg_id_is_not_its_body_id_is_terminated_with_nothing_stored(
        node: tuple[Client, CoordinatorActor, FakeWorld]) -> None:
    client, coordinator, fake_world = node
    js = client.jetstream()
    victim, attacker = f"victim-{uuid.uuid4().hex[:8]}", f"attacker-{uuid.uuid4().hex[:8]}"
    forged = build_request("What is 17 + 25?", request_id=attacker)
    await js.publish(subjects.COORD_JOBS, encode(forged), headers={MSG_ID_HEADER: victim})
    unlabeled = build_request("What is 17 + 25?", request_id=f"nohdr-{uuid.uuid4().hex[:8]}")
    await js.publish(subjects.COORD_JOBS, encode(unlabeled))  # no Nats-Msg-Id at all: not its id either
    await _until(lambda: coordinator.jobs.counters.id_mismatch == 2, "both jobs to be terminated")
    for rid in (victim, attacker, unlabeled.request_id):
        assert await stored_result(client, rid) is None
    assert await _stream_messages(client, subjects.RESULTS_STREAM) == 0
    assert await _stream_messages(client, subjects.JOBS_STREAM) == 0
    assert fake_world.calls == [] and coordinator.dedupe.stats.started == 0

    # a job labelled with its own id runs as usual
    own = build_request("What is 17 + 25?", request_id=f"own-{uuid.uuid4().hex[:8]}")
    res = await submit_job(client, own, timeout=10.0)
    assert (res.status, res.answer) == (RunStatus.OK, "42")
    assert coordinator.jobs.counters.results == 1 and coordinator.jobs.counters.id_mismatch == 2
    assert msgspec.json.encode(await stored_result(client, own.request_id)) == msgspec.json.encode(res)
