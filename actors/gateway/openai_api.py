"""The OpenAI chat-completions API mapped onto TRINITY's contracts: pure functions, no I/O.

Requests: :func:`parse_chat_request` validates a ``POST /v1/chat/completions`` body and turns its messages
into one :class:`~schemas.CoordinationRequest` query (:func:`query_of`). Responses: :func:`completion_body`
(a ``chat.completion`` object), :func:`turn_chunk` / :func:`answer_chunks` / :func:`usage_chunk` (the
``chat.completion.chunk`` objects of a stream), :func:`error_body` (OpenAI's error shape). Errors are
:class:`GatewayError` subclasses, one per kind, each knowing its HTTP status; :func:`error_of_bus` and
:func:`error_of_result` map bus errors and answerless runs onto them.

How messages become the query: a conversation of one user message is that message's text. Otherwise the
last message must be the user's; ``system``/``developer`` texts come first (blank-line separated), then the
earlier turns as ``Conversation so far:`` and one ``<role>: <text>`` line block each, then the last user
message's text after a blank line.

Example:
    >>> query_of([ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"),
    ...           ChatMessage("assistant", "Hello!"), ChatMessage("user", "What is 2+2?")])
    'Be brief.\\n\\nConversation so far:\\nuser: Hi\\nassistant: Hello!\\n\\nWhat is 2+2?'
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from bus import errors as bus_errors
from bus.errors import BusError, RequestTimeout, error_contract
from schemas import CoordinationResult, ErrorCode, Role, StopReason, TurnRecord
from schemas.coordination import MAX_QUERY_CHARS
from schemas.trace import AgentCallFailed, AgentCallFinished, BudgetRecorded, RoleAssigned, TraceEvent, VerdictRecorded

#: Extra field of every response object and stream chunk with TRINITY's own details (request id, turns).
TRINITY_FIELD = "trinity"
MAX_TURNS_LIMIT = 64


# --- errors ---------------------------------------------------------------------------------------------------


class GatewayError(Exception):
    """An error answered in OpenAI's shape; subclasses fix the HTTP status and the error ``type``."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    """400: the body is not a valid chat completion request (names the field in ``param``)."""

    status, type = 400, "invalid_request_error"


class AuthenticationFailed(GatewayError):
    """401: no API key, or one that is not configured."""

    status, type = 401, "authentication_error"


class RouteNotFound(GatewayError):
    """404/405: no such route or method."""

    status, type = 404, "invalid_request_error"


class PayloadTooLarge(GatewayError):
    """413: the body is over ``gateway.max_body_bytes``."""

    status, type = 413, "invalid_request_error"


class NoAnswer(GatewayError):
    """422: the run ended within its budget without any Worker reply (``code`` is the stop reason)."""

    status, type = 422, "no_answer"


class Overloaded(GatewayError):
    """429: too many requests in flight (the gateway's bound or a coordinator's); retry after ``Retry-After``."""

    status, type = 429, "rate_limit_error"


class UpstreamFailed(GatewayError):
    """502: the coordinator, runtime or agents failed the run."""

    status, type = 502, "upstream_error"


class Unavailable(GatewayError):
    """503: no coordinator or job queue, or the gateway is draining; retry after ``Retry-After``."""

    status, type = 503, "service_unavailable"


class DeadlineExceeded(GatewayError):
    """504: no result within the run's deadline (the job stays queued under its request id)."""

    status, type = 504, "timeout"


class InternalError(GatewayError):
    """500: a bug; the message says what failed."""

    status, type = 500, "server_error"


def error_body(err: GatewayError) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def error_of_bus(exc: BusError, *, retry_after_s: int, request_id: str) -> GatewayError:
    """The HTTP error for a bus error raised while submitting or waiting for a job: the bus's one mapping
    (:func:`bus.errors.error_contract`) gives the contract's code, and the code picks the HTTP error."""
    reply = error_contract(exc)
    if reply is None or isinstance(exc, bus_errors.MalformedPayload | bus_errors.PayloadTooLarge):
        # not a bus failure, or a reply we could not read: not the client's fault
        return InternalError(f"request {request_id}: {exc}", code="internal")
    msg = f"request {request_id}: {reply.message}"
    if isinstance(exc, RequestTimeout):
        msg = (f"request {request_id}: no result within {exc.timeout:g}s; the job stays queued "
               f"(`run.py result {request_id}` waits for it)")
    return error_of_code(reply.code, msg, retry_after_s=retry_after_s)


