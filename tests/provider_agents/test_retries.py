"""Retries, backoff, Retry-After, timeouts and typed failures, against a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from email.utils import formatdate

import pytest

from actors.provider_agents.errors import (
    MalformedProviderResponse,
    ProviderAuthError,
    ProviderClientError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderTimeout,
    RateLimited,
    TruncatedResponse,
)
from actors.provider_agents.http import backoff_delay, parse_retry_after
from actors.provider_agents.types import ChatRequest
from actors.provider_agents.wire import HttpProvider, http_provider
from config.provider_agents import ProviderKind, ProviderSettings, RetrySettings, Secret
from schemas.common import Message
from schemas.wire import ErrorCode
from tests.provider_agents.loopback import LoopbackServer, Reply

KEY = "sk-retry-test-abcdefghijklmnop"
OK = Reply(200, {"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
REQ = ChatRequest(model="m", messages=[Message(role="user", content="hi")])


class Sleeps:
    """Injected sleep: records each wait and yields without waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackServer]:
    async with LoopbackServer() as s:
        yield s


def provider(url: str, sleeps: Sleeps, *, kind: ProviderKind = ProviderKind.OPENAI, timeout_s: float = 5.0,
             wall_clock: float | None = None, **retry: object) -> HttpProvider:
    r = RetrySettings(**{"max_attempts": 4, "backoff_base_s": 0.5, "backoff_max_s": 8.0, "jitter": 0.0,
                         **retry})  # type: ignore[arg-type]
    kw: dict[str, object] = {"sleep": sleeps, "rng": random.Random(0)}
    if wall_clock is not None:
        kw["wall_clock"] = lambda: wall_clock
    return http_provider(ProviderSettings(name="p", kind=kind, base_url=url, api_key=Secret(KEY),
                                          timeout_s=timeout_s, retry=r), **kw)


async def run(p: HttpProvider, req: ChatRequest = REQ) -> object:
    try:
        return await p.complete(req)
    finally:
        await p.aclose()


async def test_429_then_success_honours_retry_after_seconds(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(429, {"error": "slow down"}, headers={"Retry-After": "3"}), OK)
    res = await run(provider(srv.url, sleeps))
    assert sleeps.waits == [3.0]
    assert res.attempts == 2 and res.content == "fine"  # type: ignore[attr-defined]
    assert len(srv.requests) == 2


async def test_429_retry_after_http_date_and_cap(srv: LoopbackServer) -> None:
    now = 1_700_000_000.0
    sleeps = Sleeps()
    srv.script(Reply(429, b"{}", headers={"Retry-After": formatdate(now + 6, usegmt=True)}),
               Reply(429, b"{}", headers={"Retry-After": "3600"}), OK)
    res = await run(provider(srv.url, sleeps, wall_clock=now, retry_after_cap_s=10.0))
    assert sleeps.waits == [6.0, 10.0]
    assert res.attempts == 3  # type: ignore[attr-defined]


async def test_429_without_retry_after_uses_backoff_and_exhausts(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(429, b"{}"))
    with pytest.raises(RateLimited) as ei:
        await run(provider(srv.url, sleeps, max_attempts=3))
    assert ei.value.attempts == 3 and ei.value.code is ErrorCode.OVERLOADED and ei.value.retryable
    assert sleeps.waits == [0.5, 1.0]


async def test_5xx_storm_exhausts_retries_with_exponential_backoff(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(503, {"error": "overloaded"}))
    with pytest.raises(ProviderServerError) as ei:
        await run(provider(srv.url, sleeps, max_attempts=5, backoff_max_s=3.0))
    assert ei.value.attempts == 5 and ei.value.status == 503 and ei.value.code is ErrorCode.UPSTREAM
    assert len(srv.requests) == 5
    assert sleeps.waits == [0.5, 1.0, 2.0, 3.0]


async def test_503_retry_after_is_honoured(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(503, b"{}", headers={"Retry-After": "4"}), Reply(502, b"{}"), OK)
    res = await run(provider(srv.url, sleeps))
    assert sleeps.waits == [4.0, 1.0]  # the server's hint, then plain backoff for retry 2
    assert res.attempts == 3  # type: ignore[attr-defined]


async def test_jitter_stays_within_its_band(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(500, b"{}"))
    with pytest.raises(ProviderServerError):
        await run(provider(srv.url, sleeps, max_attempts=4, jitter=0.5))
    for n, w in enumerate(sleeps.waits, start=1):
        full = 0.5 * 2 ** (n - 1)
        assert full * 0.5 <= w <= full
    assert len(set(sleeps.waits)) == 3


