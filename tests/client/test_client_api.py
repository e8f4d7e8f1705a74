"""The public Python client (``trinity_nats.client``) against a real nats-server and a coordinator with scripted
fake runtime and agents: submit, typed trace events, wait, resubmit by id; its names pinned; no torch needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import nats
import pytest

import trinity_nats.client as client_module
from actors.coordinator.actor import CoordinatorActor
from bus import subjects
from bus.codec import decode
from bus.embedded import NatsServerProcess
from bus.jetstream import MSG_ID_HEADER, ensure_stream, jobs_stream_spec, results_stream_spec
from config.coordinator import CoordinatorSettings
from tests.e2e.support import results_stored
from tests.e2e.test_jobs import Scripted, scripted  # noqa: F401  (the fixture)
from trinity_nats.client import (
    CoordinationRequest,
    JobQueueMissing,
    JobResultTimeout,
    RouteDecided,
    RunFinished,
    RunStarted,
    RunStatus,
    StopReason,
    TrinityClient,
    UnknownRequest,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = CoordinatorSettings(route_timeout_s=2.0, agent_timeout_s=2.0, role_inject_mode="bus")

PUBLIC_NAMES = [
    "AgentCallFailed", "AgentCallFinished", "AgentCallStarted", "Budget", "BudgetRecorded", "BusError",
    "CoordinationRequest", "CoordinationResult", "ErrorCode", "JobQueueMissing", "JobResultTimeout", "RemoteError",
    "RequestTimeout", "RoleAssigned", "RouteDecided", "RouteDeferred", "RunFailed", "RunFinished", "RunRedelivered",
    "RunStarted", "RunStatus", "StopReason", "TraceEvent", "TrinityClient", "UnknownRequest", "VerdictRecorded",
    "build_request", "new_request_id",
]
CLIENT_METHODS = ["close", "connect", "events", "resubmit", "result", "run", "submit", "wait"]


def test_public_names_are_pinned() -> None:
    assert client_module.__all__ == PUBLIC_NAMES
    assert all(hasattr(client_module, n) for n in PUBLIC_NAMES)
    assert sorted(n for n in vars(TrinityClient) if not n.startswith("_")) == CLIENT_METHODS


async def test_the_client_submits_without_torch(fresh_nats_server: NatsServerProcess, tmp_path: Path) -> None:
    """In a fresh interpreter where importing torch (or the other server-side libraries) fails, the client imports,
    queues a job on a real server and looks for its result."""
    nc = await nats.connect(fresh_nats_server.url)
    js = nc.jetstream()
    await ensure_stream(js, jobs_stream_spec())
    await ensure_stream(js, results_stream_spec())
    code = textwrap.dedent("""
        import asyncio, importlib.abc, sys
        BLOCKED = {"torch", "transformers", "safetensors", "prometheus_client", "starlette", "uvicorn", "httpx",
                   "numpy", "huggingface_hub"}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked: a submit-only client must not need it")
                return None
        sys.meta_path.insert(0, Block())
        from trinity_nats.client import TrinityClient

        async def main():
            async with await TrinityClient.connect(sys.argv[1]) as trinity:
                rid = await trinity.submit("What is 2 + 2?", request_id="no-torch-1")
                print(rid, await trinity.result(rid))
        asyncio.run(main())
        print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    """)
    try:
        out = subprocess.run([sys.executable, "-c", code, fresh_nats_server.url], cwd=tmp_path,
                             env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["no-torch-1", "None", "[]"]
        job = await js.get_last_msg(subjects.JOBS_STREAM, subjects.COORD_JOBS)
        assert (job.headers or {})[MSG_ID_HEADER] == "no-torch-1"
        assert decode(job.data or b"", CoordinationRequest).query == "What is 2 + 2?"
    finally:
        await nc.close()


async def test_submit_events_wait_and_resubmit(fresh_nats_server: NatsServerProcess,
                                               scripted: Scripted) -> None:  # noqa: F811
    async with await TrinityClient.connect(fresh_nats_server.url) as trinity:
        with pytest.raises(JobQueueMissing):  # no coordinator has created the queue yet
            await trinity.submit("early?", timeout=2.0)
        world = await scripted()
        nc = await nats.connect(fresh_nats_server.url)
        coordinator = CoordinatorActor(nc, FAST)
        await coordinator.start()
        try:
            rid = await trinity.submit("What is 17 + 25?", request_id=f"c-{uuid.uuid4().hex[:8]}")
            events = [e async for e in trinity.events(rid)]
            assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
            assert {e.request_id for e in events} == {rid}
            routes = [e for e in events if isinstance(e, RouteDecided)]
            assert [(r.turn, r.decision.agent_id) for r in routes] == [(0, 1), (1, 2)]

            result = await trinity.wait(rid, timeout=10)
            assert (result.status, result.answer, result.stop_reason) == (RunStatus.OK, "42", StopReason.ACCEPTED)
            assert [e.turn for e in [ev async for ev in trinity.events(rid, kinds={"route_decided"})]] == [0, 1]

            calls = len(world.calls)
            assert await trinity.resubmit(rid) == rid  # finished: its stored result stands, nothing runs again
            assert (await trinity.wait(rid, timeout=0)).answer == "42"
            assert len(world.calls) == calls and await results_stored(trinity.nc, rid) == 1
            with pytest.raises(UnknownRequest, match="never-sent"):
                await trinity.resubmit("never-sent")
            with pytest.raises(JobResultTimeout):
                await trinity.wait("never-sent", timeout=0)

            again = await trinity.run("What is 17 + 25?", timeout=10)
            assert again.answer == "42" and again.request_id != rid
        finally:
            await coordinator.drain(timeout=2.0)
            await nc.close()
