"""run.py submit and tail against a running node (real coordinator, role injector and trace sink; fake
runtime and agents) on a hermetic nats-server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import nats
import pytest

import run
from bus.embedded import NatsServerProcess
from config.coordinator import CoordinatorSettings
from config.nats import NatsSettings
from config.node import NodeSettings
from config.settings import load_settings
from config.trace_sink import JsonlSettings, TraceSinkSettings
from ops.node import Node
from schemas import CoordinationResult, Role, StopReason
from tests.coordinator.fakes import BusFakes, FakeWorld, plan_of, reply_by_role


async def _wait_started(started: list[str], n: int) -> None:
    for _ in range(400):
        if len(started) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"actors started: {started}")


async def test_submit_and_tail_against_a_running_node(fresh_nats_server: NatsServerProcess, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    url = fresh_nats_server.url
    settings = msgspec.structs.replace(
        load_settings(environ={}),
        nats=NatsSettings(servers=[url], embedded="never"),
        node=NodeSettings(actors=["trace_sink", "role_injector", "coordinator"], node_id="cli"),
        coordinator=CoordinatorSettings(route_timeout_s=2.0, agent_timeout_s=2.0),
        trace_sink=TraceSinkSettings(jsonl=JsonlSettings(path=str(tmp_path / "trace.jsonl"))),
    )
    started: list[str] = []

    async def on_started(name: str) -> None:
        started.append(name)

    fakes_nc = await nats.connect(url)
    world = FakeWorld(route_plan=plan_of([(3, Role.THINKER), (1, Role.WORKER), (2, Role.VERIFIER)]),
                      reply_plan=reply_by_role(worker="42", thinker="add the numbers", verifier="ACCEPT: correct"))
    fakes = BusFakes(fakes_nc, world)
    await fakes.start()
    node = Node(settings, on_started=on_started)
    await node.start()
    try:
        await _wait_started(started, 3)
        rc = await asyncio.to_thread(run.main, ["submit", "What is 17 + 25?", "--nats", url, "--request-id",
                                                "cli-1", "--json"])
        out = capsys.readouterr().out
        assert rc == 0
        res = msgspec.json.decode(out.strip().splitlines()[-1], type=CoordinationResult)
        assert (res.answer, res.stop_reason, len(res.turns)) == ("42", StopReason.ACCEPTED, 3)
        assert [t.assignment.agent_id for t in res.turns] == [3, 1, 2]

        rc = await asyncio.to_thread(run.main, ["submit", "Again?", "--nats", url, "--request-id", "cli-2"])
        text = capsys.readouterr().out
        assert rc == 0 and "stopped by accepted after 3 turn(s)" in text and "answer: 42" in text
        assert "as Thinker" in text and "verdict: ACCEPT" in text

        rc = await asyncio.to_thread(run.main, ["tail", "--nats", url, "--request-id", "cli-1", "--replay",
                                                "--until-finished"])
        lines = capsys.readouterr().out.strip().splitlines()
        assert rc == 0
        kinds = [ln.split()[3] for ln in lines]
        assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
        assert kinds.count("route_decided") == 3 and "verdict_recorded" in kinds
        assert all(" cli-1 " in ln for ln in lines)

        rc = await asyncio.to_thread(run.main, ["tail", "--nats", url, "--kind", "run_finished", "--replay",
                                                "--idle", "0.5"])
        lines = capsys.readouterr().out.strip().splitlines()
        assert rc == 0 and len(lines) == 2 and all("run_finished" in ln for ln in lines)

        # the trace sink stored every event of both runs, redacted (content hashed, not stored)
        path = tmp_path / "trace.jsonl"
        for _ in range(100):
            if path.exists() and sum(1 for _ in path.open()) >= 2 * len(kinds):
                break
            await asyncio.sleep(0.05)
        records = [json.loads(ln) for ln in path.open()]
        assert len(records) == 2 * len(kinds)
        assert "What is 17 + 25?" not in path.read_text()
    finally:
        await node.stop()
        await fakes.drain()
        await fakes_nc.close()


async def test_submit_without_coordinator_fails_with_a_clear_message(
        fresh_nats_server: NatsServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    # a server of its own: once any coordinator has created the job queue, a job waits there for one instead
    nats_server = fresh_nats_server
    rc = await asyncio.to_thread(run.main, ["submit", "hi", "--nats", nats_server.url, "--via", "request"])
    err = capsys.readouterr().err
    assert rc == 1 and "no actor is serving trinity.coord.request" in err
    rc = await asyncio.to_thread(run.main, ["submit", "hi", "--nats", nats_server.url])
    err = capsys.readouterr().err
    assert rc == 1 and "no coordinator has set up the job queue" in err


def test_bad_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["tail", "--until-finished", "--nats", "nats://127.0.0.1:1"]) == 2
    assert "--until-finished needs --request-id" in capsys.readouterr().err
    assert run.main(["submit", "x", "--set", "nosuch.field=1"]) == 2
    assert "unknown section 'nosuch'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        run.main(["node", "--bogus"])
    assert ei.value.code == 2
