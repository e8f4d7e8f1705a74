"""The three HTTP wire formats: OpenAI chat completions (and compatibles), Anthropic Messages, Gemini.

Each provider is a pure request builder (:meth:`build`: URL, headers, JSON body) plus a pure response
parser (:meth:`parse`), over one shared :class:`~actors.provider_agents.http.RetryingJsonClient`.

Example:
    >>> from config.provider_agents import ProviderKind, ProviderSettings, Secret
    >>> p = OpenAIProvider(ProviderSettings(name="vllm", kind=ProviderKind.OPENAI,
    ...                    base_url="http://127.0.0.1:8000/v1", api_key=Secret("k")))
    >>> url, headers, body = p.build(ChatRequest(model="m", messages=[Message(role="user", content="hi")]))
    >>> (url, headers["Authorization"], body["messages"])
    ('http://127.0.0.1:8000/v1/chat/completions', 'Bearer k', [{'role': 'user', 'content': 'hi'}])
"""

from __future__ import annotations

from typing import Any

from actors.provider_agents.errors import MalformedProviderResponse
from actors.provider_agents.http import RetryingJsonClient, dict_field, int_field, require_dict, require_list
from actors.provider_agents.types import ChatRequest, ChatResult
from config.provider_agents import ProviderKind, ProviderSettings
from schemas.common import Message
from schemas.coordination import Usage

_ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                     "refusal": "content_filter", "pause_turn": "stop"}
_GEMINI_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
                  "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter"}


