"""``$SRV.STATS`` / ``$SRV.INFO`` of ActorService over a real nats-server: the real handler is timed, errors are
counted, and work that arrives outside a request (a work-queue job) is listed, counted and timed too."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from bus import rpc
from bus.errors import Rejected, RemoteError
from bus.service import ActorService, Endpoint, RequestContext, WorkEndpoint
from schemas import ErrorCode, Message

SLEEP_S = 0.2


class Out(msgspec.Struct, frozen=True):
    text: str


async def _ask(nc: Client, verb: str, name: str) -> dict[str, Any]:
    return json.loads((await nc.request(f"$SRV.{verb}.{name}", b"", timeout=2)).data)  # type: ignore[no-any-return]


def _sleepy(nc: Client, name: str) -> ActorService:
    async def handle(req: Message, ctx: RequestContext) -> Out:
        await asyncio.sleep(SLEEP_S)
        if req.content == "reject":
            raise Rejected(ErrorCode.INVALID, "content 'reject' is refused; send anything else")
        return Out(text=req.content)

    return ActorService(nc, name=name, endpoints=[Endpoint("slow", f"t.{name}", Message, handle)],
                        work=[WorkEndpoint("jobs", subject=f"t.{name}.jobs", queue_group="workers")])


async def test_stats_time_the_handler_not_the_dispatch(nc: Client) -> None:
    svc = _sleepy(nc, "stats-slow")
    await svc.start()
    try:
        outs = await asyncio.gather(*(rpc.request(nc, "t.stats-slow", Message(role="user", content=f"m{i}"), Out,
                                                  timeout=5) for i in range(3)))
        assert [o.text for o in outs] == ["m0", "m1", "m2"]
        with pytest.raises(RemoteError) as err:
            await rpc.request(nc, "t.stats-slow", Message(role="user", content="reject"), Out, timeout=5)
        assert err.value.code is ErrorCode.INVALID
        stats = await _ask(nc, "STATS", "stats-slow")
        ep = {e["name"]: e for e in stats["endpoints"]}["slow"]
        assert ep["num_requests"] == 4
        assert ep["num_errors"] == 1 and ep["last_error"] == "invalid"
        assert ep["average_processing_time"] >= SLEEP_S * 1e9  # ns; nats.py alone reads tens of microseconds
        assert ep["processing_time"] >= 4 * SLEEP_S * 1e9
        assert ep["data"]["ok"] == 3 and ep["data"]["rejected"] == 1
    finally:
        await svc.drain()


async def test_work_endpoint_jobs_are_listed_counted_and_timed(nc: Client) -> None:
    svc = _sleepy(nc, "stats-work")
    await svc.start()
    try:
        info = await _ask(nc, "INFO", "stats-work")
        assert {e["name"]: (e["subject"], e["queue_group"]) for e in info["endpoints"]} == {
            "slow": ("t.stats-work", "q"), "jobs": ("t.stats-work.jobs", "workers")}

        async def one(i: int) -> None:
            async with svc.job("jobs"):
                await asyncio.sleep(SLEEP_S)
                if i == 4:
                    raise ValueError("job 4 fails")

        results = await asyncio.gather(*(one(i) for i in range(5)), return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["NoneType"] * 4 + ["ValueError"]
        ep = {e["name"]: e for e in (await _ask(nc, "STATS", "stats-work"))["endpoints"]}["jobs"]
        assert ep["num_requests"] == 5 and ep["num_errors"] == 1 and ep["last_error"] == "internal"
        assert ep["average_processing_time"] >= SLEEP_S * 1e9
        assert ep["data"]["ok"] == 4 and ep["data"]["crashed"] == 1 and ep["data"]["in_flight"] == 0
        got = REGISTRY.get_sample_value("trinity_endpoint_requests_total",
                                        {"service": "stats-work", "endpoint": "jobs", "outcome": "ok"})
        assert got == 4
        with pytest.raises(KeyError, match="no work endpoint 'slow'"):
            async with svc.job("slow"):
                pass
    finally:
        await svc.drain()