def error_of_code(code: ErrorCode, msg: str, *, retry_after_s: int) -> GatewayError:
    """The HTTP error for an error-contract ``code`` (``Retry-After`` on the ones worth retrying)."""
    retry = {"Retry-After": str(retry_after_s)}
    if code is ErrorCode.OVERLOADED:
        return Overloaded(msg, code="overloaded", headers=retry)
    if code in (ErrorCode.UNAVAILABLE, ErrorCode.DRAINING):
        return Unavailable(msg, code=code.value, headers=retry)
    if code is ErrorCode.DEADLINE:
        return DeadlineExceeded(msg, code="deadline_exceeded")
    if code in (ErrorCode.MALFORMED, ErrorCode.INVALID, ErrorCode.TOO_LARGE, ErrorCode.NOT_FOUND,
                ErrorCode.UNKNOWN_AGENT):
        return InvalidRequest(msg, code=code.value)
    if code is ErrorCode.UPSTREAM:
        return UpstreamFailed(msg, code="upstream")
    return InternalError(msg, code=code.value)


_DEADLINE_STOPS = {StopReason.DEADLINE}
_FAILED_STOPS = {StopReason.NO_AGENT_AVAILABLE, StopReason.ROUTE_FAILED, StopReason.ROLE_INJECT_FAILED}


def error_of_result(res: CoordinationResult) -> GatewayError | None:
    """``None`` when the run has an answer; else the error it is answered with: ``504`` for a deadline, ``502``
    for a failed route, role injection or every agent, ``503`` when cancelled (a coordinator draining), ``422``
    for a budget spent (turns, calls, tokens, cost, or a Verifier accepting) before any Worker reply. The error
    ``code`` is the stop reason."""
    if res.answer is not None:
        return None
    msg = f"request {res.request_id}: no answer after {len(res.turns)} turn(s), stopped by " \
          f"{res.stop_reason.value}" + (f": {res.error}" if res.error else "")
    code = res.stop_reason.value
    if res.stop_reason in _DEADLINE_STOPS:
        return DeadlineExceeded(msg, code=code)
    if res.stop_reason in _FAILED_STOPS:
        return UpstreamFailed(msg, code=code)
    if res.stop_reason is StopReason.CANCELLED:
        return Unavailable(msg, code=code, headers={"Retry-After": "1"})
    return NoAnswer(msg, code=code)


# --- models ---------------------------------------------------------------------------------------------------


class ModelTarget(msgspec.Struct, frozen=True):
    """What a served model name routes with."""

    adapter: str
    backend: str


def served_models(model: str, adapters: list[str], backend: str) -> dict[str, ModelTarget]:
    """The model names the gateway serves, the one place names map to routing: ``model`` for the base adapter
    (or the first listed), ``"<model>:<adapter>"`` for every adapter token.

    Example:
        >>> sorted(served_models("trinity", ["base", "math"], "torch"))
        ['trinity', 'trinity:base', 'trinity:math']
    """
    out = {model: ModelTarget(adapter="base" if "base" in adapters else adapters[0], backend=backend)}
    out.update({f"{model}:{a}": ModelTarget(adapter=a, backend=backend) for a in adapters})
    return out