@pytest.mark.parametrize(("status", "exc"), [(400, ProviderClientError), (404, ProviderClientError),
                                             (422, ProviderClientError), (401, ProviderAuthError),
                                             (403, ProviderAuthError)])
async def test_other_4xx_are_not_retried(srv: LoopbackServer, status: int, exc: type[ProviderError]) -> None:
    sleeps = Sleeps()
    srv.script(Reply(status, {"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    with pytest.raises(exc) as ei:
        await run(provider(srv.url, sleeps))
    assert ei.value.attempts == 1 and not ei.value.retryable and ei.value.status == status
    assert sleeps.waits == [] and len(srv.requests) == 1
    assert KEY not in str(ei.value)  # the provider echoed our key; the error message does not


async def test_slow_response_times_out_and_is_retried(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(200, OK.body, delay=2.0))
    with pytest.raises(ProviderTimeout) as ei:
        await run(provider(srv.url, sleeps, timeout_s=0.2, max_attempts=2))
    assert ei.value.attempts == 2 and ei.value.code is ErrorCode.DEADLINE
    assert len(srv.requests) == 2


async def test_timeouts_not_retried_when_configured(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(200, OK.body, delay=2.0), OK)
    with pytest.raises(ProviderTimeout) as ei:
        await run(provider(srv.url, sleeps, timeout_s=0.2, retry_on_timeout=False))
    assert ei.value.attempts == 1 and sleeps.waits == []


async def test_intent_deadline_bounds_the_attempt(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(200, OK.body, delay=2.0))
    req = ChatRequest(model="m", messages=REQ.messages, deadline=time.monotonic() + 0.3)
    with pytest.raises(ProviderTimeout):
        await run(provider(srv.url, sleeps, timeout_s=30.0), req)
    assert len(srv.requests) == 1  # no second attempt: the deadline had passed


async def test_retry_after_beyond_deadline_gives_up_without_sleeping(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(429, b"{}", headers={"Retry-After": "20"}), OK)
    req = ChatRequest(model="m", messages=REQ.messages, deadline=time.monotonic() + 5.0)
    with pytest.raises(RateLimited) as ei:
        await run(provider(srv.url, sleeps), req)
    assert ei.value.retry_after_s == 20.0 and ei.value.attempts == 1 and sleeps.waits == []


async def test_malformed_json_is_typed_and_not_retried(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(200, b'{"choices": [ {"message": '), OK)
    with pytest.raises(MalformedProviderResponse) as ei:
        await run(provider(srv.url, sleeps))
    assert ei.value.attempts == 1 and len(srv.requests) == 1 and not ei.value.retryable


async def test_truncated_body_then_success(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(200, OK.body, truncate_to=12), OK)
    res = await run(provider(srv.url, sleeps))
    assert res.attempts == 2 and res.content == "fine"  # type: ignore[attr-defined]
    assert sleeps.waits == [0.5]


async def test_truncated_bodies_exhaust(srv: LoopbackServer) -> None:
    sleeps = Sleeps()
    srv.script(Reply(200, OK.body, truncate_to=5))
    with pytest.raises(TruncatedResponse) as ei:
        await run(provider(srv.url, sleeps, max_attempts=3, kind=ProviderKind.ANTHROPIC))
    assert ei.value.attempts == 3 and len(srv.requests) == 3


async def test_connection_refused_is_typed_and_retried() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    with pytest.raises(ProviderConnectionError) as ei:
        await run(provider(f"http://127.0.0.1:{port}", sleeps, max_attempts=3, kind=ProviderKind.GEMINI))
    assert ei.value.attempts == 3 and ei.value.code is ErrorCode.UNAVAILABLE
    assert sleeps.waits == [0.5, 1.0]


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("2.5", now=0, cap_s=30) == 2.5
    assert parse_retry_after("-4", now=0, cap_s=30) == 0.0
    assert parse_retry_after(None, now=0, cap_s=30) is None
    assert parse_retry_after("soon", now=0, cap_s=30) is None
    assert parse_retry_after(formatdate(100.0, usegmt=True), now=200.0, cap_s=30) == 0.0
    assert parse_retry_after(formatdate(112.0, usegmt=True), now=100.0, cap_s=30) == 12.0


def test_backoff_is_capped() -> None:
    r = RetrySettings(backoff_base_s=1.0, backoff_max_s=5.0, jitter=0.0)
    assert [backoff_delay(n, r, random.Random(0)) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
