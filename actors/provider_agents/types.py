"""What every provider takes and returns, independent of its wire format."""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from schemas.common import Message
from schemas.coordination import Usage


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One chat completion to make: model, messages and sampling options.

    ``deadline`` is an absolute ``time.monotonic()`` instant after which no attempt may still run.
    """

    model: str
    messages: list[Message]
    max_tokens: int = 1024
    temperature: float = 0.0
    seed: int | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)
    deadline: float | None = None


class ChatResult(msgspec.Struct, frozen=True, kw_only=True):
    """A provider's answer, normalised: text, usage, ``finish_reason`` (``stop``/``length``/...), attempts."""

    content: str
    usage: Usage
    finish_reason: str = "stop"
    model: str = ""
    attempts: int = 1


class Provider(Protocol):
    """A chat model reachable somehow (HTTP API or in-process)."""

    name: str

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Answer ``request`` or raise a :class:`~actors.provider_agents.errors.ProviderError`."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and models."""
        ...