def models_body(models: dict[str, ModelTarget], created: int) -> dict[str, Any]:
    """``GET /v1/models``: a ``list`` of ``model`` objects."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "trinity"}
                                       for name in models]}


# --- requests -------------------------------------------------------------------------------------------------


class ContentPart(msgspec.Struct, frozen=True):
    """One part of a list-valued message content; only ``text`` parts are accepted."""

    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, frozen=True):
    """One message of the conversation (unknown fields such as ``name`` are ignored)."""

    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(msgspec.Struct, frozen=True):
    """``stream_options``: ``include_usage`` adds a final chunk with the usage."""

    include_usage: bool = False


class ChatBody(msgspec.Struct, frozen=True):
    """The fields of a chat completion request the gateway reads; other OpenAI fields (``temperature``,
    ``max_tokens``...) are accepted and ignored: the agents' settings decide them. ``max_turns``,
    ``agent_mask``, ``max_cost_usd`` and ``deadline_s`` are TRINITY's own (``extra_body`` in the OpenAI
    client)."""

    model: str
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    max_turns: int | None = None
    agent_mask: list[int] | None = None
    max_cost_usd: float | None = None
    deadline_s: float | None = None
    user: str | None = None


class ChatRequest(msgspec.Struct, frozen=True):
    """A validated chat completion request, ready to become a CoordinationRequest."""

    model: str
    target: ModelTarget
    query: str
    stream: bool
    include_usage: bool
    max_turns: int | None
    agent_mask: list[int] | None
    max_cost_usd: float | None
    deadline_s: float


_CONTEXT_ROLES = ("user", "assistant", "tool", "function")
_SYSTEM_ROLES = ("system", "developer")


def _text(msg: ChatMessage, i: int) -> str:
    if msg.content is None:
        return ""
    if isinstance(msg.content, str):
        return msg.content
    texts = []
    for j, part in enumerate(msg.content):
        if part.type != "text" or part.text is None:
            raise InvalidRequest(f"messages[{i}].content[{j}]: only text parts are supported, got {part.type!r}",
                                 param=f"messages[{i}].content", code="unsupported_content")
        texts.append(part.text)
    return "\n".join(texts)


def query_of(messages: list[ChatMessage]) -> str:
    """The CoordinationRequest query of a conversation (see the module docstring for the layout).

    Raises :class:`InvalidRequest` for no messages, an unknown role, non-text content, or a last message
    that is not a non-empty user message.
    """
    if not messages:
        raise InvalidRequest("messages: must hold at least one message (the user's question)", param="messages",
                             code="empty_messages")
    for i, m in enumerate(messages):
        if m.role not in _CONTEXT_ROLES + _SYSTEM_ROLES:
            raise InvalidRequest(f"messages[{i}].role: unknown role {m.role!r}; use system, developer, user, "
                                 "assistant or tool", param=f"messages[{i}].role", code="invalid_role")
    last = messages[-1]
    if last.role != "user":
        raise InvalidRequest(f"messages: the last message must be the user's question, got role {last.role!r}",
                             param=f"messages[{len(messages) - 1}].role", code="last_message_not_user")
    question = _text(last, len(messages) - 1)
    if not question.strip():
        raise InvalidRequest("messages: the last user message is empty", param=f"messages[{len(messages) - 1}]"
                             ".content", code="empty_question")
    system = [t for i, m in enumerate(messages[:-1]) if m.role in _SYSTEM_ROLES if (t := _text(m, i).strip())]
    context = [f"{m.role}: {t}" for i, m in enumerate(messages[:-1]) if m.role in _CONTEXT_ROLES
               if (t := _text(m, i).strip())]
    blocks = list(system)
    if context:
        blocks.append("Conversation so far:\n" + "\n".join(context))
    if not blocks:
        return question
    return "\n\n".join([*blocks, question])


def parse_chat_request(body: bytes, models: dict[str, ModelTarget], *, default_deadline_s: float,
                       max_deadline_s: float) -> ChatRequest:
    """Validate a ``POST /v1/chat/completions`` body. Raises :class:`InvalidRequest` naming the field."""
    try:
        chat = msgspec.json.decode(body, type=ChatBody)
    except msgspec.ValidationError as e:
        param = str(e).rsplit("at `$.", 1)[-1].rstrip("`") if "at `$." in str(e) else None
        raise InvalidRequest(f"invalid request body: {e}", param=param, code="invalid_body") from None
    except msgspec.DecodeError as e:
        raise InvalidRequest(f"request body is not valid JSON: {e}", code="invalid_json") from None
    target = models.get(chat.model)
    if target is None:
        raise InvalidRequest(f"model {chat.model!r} is not served here; choose from {', '.join(models)}",
                             param="model", code="model_not_found")
    if chat.n != 1:
        raise InvalidRequest(f"n: only 1 choice per request is supported, got {chat.n}", param="n",
                             code="unsupported_n")
    if chat.max_turns is not None and not 1 <= chat.max_turns <= MAX_TURNS_LIMIT:
        raise InvalidRequest(f"max_turns: must be in 1..{MAX_TURNS_LIMIT}, got {chat.max_turns}", param="max_turns",
                             code="invalid_max_turns")
    if chat.agent_mask is not None and (not chat.agent_mask or any(a < 0 for a in chat.agent_mask)):
        raise InvalidRequest("agent_mask: a non-empty list of agent ids >= 0 (or leave it out for all agents)",
                             param="agent_mask", code="invalid_agent_mask")
    if chat.max_cost_usd is not None and not (math.isfinite(chat.max_cost_usd) and chat.max_cost_usd >= 0):
        raise InvalidRequest(f"max_cost_usd: must be >= 0, got {chat.max_cost_usd}", param="max_cost_usd",
                             code="invalid_max_cost")
    deadline = default_deadline_s if chat.deadline_s is None else chat.deadline_s
    if not (math.isfinite(deadline) and 0 < deadline <= max_deadline_s):
        raise InvalidRequest(f"deadline_s: must be in (0, {max_deadline_s:g}], got {deadline}", param="deadline_s",
                             code="invalid_deadline")
    query = query_of(chat.messages)
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidRequest(f"messages: the conversation is {len(query)} characters; the limit is "
                             f"{MAX_QUERY_CHARS}", param="messages", code="context_length_exceeded")
    return ChatRequest(model=chat.model, target=target, query=query, stream=chat.stream,
                       include_usage=bool(chat.stream_options and chat.stream_options.include_usage),
                       max_turns=chat.max_turns, agent_mask=chat.agent_mask, max_cost_usd=chat.max_cost_usd,
                       deadline_s=deadline)


# --- responses ------------------------------------------------------------------------------------------------


def completion_id(request_id: str) -> str:
    """The ``id`` of the completion object (and of every chunk) of request ``request_id``."""
    return f"chatcmpl-{request_id}"


def usage_of(res: CoordinationResult) -> dict[str, Any]:
    """OpenAI ``usage`` summed over every agent call of the run, plus ``cost_usd`` (from the budget snapshot)."""
    prompt = sum(t.receipt.usage.prompt_tokens for t in res.turns if t.receipt is not None)
    completion = sum(t.receipt.usage.completion_tokens for t in res.turns if t.receipt is not None)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "cost_usd": res.budget.cost_usd}


def _finish_reason(res: CoordinationResult) -> str:
    """``stop`` for a run that ended by itself (accepted, turns used up), ``length`` for a spent token/cost/
    call budget or deadline (the answer is the latest Worker reply so far)."""
    return "length" if res.stop_reason in (StopReason.MAX_TOKENS, StopReason.MAX_COST, StopReason.MAX_AGENT_CALLS,
                                           StopReason.DEADLINE) else "stop"


class TurnSummary(msgspec.Struct, frozen=True, omit_defaults=True):
    """One finished turn, as a stream chunk shows it (``trinity.turn``)."""

    turn: int
    agent_id: int
    role: str
    provider: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    verdict: str | None = None
    failed_agents: list[int] = msgspec.field(default_factory=list)

    def line(self) -> str:
        """One readable line: ``turn 0: agent 1 (openai/gpt-x) as Worker``."""
        who = f" ({self.provider}/{self.model})" if self.provider or self.model else ""
        verdict = f", verdict {self.verdict.upper()}" if self.verdict else ""
        return f"turn {self.turn}: agent {self.agent_id}{who} as {self.role.capitalize()}{verdict}\n"


def summary_of_record(t: TurnRecord) -> TurnSummary:
    """The summary of a turn from the stored result."""
    r = t.receipt
    return TurnSummary(turn=t.turn, agent_id=r.agent_id if r else t.assignment.agent_id,
                       role=Role(t.assignment.role).label.lower(), provider=r.provider if r else "",
                       model=r.model if r else "", prompt_tokens=r.usage.prompt_tokens if r else 0,
                       completion_tokens=r.usage.completion_tokens if r else 0, cost_usd=r.cost_usd if r else 0.0,
                       verdict=t.verdict.verdict.value if t.verdict else None,
                       failed_agents=[f.agent_id for f in t.failures])


class TurnCollector:
    """Builds one :class:`TurnSummary` per finished turn from a run's trace events (a turn is finished at its
    ``budget_recorded``); each turn is handed out once, whether from an event or from the stored result."""

    def __init__(self) -> None:
        self._role: dict[int, tuple[int, str]] = {}
        self._receipt: dict[int, AgentCallFinished] = {}
        self._verdict: dict[int, str] = {}
        self._failed: dict[int, list[int]] = {}
        self.sent: set[int] = set()

    def feed(self, ev: TraceEvent) -> TurnSummary | None:
        """Record ``ev``; the turn's summary when ``ev`` finishes a turn not handed out yet."""
        t = ev.turn
        if isinstance(ev, RoleAssigned):
            self._role[t] = (ev.assignment.agent_id, Role(ev.assignment.role).label.lower())
        elif isinstance(ev, AgentCallFinished):
            self._receipt[t] = ev
        elif isinstance(ev, AgentCallFailed):
            self._failed.setdefault(t, []).append(ev.agent_id)
        elif isinstance(ev, VerdictRecorded):
            self._verdict[t] = ev.verdict.verdict.value
        elif isinstance(ev, BudgetRecorded) and t not in self.sent and t in self._role:
            self.sent.add(t)
            agent_id, role = self._role[t]
            fin = self._receipt.get(t)
            r = fin.receipt if fin else None
            return TurnSummary(turn=t, agent_id=r.agent_id if r else agent_id, role=role,
                               provider=r.provider if r else "", model=r.model if r else "",
                               prompt_tokens=r.usage.prompt_tokens if r else 0,
                               completion_tokens=r.usage.completion_tokens if r else 0,
                               cost_usd=r.cost_usd if r else 0.0, verdict=self._verdict.get(t),
                               failed_agents=self._failed.get(t, []))
        return None

    def missing(self, res: CoordinationResult) -> list[TurnSummary]:
        """The turns of the stored result not handed out yet (their events had not arrived), marked sent."""
        out = [summary_of_record(t) for t in res.turns if t.turn not in self.sent and t.receipt is not None]
        self.sent.update(s.turn for s in out)
        return out


