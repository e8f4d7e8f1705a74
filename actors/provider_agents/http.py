"""JSON-over-HTTP with deadlines, typed errors and retries (exponential backoff, jitter, ``Retry-After``).

Retried: 429, 5xx, connection errors, truncated bodies and (if configured) timeouts. Never retried: other
4xx and malformed 2xx bodies. ``Retry-After`` on a 429 or 5xx (delta-seconds or an HTTP date) replaces the
backoff for that wait, capped at ``retry_after_cap_s``. No wait ever runs past the call's deadline: the
last error is raised instead. ``sleep``, ``rng`` and the clocks are injectable so tests can assert the waits.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import msgspec

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
from config.provider_agents import RetrySettings

Sleep = Callable[[float], Awaitable[None]]

#: Longest slice of an upstream error body quoted in an error message.
ERROR_BODY_EXCERPT = 300


def parse_retry_after(value: str | None, *, now: float, cap_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; capped; ``None`` if absent.

    Example:
        >>> parse_retry_after("3", now=0.0, cap_s=30.0)
        3.0
        >>> parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0, cap_s=30.0)
        6.0
        >>> parse_retry_after("999", now=0.0, cap_s=30.0)
        30.0
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return float(min(max(seconds, 0.0), cap_s))


def backoff_delay(retry_number: int, retry: RetrySettings, rng: random.Random) -> float:
    """Wait before retry ``retry_number`` (1-based): capped exponential, scaled by a factor in [1-jitter, 1]."""
    base = min(retry.backoff_max_s, retry.backoff_base_s * 2.0 ** (retry_number - 1))
    return float(base * (1.0 - retry.jitter * rng.random()))


class RetryingJsonClient:
    """POSTs JSON to one provider and returns the decoded JSON body plus the number of attempts made.

    Example:
        >>> # async: body, attempts = await client.post_json(url, headers={...}, body={...}, deadline=None)
    """

    def __init__(
        self,
        provider: str,
        retry: RetrySettings,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        max_connections: int = 32,
        redact: tuple[str, ...] = (),
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.provider = provider
        self.retry = retry
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._redact = tuple(s for s in redact if s)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self._wall_clock = wall_clock
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _scrub(self, text: str) -> str:
        for s in self._redact:
            text = text.replace(s, "***")
        return text

    async def post_json(self, url: str, *, headers: Mapping[str, str], body: Mapping[str, Any],
                        deadline: float | None) -> tuple[Any, int]:
        """POST ``body`` as JSON, retrying per the policy; return ``(decoded_json, attempts)``.

        Raises the last attempt's :class:`ProviderError` (with ``attempts`` set) when it is not retryable,
        when attempts run out, or when the next wait would pass ``deadline``.
        """
        payload = msgspec.json.encode(body)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(url, headers, payload, deadline), attempt
            except ProviderError as err:
                err.attempts = attempt
                wait = self._next_wait(err, attempt)
                if wait is None:
                    raise
                if deadline is not None and self._clock() + wait >= deadline:
                    raise
                await self._sleep(wait)

    def _next_wait(self, err: ProviderError, attempt: int) -> float | None:
        if attempt >= self.retry.max_attempts or not err.retryable:
            return None
        if isinstance(err, ProviderTimeout) and not self.retry.retry_on_timeout:
            return None
        if err.retry_after_s is not None:
            return err.retry_after_s
        return backoff_delay(attempt, self.retry, self._rng)

    async def _attempt(self, url: str, headers: Mapping[str, str], payload: bytes, deadline: float | None) -> Any:
        total = self.timeout_s
        if deadline is not None:
            total = min(total, deadline - self._clock())
            if total <= 0:
                raise ProviderTimeout(f"{self.provider}: the call's deadline passed before the request was sent",
                                      provider=self.provider)
        timeout = httpx.Timeout(total, connect=min(self.connect_timeout_s, total))
        name = self.provider
        try:
            # The whole attempt (connect, headers, body) must fit in `total`, not just each socket read.
            async with asyncio.timeout(total):
                async with self._client.stream("POST", url, content=payload, headers=dict(headers),
                                               timeout=timeout) as resp:
                    try:
                        body = await resp.aread()
                    except httpx.TimeoutException:
                        raise
                    except httpx.TransportError as exc:
                        raise TruncatedResponse(
                            f"{name}: connection closed mid-body after HTTP {resp.status_code} "
                            f"({type(exc).__name__}: {self._scrub(str(exc))}); retrying may help",
                            provider=name, status=resp.status_code) from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise ProviderTimeout(f"{name}: no complete answer within {total:.2f}s from {url}; raise timeout_s "
                                  f"or the intent's deadline_ms", provider=name) from exc
        except httpx.TransportError as exc:
            raise ProviderConnectionError(f"{name}: cannot reach {url} ({type(exc).__name__}: "
                                          f"{self._scrub(str(exc)) or 'connection failed'}); check base_url and "
                                          f"that the server is running", provider=name) from exc
        return self._interpret(resp, body, url)

    def _interpret(self, resp: httpx.Response, body: bytes, url: str) -> Any:
        status = resp.status_code
        name = self.provider
        excerpt = self._scrub(body[:ERROR_BODY_EXCERPT].decode("utf-8", "replace"))
        if 200 <= status < 300:
            try:
                return msgspec.json.decode(body)
            except msgspec.DecodeError as exc:
                raise MalformedProviderResponse(f"{name}: HTTP {status} with a body that is not JSON ({exc}): "
                                                f"{excerpt!r}", provider=name, status=status) from exc
        after = parse_retry_after(resp.headers.get("retry-after"), now=self._wall_clock(),
                                  cap_s=self.retry.retry_after_cap_s)
        if status == 429:
            raise RateLimited(f"{name}: HTTP 429 rate limited (Retry-After {after}); lower the agent's "
                              f"max_concurrency or wait: {excerpt!r}", retry_after_s=after, provider=name)
        if status >= 500:
            raise ProviderServerError(f"{name}: HTTP {status} server error: {excerpt!r}", provider=name,
                                      status=status, retry_after_s=after)
        if status in (401, 403):
            raise ProviderAuthError(f"{name}: HTTP {status}: the API key was refused; check the provider's "
                                    f"api_key in the settings: {excerpt!r}", provider=name, status=status)
        raise ProviderClientError(f"{name}: HTTP {status} from {url}: the request was refused; check model "
                                  f"name and options: {excerpt!r}", provider=name, status=status)


def require_dict(value: Any, provider: str, what: str) -> dict[str, Any]:
    """``value`` as a JSON object, or :class:`MalformedProviderResponse` naming ``what`` was expected."""
    if not isinstance(value, dict):
        raise MalformedProviderResponse(f"{provider}: expected {what} to be a JSON object, got "
                                        f"{type(value).__name__}", provider=provider)
    return value


def require_list(value: Any, provider: str, what: str) -> list[Any]:
    """``value`` as a non-empty JSON array, or :class:`MalformedProviderResponse`."""
    if not isinstance(value, list) or not value:
        raise MalformedProviderResponse(f"{provider}: expected {what} to be a non-empty JSON array, got "
                                        f"{value!r:.80}", provider=provider)
    return value


def dict_field(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``obj[key]`` when it is a JSON object, else an empty dict (optional sub-objects such as usage)."""
    v = obj.get(key)
    return v if isinstance(v, dict) else {}


def int_field(obj: Mapping[str, Any], key: str) -> int:
    """A non-negative int usage field (missing or bad -> 0: usage is informative, not fatal)."""
    v = obj.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