class HttpProvider:
    """Shared machinery: settings, the retrying client, and ``complete`` = build, post, parse."""

    def __init__(self, settings: ProviderSettings, **http_kwargs: Any) -> None:
        """``http_kwargs`` (``sleep``, ``rng``, ``clock``, ``wall_clock``, ``transport``) go to the HTTP client."""
        self.settings = settings
        self.name = settings.name
        secrets = [settings.api_key.reveal()] if settings.api_key else []
        secrets += [s.reveal() for s in settings.secret_headers.values()]
        self.http = RetryingJsonClient(
            settings.name, settings.retry, timeout_s=settings.timeout_s,
            connect_timeout_s=settings.connect_timeout_s, max_connections=settings.max_connections,
            redact=tuple(secrets), **http_kwargs)

    @property
    def base_url(self) -> str:
        """The configured base URL without a trailing slash."""
        return self.settings.base_url.rstrip("/")

    def _common_headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json", **self.settings.headers}
        h.update({k: v.reveal() for k, v in self.settings.secret_headers.items()})
        return h

    def build(self, request: ChatRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        """URL, headers and JSON body for ``request``."""
        raise NotImplementedError

    def parse(self, body: Any, request: ChatRequest) -> ChatResult:
        """Normalise a decoded 2xx body; raise :class:`MalformedProviderResponse` on an unexpected shape."""
        raise NotImplementedError

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Make the call (with retries) and parse the answer."""
        url, headers, body = self.build(request)
        data, attempts = await self.http.post_json(url, headers=headers, body=body, deadline=request.deadline)
        try:
            result = self.parse(data, request)
        except MalformedProviderResponse as err:
            err.attempts = attempts
            raise
        return ChatResult(content=result.content, usage=result.usage, finish_reason=result.finish_reason,
                          model=result.model, attempts=attempts)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self.http.aclose()

    def _bad(self, what: str) -> MalformedProviderResponse:
        return MalformedProviderResponse(f"{self.name}: unexpected response shape: {what}", provider=self.name)


class OpenAIProvider(HttpProvider):
    """``POST {base_url}/chat/completions`` with ``Authorization: Bearer``; OpenAI and every compatible server."""

    def build(self, request: ChatRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = self._common_headers()
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key.reveal()}"
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            self.settings.max_tokens_field: request.max_tokens,
            "temperature": request.temperature,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        body.update(request.extra_body)
        return f"{self.base_url}/chat/completions", headers, body

    def parse(self, body: Any, request: ChatRequest) -> ChatResult:
        obj = require_dict(body, self.name, "the response")
        choice = require_dict(require_list(obj.get("choices"), self.name, "choices")[0], self.name, "choices[0]")
        message = require_dict(choice.get("message"), self.name, "choices[0].message")
        content = message.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise self._bad(f"choices[0].message.content is {type(content).__name__}, expected a string")
        usage = dict_field(obj, "usage")
        finish = choice.get("finish_reason")
        return ChatResult(
            content=content,
            usage=Usage(prompt_tokens=int_field(usage, "prompt_tokens"),
                        completion_tokens=int_field(usage, "completion_tokens")),
            finish_reason=finish if isinstance(finish, str) else "stop",
            model=str(obj.get("model") or request.model),
        )


def _split_system(messages: list[Message]) -> tuple[str, list[Message]]:
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    return system, [m for m in messages if m.role != "system"]


def _merge_turns(messages: list[Message], roles: dict[str, str]) -> list[tuple[str, list[str]]]:
    """Consecutive messages of one role merged into one turn (both APIs want alternating roles)."""
    turns: list[tuple[str, list[str]]] = []
    for m in messages:
        role = roles[m.role]
        if turns and turns[-1][0] == role:
            turns[-1][1].append(m.content)
        else:
            turns.append((role, [m.content]))
    return turns


class AnthropicProvider(HttpProvider):
    """``POST {base_url}/messages`` with ``x-api-key`` and ``anthropic-version``; system prompt separated out."""

    def build(self, request: ChatRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = self._common_headers()
        headers["anthropic-version"] = self.settings.anthropic_version
        if self.settings.api_key:
            headers["x-api-key"] = self.settings.api_key.reveal()
        system, rest = _split_system(request.messages)
        turns = _merge_turns(rest, {"user": "user", "assistant": "assistant"})
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": role, "content": [{"type": "text", "text": t} for t in texts]}
                         for role, texts in turns],
            "temperature": min(request.temperature, 1.0),
        }
        if system:
            body["system"] = system
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        body.update(request.extra_body)
        return f"{self.base_url}/messages", headers, body

    def parse(self, body: Any, request: ChatRequest) -> ChatResult:
        obj = require_dict(body, self.name, "the response")
        blocks = obj.get("content")
        if not isinstance(blocks, list):
            raise self._bad("'content' is not a list of content blocks")
        texts: list[str] = []
        for b in blocks:
            if isinstance(b, dict) and b.get("type") == "text":
                t = b.get("text")
                if not isinstance(t, str):
                    raise self._bad("a text content block has no string 'text'")
                texts.append(t)
        usage = dict_field(obj, "usage")
        stop = obj.get("stop_reason")
        return ChatResult(
            content="".join(texts),
            usage=Usage(prompt_tokens=int_field(usage, "input_tokens"),
                        completion_tokens=int_field(usage, "output_tokens")),
            finish_reason=_ANTHROPIC_FINISH.get(stop, str(stop)) if isinstance(stop, str) else "stop",
            model=str(obj.get("model") or request.model),
        )


class GeminiProvider(HttpProvider):
    """``POST {base_url}/models/{model}:generateContent`` with ``x-goog-api-key``; contents/parts."""

    def build(self, request: ChatRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = self._common_headers()
        if self.settings.api_key:
            headers["x-goog-api-key"] = self.settings.api_key.reveal()
        system, rest = _split_system(request.messages)
        turns = _merge_turns(rest, {"user": "user", "assistant": "model"})
        config: dict[str, Any] = {"maxOutputTokens": request.max_tokens, "temperature": request.temperature}
        if request.stop:
            config["stopSequences"] = list(request.stop)
        if request.seed is not None:
            config["seed"] = request.seed
        body: dict[str, Any] = {
            "contents": [{"role": role, "parts": [{"text": t} for t in texts]} for role, texts in turns],
            "generationConfig": config,
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        extra = dict(request.extra_body)
        if isinstance(extra.get("generationConfig"), dict):
            config.update(extra.pop("generationConfig"))
        body.update(extra)
        model = request.model if request.model.startswith("models/") else f"models/{request.model}"
        return f"{self.base_url}/{model}:generateContent", headers, body

    def parse(self, body: Any, request: ChatRequest) -> ChatResult:
        obj = require_dict(body, self.name, "the response")
        cands = obj.get("candidates")
        if not isinstance(cands, list) or not cands:
            feedback = obj.get("promptFeedback")
            reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
            raise self._bad(f"no candidates (prompt blocked: {reason})" if reason else "no candidates")
        cand = require_dict(cands[0], self.name, "candidates[0]")
        content = dict_field(cand, "content")
        parts = content.get("parts", [])
        if not isinstance(parts, list):
            raise self._bad("candidates[0].content.parts is not a list")
        texts: list[str] = []
        for p in parts:
            if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought"):
                texts.append(p["text"])
        meta = dict_field(obj, "usageMetadata")
        finish = cand.get("finishReason")
        return ChatResult(
            content="".join(texts),
            usage=Usage(prompt_tokens=int_field(meta, "promptTokenCount"),
                        completion_tokens=int_field(meta, "candidatesTokenCount")
                        + int_field(meta, "thoughtsTokenCount")),
            finish_reason=_GEMINI_FINISH.get(finish, finish.lower()) if isinstance(finish, str) else "stop",
            model=str(obj.get("modelVersion") or request.model),
        )


def http_provider(settings: ProviderSettings, **kwargs: Any) -> HttpProvider:
    """The HTTP provider for ``settings.kind`` (``openai``, ``anthropic`` or ``gemini``)."""
    classes: dict[ProviderKind, type[HttpProvider]] = {
        ProviderKind.OPENAI: OpenAIProvider,
        ProviderKind.ANTHROPIC: AnthropicProvider,
        ProviderKind.GEMINI: GeminiProvider,
    }
    cls = classes.get(settings.kind)
    if cls is None:
        raise ValueError(f"provider {settings.name!r}: kind {settings.kind} is not an HTTP provider")
    return cls(settings, **kwargs)