def _trinity(res: CoordinationResult) -> dict[str, Any]:
    return {"request_id": res.request_id, "stop_reason": res.stop_reason.value, "turns": len(res.turns),
            "answer_turn": res.answer_turn,
            "agents": [msgspec.to_builtins(summary_of_record(t)) for t in res.turns]}


def completion_body(res: CoordinationResult, model: str, created: int) -> dict[str, Any]:
    """The ``chat.completion`` object of a run with an answer."""
    return {"id": completion_id(res.request_id), "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.answer, "refusal": None},
                         "logprobs": None, "finish_reason": _finish_reason(res)}],
            "usage": usage_of(res), "system_fingerprint": None, TRINITY_FIELD: _trinity(res)}


def _chunk(request_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None,
           trinity: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"id": completion_id(request_id), "object": "chat.completion.chunk", "created": created, "model": model,
           "system_fingerprint": None,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if trinity is not None:
        out[TRINITY_FIELD] = trinity
    return out


def role_chunk(request_id: str, model: str, created: int) -> dict[str, Any]:
    """The first chunk: ``delta.role = "assistant"`` and no content."""
    return _chunk(request_id, model, created, {"role": "assistant", "content": ""},
                  trinity={"request_id": request_id})


def turn_chunk(request_id: str, model: str, created: int, turn: TurnSummary) -> dict[str, Any]:
    """A finished turn: its line in ``delta.reasoning_content`` (shown by clients that render reasoning; the
    answer text stays clean) and its details in the chunk's ``trinity.turn``."""
    return _chunk(request_id, model, created, {"reasoning_content": turn.line()},
                  trinity={"event": "turn", "turn": msgspec.to_builtins(turn)})


def answer_chunks(res: CoordinationResult, model: str, created: int) -> list[dict[str, Any]]:
    """The answer (one content chunk) and the closing chunk with ``finish_reason`` and the run's details."""
    return [_chunk(res.request_id, model, created, {"content": res.answer or ""}),
            _chunk(res.request_id, model, created, {}, _finish_reason(res), _trinity(res))]


def usage_chunk(res: CoordinationResult, model: str, created: int) -> dict[str, Any]:
    """The last chunk when ``stream_options.include_usage``: no choices, the run's usage."""
    c = _chunk(res.request_id, model, created, {})
    c["choices"], c["usage"] = [], usage_of(res)
    return c
