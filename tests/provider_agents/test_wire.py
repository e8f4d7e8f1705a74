"""Each provider against a real loopback HTTP server speaking its wire format: request shape and parsing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.provider_agents.errors import MalformedProviderResponse
from actors.provider_agents.types import ChatRequest
from actors.provider_agents.wire import AnthropicProvider, GeminiProvider, OpenAIProvider, http_provider
from config.provider_agents import ProviderKind, ProviderSettings, RetrySettings, Secret
from schemas.common import Message
from tests.provider_agents.loopback import LoopbackServer, Reply

KEY = "sk-test-0123456789abcdef0123"
MESSAGES = [
    Message(role="system", content="You are the Worker."),
    Message(role="user", content="What is 17 + 25?"),
    Message(role="assistant", content="Thinking: add tens then units."),
    Message(role="assistant", content="Draft: 42"),
    Message(role="user", content="Answer now."),
]


@pytest.fixture
async def srv() -> AsyncIterator[LoopbackServer]:
    async with LoopbackServer() as s:
        yield s


def settings(kind: ProviderKind, url: str, **kw: object) -> ProviderSettings:
    return ProviderSettings(name=str(kind), kind=kind, base_url=url, api_key=Secret(KEY),
                            retry=RetrySettings(max_attempts=1), timeout_s=5.0, **kw)  # type: ignore[arg-type]


async def test_openai_request_and_response(srv: LoopbackServer) -> None:
    srv.script(Reply(200, {"id": "x", "model": "gpt-5-2025", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 31, "completion_tokens": 2, "total_tokens": 33}}))
    p = OpenAIProvider(settings(ProviderKind.OPENAI, srv.url + "/v1", headers={"X-Title": "trinity"},
                                max_tokens_field="max_completion_tokens"))
    try:
        res = await p.complete(ChatRequest(model="gpt-5", messages=MESSAGES, max_tokens=64, temperature=0.1,
                                           seed=7, stop=["</answer>"], extra_body={"top_p": 0.8}))
    finally:
        await p.aclose()
    assert (res.content, res.usage.prompt_tokens, res.usage.completion_tokens) == ("42", 31, 2)
    assert (res.finish_reason, res.model, res.attempts) == ("stop", "gpt-5-2025", 1)
    [req] = srv.requests
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-title"] == "trinity"
    assert req.json() == {
        "model": "gpt-5",
        "messages": [{"role": m.role, "content": m.content} for m in MESSAGES],
        "max_completion_tokens": 64,
        "temperature": 0.1,
        "seed": 7,
        "stop": ["</answer>"],
        "top_p": 0.8,
    }


async def test_openai_compatible_without_key_sends_no_authorization(srv: LoopbackServer) -> None:
    srv.script(Reply(200, {"choices": [{"message": {"content": None}, "finish_reason": "length"}]}))
    p = OpenAIProvider(ProviderSettings(name="ollama", kind=ProviderKind.OPENAI, base_url=srv.url + "/v1/"))
    try:
        res = await p.complete(ChatRequest(model="llama3", messages=MESSAGES[1:2]))
    finally:
        await p.aclose()
    assert (res.content, res.finish_reason, res.usage.total_tokens, res.model) == ("", "length", 0, "llama3")
    assert "authorization" not in srv.requests[0].headers
    assert srv.requests[0].json()["max_tokens"] == 1024


async def test_anthropic_request_and_response(srv: LoopbackServer) -> None:
    srv.script(Reply(200, {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
                           "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "4"},
                                       {"type": "text", "text": "2"}],
                           "stop_reason": "max_tokens", "usage": {"input_tokens": 40, "output_tokens": 3}}))
    p = AnthropicProvider(settings(ProviderKind.ANTHROPIC, srv.url + "/v1"))
    try:
        res = await p.complete(ChatRequest(model="claude-sonnet-4-20250514", messages=MESSAGES, max_tokens=128,
                                           temperature=0.1, stop=["STOP"]))
    finally:
        await p.aclose()
    assert (res.content, res.finish_reason, res.usage.prompt_tokens, res.usage.completion_tokens) == \
        ("42", "length", 40, 3)
    [req] = srv.requests
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req.headers
    assert req.json() == {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 128,
        "system": "You are the Worker.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is 17 + 25?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Thinking: add tens then units."},
                                              {"type": "text", "text": "Draft: 42"}]},
            {"role": "user", "content": [{"type": "text", "text": "Answer now."}]},
        ],
        "temperature": 0.1,
        "stop_sequences": ["STOP"],
    }


async def test_gemini_request_and_response(srv: LoopbackServer) -> None:
    srv.script(Reply(200, {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "reasoning...", "thought": True}, {"text": "4"}, {"text": "2"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 2, "thoughtsTokenCount": 10,
                          "totalTokenCount": 62}, "modelVersion": "gemini-2.5-pro-001"}))
    p = GeminiProvider(settings(ProviderKind.GEMINI, srv.url + "/v1beta"))
    try:
        res = await p.complete(ChatRequest(model="gemini-2.5-pro", messages=MESSAGES, max_tokens=256,
                                           temperature=0.1, seed=3, stop=["END"]))
    finally:
        await p.aclose()
    assert (res.content, res.finish_reason, res.model) == ("42", "stop", "gemini-2.5-pro-001")
    assert (res.usage.prompt_tokens, res.usage.completion_tokens) == (50, 12)
    [req] = srv.requests
    assert req.path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert req.headers["x-goog-api-key"] == KEY
    assert "key=" not in req.path  # the key never travels in the URL
    assert req.json() == {
        "contents": [
            {"role": "user", "parts": [{"text": "What is 17 + 25?"}]},
            {"role": "model", "parts": [{"text": "Thinking: add tens then units."}, {"text": "Draft: 42"}]},
            {"role": "user", "parts": [{"text": "Answer now."}]},
        ],
        "generationConfig": {"maxOutputTokens": 256, "temperature": 0.1, "stopSequences": ["END"], "seed": 3},
        "systemInstruction": {"parts": [{"text": "You are the Worker."}]},
    }


@pytest.mark.parametrize(("kind", "body"), [
    (ProviderKind.OPENAI, {"choices": []}),
    (ProviderKind.OPENAI, {"choices": [{"message": {"content": 5}}]}),
    (ProviderKind.OPENAI, ["not", "an", "object"]),
    (ProviderKind.ANTHROPIC, {"content": "plain string"}),
    (ProviderKind.GEMINI, {"promptFeedback": {"blockReason": "SAFETY"}}),
])
async def test_unexpected_shapes_are_malformed(srv: LoopbackServer, kind: ProviderKind, body: object) -> None:
    srv.script(Reply(200, body))  # type: ignore[arg-type]
    p = http_provider(settings(kind, srv.url))
    try:
        with pytest.raises(MalformedProviderResponse) as ei:
            await p.complete(ChatRequest(model="m", messages=MESSAGES[1:2]))
    finally:
        await p.aclose()
    assert ei.value.code.value == "upstream"
    assert len(srv.requests) == 1


def test_settings_never_print_keys() -> None:
    s = settings(ProviderKind.OPENAI, "http://x", secret_headers={"X-Org": Secret("org-secret-123")})
    assert KEY not in repr(s) and "org-secret-123" not in repr(s)
    assert "***" in repr(s)
