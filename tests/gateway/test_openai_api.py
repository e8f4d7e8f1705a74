"""The pure OpenAI mapping: messages to query, request validation, model table, error mapping, result shapes."""

from __future__ import annotations

import msgspec
import pytest

from actors.gateway.openai_api import (
    ChatMessage,
    ContentPart,
    DeadlineExceeded,
    InvalidRequest,
    NoAnswer,
    Overloaded,
    Unavailable,
    UpstreamFailed,
    error_body,
    error_of_bus,
    error_of_result,
    parse_chat_request,
    query_of,
    served_models,
)
from bus.errors import RemoteError, RequestTimeout
from config.gateway import GatewaySettings
from schemas import Budget, BudgetSnapshot, CoordinationResult, ErrorCode, RunStatus, StopReason
from schemas.wire import ErrorReply

MODELS = served_models("trinity", ["base", "math"], "torch")


def _parse(body: dict[str, object]) -> object:
    return parse_chat_request(msgspec.json.encode(body), MODELS, default_deadline_s=120.0, max_deadline_s=600.0)


def test_one_user_message_is_the_query_and_earlier_turns_are_context() -> None:
    assert query_of([ChatMessage("user", "What is 2+2?")]) == "What is 2+2?"
    q = query_of([ChatMessage("system", "Be brief."), ChatMessage("user", [ContentPart("text", "Hi")]),
                  ChatMessage("assistant", "Hello!"), ChatMessage("user", "And 3+3?")])
    assert q == "Be brief.\n\nConversation so far:\nuser: Hi\nassistant: Hello!\n\nAnd 3+3?"


@pytest.mark.parametrize(("body", "code", "param"), [
    ({"model": "trinity", "messages": []}, "empty_messages", "messages"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "q"}]}, "model_not_found", "model"),
    ({"model": "trinity", "messages": [{"role": "user", "content": "q"}], "max_turns": 65}, "invalid_max_turns",
     "max_turns"),
    ({"model": "trinity", "messages": [{"role": "assistant", "content": "q"}]}, "last_message_not_user",
     "messages[0].role"),
    ({"model": "trinity", "messages": [{"role": "user", "content": "  "}]}, "empty_question", "messages[0].content"),
    ({"model": "trinity", "messages": [{"role": "wizard", "content": "q"}]}, "invalid_role", "messages[0].role"),
    ({"model": "trinity", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "unsupported_content", "messages[0].content"),
    ({"model": "trinity", "messages": [{"role": "user", "content": "q"}], "n": 2}, "unsupported_n", "n"),
    ({"model": "trinity", "messages": [{"role": "user", "content": "q"}], "deadline_s": 601}, "invalid_deadline",
     "deadline_s"),
    ({"model": "trinity", "messages": [{"role": "user", "content": 5}]}, "invalid_body", "messages[0].content"),
    ({"messages": [{"role": "user", "content": "q"}]}, "invalid_body", None),
])
def test_bad_requests_name_their_field(body: dict[str, object], code: str, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as e:
        _parse(body)
    assert (e.value.status, e.value.code, e.value.param) == (400, code, param)
    assert set(error_body(e.value)["error"]) == {"message", "type", "param", "code"}


def test_models_map_to_adapters_and_extension_fields_are_read() -> None:
    chat = _parse({"model": "trinity:math", "messages": [{"role": "user", "content": "q"}], "max_turns": 3,
                   "agent_mask": [0, 2], "temperature": 0.3, "stream": True,
                   "stream_options": {"include_usage": True}})
    assert (chat.target.adapter, chat.max_turns, chat.agent_mask, chat.stream, chat.include_usage, chat.deadline_s) \
        == ("math", 3, [0, 2], True, True, 120.0)
    assert _parse({"model": "trinity", "messages": [{"role": "user", "content": "q"}]}).target.adapter == "base"
    assert list(served_models("trinity", ["math"], "torch")) == ["trinity", "trinity:math"]


def test_bus_errors_map_to_http_statuses() -> None:
    def remote(code: ErrorCode) -> RemoteError:
        return RemoteError(ErrorReply(code=code, message="m"))

    over = error_of_bus(remote(ErrorCode.OVERLOADED), retry_after_s=2, request_id="q-1")
    assert isinstance(over, Overloaded) and over.status == 429 and over.headers == {"Retry-After": "2"}
    assert error_of_bus(remote(ErrorCode.DRAINING), retry_after_s=2, request_id="q-1").status == 503
    assert error_of_bus(remote(ErrorCode.INVALID), retry_after_s=2, request_id="q-1").status == 400
    assert error_of_bus(remote(ErrorCode.UPSTREAM), retry_after_s=2, request_id="q-1").status == 502
    late = error_of_bus(RequestTimeout("s", 3.0), retry_after_s=2, request_id="q-1")
    assert isinstance(late, DeadlineExceeded) and late.status == 504 and "q-1" in late.message


def test_gateway_maps_every_bus_failure_through_the_one_contract() -> None:
    """Not only typed replies: no responders, a storage error and a bug go through ``error_contract``."""
    from bus.errors import ConnectFailed, MalformedPayload, NoResponders
    from bus.storage import StoreFull

    gone = error_of_bus(NoResponders("trinity.coord.request"), retry_after_s=2, request_id="q-1")
    assert gone.status == 503 and gone.code == "unavailable" and gone.headers == {"Retry-After": "2"}
    assert "q-1" in gone.message and "no actor is serving" in gone.message
    full = error_of_bus(StoreFull("store full", stream="TRINITY_RESULTS"), retry_after_s=2, request_id="q-1")
    assert (full.status, full.code) == (503, "unavailable")
    assert error_of_bus(MalformedPayload("CoordinationResult", "bad"), retry_after_s=2, request_id="q-1").status \
        == 500
    assert error_of_bus(ConnectFailed("no server"), retry_after_s=2, request_id="q-1").status == 500


@pytest.mark.parametrize(("stop", "kind", "status"), [
    (StopReason.DEADLINE, DeadlineExceeded, 504), (StopReason.NO_AGENT_AVAILABLE, UpstreamFailed, 502),
    (StopReason.MAX_TURNS, NoAnswer, 422), (StopReason.CANCELLED, Unavailable, 503)])
def test_a_run_without_an_answer_is_an_error_named_by_its_stop_reason(stop: StopReason, kind: type,
                                                                      status: int) -> None:
    res = CoordinationResult(request_id="q-1", status=RunStatus.FAILED, answer=None, stop_reason=stop, turns=[],
                             budget=BudgetSnapshot(turns=0, agent_calls=0, tokens=0, cost_usd=0.0, elapsed_ms=1.0,
                                                   limits=Budget()))
    err = error_of_result(res)
    assert isinstance(err, kind) and (err.status, err.code) == (status, stop.value)
    assert error_of_result(msgspec.structs.replace(res, answer="42", status=RunStatus.OK)) is None


def test_gateway_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        GatewaySettings(max_concurrency=0)
    with pytest.raises(ValueError, match="adapters"):
        GatewaySettings(adapters=["a:b"])
    with pytest.raises(ValueError, match="request_deadline_s"):
        GatewaySettings(request_deadline_s=700.0)
