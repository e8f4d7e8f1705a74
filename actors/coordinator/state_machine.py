"""TRINITY's coordination loop as pure logic: no I/O, every effect goes through injected ports.

One run, for at most ``Budget.max_turns`` turns (K = 5 by default):

1. **route** — ask the runtime for :class:`~schemas.RouteLogits` over the transcript (the user query, then
   every agent reply as ``assistant``) and interpret them with :func:`schemas.routing.decide` under the
   agent mask (the request's mask intersected with the deployment's ``Policy.agent_mask``).
2. **role** — the decision's role, overridden by the previous turn's Thinker ``<suggested_role>`` tag
   (see :mod:`.suggestions`; unknown names are ignored and recorded in ``RoleAssignment.suggestion/note``).
   Then the Verifier-before-Worker policy: with ``verifier_before_worker="worker"`` (default) a Verifier
   chosen while no Worker reply exists becomes a Worker, recorded as ``RoleSource.VERIFIER_BEFORE_WORKER``;
   with ``"allow"`` the Verifier runs (it has no answer to check; an ACCEPT then ends the run with no answer);
   with ``"end"`` (the ``sakana`` profile's rule) the run ends there with no call, stop reason
   ``verifier_before_worker``.

The routing profile (``Policy.routing_profile``, see :mod:`.profiles`) decides what the router reads (the
``sakana`` profile sends only the query and the Worker replies), how Verifier and Thinker replies are read,
and whether logits are argmaxed or sampled (seeded; the seed is recorded in the result). The runtime's
``RouteLogits.routing_profile`` must match the policy's, or the run stops with ``route_failed``.
3. **inject** — the role injector builds the agent's messages (role pack recorded in the assignment).
4. **call** — call the chosen agent. If it fails, fall back to the next agent of
   ``decision.agent_ranking`` (masked agents are never in it), recording an :class:`~schemas.AgentFailure`
   and an ``agent_call_failed`` event each time; if every candidate fails the run stops with
   ``NO_AGENT_AVAILABLE``.
5. **append** the reply to the transcript. A Worker reply becomes the answer; a Thinker reply may carry a
   suggestion for the next turn; a Verifier reply is parsed (:mod:`.verdict`) and ACCEPT ends the run.

Budgets (turns, agent calls, tokens, cost, deadline) are checked before every turn and every agent
attempt (:mod:`.budget`). The answer is the latest Worker reply; ``status`` is ``ok`` exactly when there is
one, ``failed`` otherwise (``error`` then says why). ``error`` is also set when a port failure stopped
the run (route, role injection, no agent), even if an earlier Worker answer exists.

Every step is published as a trace event through ``Ports.emit``; each event's ``causation_id`` is the id
of the event before it (the first one's is the request id), so the chain reads
``request -> run_started -> route_decided -> role_assigned -> agent_call_started -> agent_call_finished
-> [verdict_recorded] -> budget_recorded -> route_decided ... -> run_finished | run_failed``.
Contents (query, prompts, replies, answer) are recorded as sha256 unless ``Policy.trace_content``.
``Ports.emit`` must not block or raise (the actor's sink is a bounded, non-blocking buffer).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from actors.coordinator.budget import BudgetTracker
from actors.coordinator.errors import AgentCallFailed, PortError, RoleInjectFailed, RouteFailed
from actors.coordinator.profiles import choose, observation, read_suggestion, read_verdict
from actors.coordinator.suggestions import Suggestion
from schemas.common import Message, Role
from schemas.coordination import (
    AgentCallIntent,
    AgentCallReceipt,
    AgentFailure,
    CoordinationRequest,
    CoordinationResult,
    RoleAssignment,
    RoleSource,
    RunStatus,
    StopReason,
    TurnRecord,
    Verdict,
    VerifierVerdict,
)
from schemas.errors import SchemaError
from schemas.fingerprint import sha256_text
from schemas.roles import RoleInjectReply, RoleInjectRequest, TranscriptEntry
from schemas.routing import RouteDecision, RouteLogits, RouteRequest
from schemas.sakana import RuntimeProfile
from schemas.trace import AgentCallFailed as AgentCallFailedEvent
from schemas.trace import (
    AgentCallFinished,
    AgentCallStarted,
    BudgetRecorded,
    RoleAssigned,
    RouteDecided,
    RouteDeferred,
    RunFailed,
    RunFinished,
    RunStarted,
    TraceEvent,
    VerdictRecorded,
)
from schemas.wire import ErrorCode

VerifierBeforeWorker = Literal["worker", "allow", "end"]


@dataclass(frozen=True)
class Policy:
    """How the coordinator runs: role policy, routing profile, call parameters and timeouts.

    ``agent_mask``: agents this deployment serves (``None``: all); intersected with each request's mask.
    ``max_fallbacks``: how many next-best agents to try after a failed call (``None``: all ranked agents).
    ``route_attempts``: tries per turn for routing when the failure is retryable (timeouts included).
    ``fleet_wait_s`` / ``fleet_retry_s``: a route that finds no runtime (``unavailable``: the fleet is still
    starting, or every runtime left) is retried every ``fleet_retry_s`` for up to ``fleet_wait_s`` (never
    past the request's deadline), with a ``route_deferred`` trace event, instead of failing the run.
    ``overload_wait_s`` / ``overload_backoff_s`` / ``overload_backoff_max_s``: a route answered ``overloaded``
    (every runtime is at capacity) is retried after a full-jitter exponential backoff (uniform in
    ``[0, min(max, base * 2**n)]``) for up to ``overload_wait_s``, never past the deadline; only then the run
    stops with ``route_failed`` (a queued job is handed back to the queue first, see :class:`Resume`).
    ``overload_wait_s = 0`` treats ``overloaded`` as any retryable error (``route_attempts`` tries, no backoff).
    ``role_pack``: the pack asked of the injector (``None``: its default).
    ``routing_profile``: ``elixir-port`` or ``sakana`` (:mod:`.profiles`); ``route_rule``: ``argmax`` or
    ``sample`` (softmax at ``route_temperature``, seeded with ``route_seed``, or, when ``None``, a seed derived
    from the request id so a retried request routes the same).
    """

    verifier_before_worker: VerifierBeforeWorker = "worker"
    profile: RuntimeProfile = field(default_factory=RuntimeProfile)
    agent_mask: tuple[int, ...] | None = None
    agent_max_tokens: int = 1024
    temperature: float = 0.0
    route_timeout_s: float = 10.0
    role_inject_timeout_s: float = 5.0
    agent_timeout_s: float = 120.0
    route_attempts: int = 2
    fleet_wait_s: float = 600.0
    fleet_retry_s: float = 1.0
    overload_wait_s: float = 600.0
    overload_backoff_s: float = 0.05
    overload_backoff_max_s: float = 2.0
    max_fallbacks: int | None = None
    role_pack: str | None = None
    trace_content: bool = False
    routing_profile: str = "elixir-port"
    route_rule: str = "argmax"
    route_temperature: float = 1.0
    route_seed: int | None = None


@dataclass(frozen=True)
class CallContext:
    """What a port call carries besides its payload: provenance and the time it may take."""

    request_id: str
    turn: int
    causation_id: str
    timeout_s: float


RoutePort = Callable[[RouteRequest, CallContext], Awaitable[RouteLogits]]
InjectPort = Callable[[RoleInjectRequest, CallContext], Awaitable[RoleInjectReply]]
AgentPort = Callable[[AgentCallIntent, CallContext], Awaitable[AgentCallReceipt]]
EmitPort = Callable[[TraceEvent], Awaitable[None]]


def _uuid() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Ports:
    """The effects a run may have. Ports raise :class:`RouteFailed`, :class:`RoleInjectFailed` and
    :class:`AgentCallFailed`; ``emit`` never raises. ``clock`` is monotonic seconds (budgets), ``wall`` is
    epoch seconds (event timestamps), ``new_id`` makes event ids."""

    route: RoutePort
    inject: InjectPort
    call_agent: AgentPort
    emit: EmitPort
    clock: Callable[[], float]
    wall: Callable[[], float]
    new_id: Callable[[], str] = _uuid
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    jitter: Callable[[], float] = random.random


RecordTurn = Callable[[TurnRecord, "list[int] | None", str], Awaitable[None]]


@dataclass(frozen=True)
class Resume:
    """Durable execution of one queued job (see :mod:`.journal`).

    ``turns``: turns completed by earlier deliveries (replayed, never called again); ``rng_state`` and
    ``cause``: the sampler's state and the last trace event id after them; ``deadline_at``: the job's
    absolute deadline (epoch seconds, on ``Ports.wall``), so the budget's deadline does not restart on a
    redelivery; ``record``: called with each newly completed turn before the run goes on (it raises to stop
    the run when another coordinator took it over); ``guard``: awaited before every route and agent call
    (raises likewise); ``requeue_after_s``: a route still ``overloaded`` after this long raises
    :class:`RunDeferred` (the job goes back to the queue with a delay) instead of waiting on (``None``: wait).
    """

    turns: list[TurnRecord] = field(default_factory=list)
    rng_state: list[int] | None = None
    cause: str = ""
    deadline_at: float | None = None
    record: RecordTurn | None = None
    guard: Callable[[], Awaitable[None]] | None = None
    requeue_after_s: float | None = None


class RunDeferred(Exception):
    """The run cannot proceed now (every runtime overloaded): hand the job back to the queue with a delay."""

    def __init__(self, request_id: str, turn: int, waited_s: float) -> None:
        super().__init__(f"run {request_id} turn {turn}: every runtime overloaded for {waited_s:.1f}s; "
                         "handing the job back to the queue")
        self.request_id, self.turn, self.waited_s = request_id, turn, waited_s



def resolve_role(
    routed: Role, suggestion: Suggestion | None, has_worker_reply: bool, policy: VerifierBeforeWorker,
) -> tuple[Role, RoleSource, str]:
    """The role a turn plays, why, and a note on anything overridden or ignored.

    Example:
        >>> resolve_role(Role.WORKER, Suggestion("verifier", Role.VERIFIER), True, "worker")
        (<Role.VERIFIER: 2>, <RoleSource.THINKER_SUGGESTION: 'thinker_suggestion'>, '')
        >>> resolve_role(Role.VERIFIER, None, False, "worker")[1]
        <RoleSource.VERIFIER_BEFORE_WORKER: 'verifier_before_worker_fallback'>
    """
    role, source, notes = routed, RoleSource.ROUTER, []
    if suggestion is not None:
        if suggestion.role is None:
            notes.append(f"ignored unknown suggested role {suggestion.raw!r}")
        else:
            role, source = suggestion.role, RoleSource.THINKER_SUGGESTION
    if role is Role.VERIFIER and not has_worker_reply and policy == "worker":  # "end": the run stops (Run._turn)
        notes.append(f"Verifier ({source.value}) chosen before any Worker reply; ran as Worker")
        role, source = Role.WORKER, RoleSource.VERIFIER_BEFORE_WORKER
    return role, source, "; ".join(notes)


def effective_mask(request_mask: list[int] | None, policy_mask: tuple[int, ...] | None) -> list[int] | None:
    """The request's agent mask intersected with the deployment's (``None``: no restriction)."""
    if request_mask is None and policy_mask is None:
        return None
    if request_mask is None:
        return sorted(set(policy_mask or ()))
    if policy_mask is None:
        return sorted(set(request_mask))
    return sorted(set(request_mask) & set(policy_mask))


class _Stop(Exception):
    def __init__(self, reason: StopReason, error: str | None = None, code: str | None = None) -> None:
        self.reason, self.error, self.code = reason, error, code
        super().__init__(reason.value)


class Run:
    """One coordination run. Use :func:`coordinate`."""

    def __init__(self, request: CoordinationRequest, ports: Ports, policy: Policy,
                 resume: Resume | None = None) -> None:
        self.request = request
        self.ports = ports
        self.policy = policy
        self.resume = resume or Resume()
        elapsed = 0.0
        if self.resume.deadline_at is not None and request.budget.deadline_ms is not None:
            elapsed = request.budget.deadline_ms / 1000.0 - (self.resume.deadline_at - ports.wall())
        self.budget = BudgetTracker(request.budget, ports.clock, elapsed_s=elapsed)
        self.transcript: list[Message] = [Message(role="user", content=request.query)]
        self.history: list[TranscriptEntry] = []
        self.turns: list[TurnRecord] = []
        self.answer: str | None = None
        self.answer_turn: int | None = None
        self.pending: Suggestion | None = None
        self.mask = effective_mask(request.agent_mask, policy.agent_mask)
        self._cause = request.request_id
        self._route_hash = ""
        self.route_seed: int | None = None
        self._rng: random.Random | None = None
        if policy.route_rule == "sample":
            self.route_seed = policy.route_seed if policy.route_seed is not None else int.from_bytes(
                hashlib.sha256(request.request_id.encode()).digest()[:4], "big")
            self._rng = random.Random(self.route_seed)

    # -- tracing -----------------------------------------------------------------------------------------
    def _base(self, turn: int = -1) -> dict[str, Any]:
        return {"request_id": self.request.request_id, "event_id": self.ports.new_id(),
                "causation_id": self._cause, "ts": self.ports.wall(), "turn": turn,
                "adapter": self.request.adapter, "route_hash": self._route_hash}

    async def _emit(self, event: TraceEvent) -> None:
        self._cause = event.event_id
        await self.ports.emit(event)

    def _ctx(self, turn: int, timeout_s: float) -> CallContext:
        remaining = self.budget.remaining_s()
        if remaining is not None:
            timeout_s = min(timeout_s, remaining)
        return CallContext(self.request.request_id, turn, self._cause, max(timeout_s, 0.001))

    def _deadline_ms(self) -> int | None:
        remaining = self.budget.remaining_s()
        return None if remaining is None else max(1, int(remaining * 1000))

    # -- steps -------------------------------------------------------------------------------------------
    async def _route(self, turn: int) -> RouteDecision:
        messages = observation(self.policy.routing_profile, self.request.query, self.history)
        req = RouteRequest(request_id=self.request.request_id, turn=turn, messages=messages,
                           backend=self.request.backend, adapter=self.request.adapter,
                           run_id=self.request.request_id, deadline_ms=self._deadline_ms())
        attempts = max(1, self.policy.route_attempts)
        attempt, failed, wait_from, last = 0, 0, None, None
        overloaded, overload_from = 0, None
        while True:
            if (reason := self.budget.check_deadline()) is not None:
                if wait_from is not None and last is not None:  # the deadline passed while waiting for a runtime
                    raise _Stop(reason, f"routing turn {turn}: no runtime joined within "
                                f"{self.ports.clock() - wait_from:.1f}s before the deadline: {last}", last.code.value)
                raise _Stop(reason, None)
            attempt += 1
            try:
                if self.resume.guard is not None:
                    await self.resume.guard()
                logits = await self.ports.route(req, self._ctx(turn, self.policy.route_timeout_s))
                break
            except RouteFailed as e:
                if e.code is ErrorCode.OVERLOADED and self.policy.overload_wait_s > 0:
                    # every runtime at capacity: back off with jitter (overload_wait_s = 0: a plain retryable error)
                    overloaded += 1
                    now = self.ports.clock()
                    overload_from = now if overload_from is None else overload_from
                    waited = now - overload_from
                    requeue = self.resume.requeue_after_s
                    if requeue is not None and waited >= requeue:
                        raise RunDeferred(self.request.request_id, turn, waited) from None
                    left = self.policy.overload_wait_s - waited
                    remaining = self.budget.remaining_s()
                    if remaining is not None:
                        left = min(left, remaining)
                    if left > 0:
                        cap = min(self.policy.overload_backoff_max_s,
                                  self.policy.overload_backoff_s * 2 ** min(overloaded - 1, 20))
                        delay = min(left, max(0.001, cap * self.ports.jitter()))
                        if overloaded == 1 or overloaded % 10 == 0:
                            await self._emit(RouteDeferred(
                                **self._base(turn), error_code=e.code.value, message=e.message, attempt=overloaded,
                                retry_in_s=round(delay, 3), waited_s=round(waited, 3),
                                wait_limit_s=round(waited + left, 3), attrs={"waiting_for": "runtime_capacity"}))
                        await self.ports.sleep(delay)
                        continue
                    raise _Stop(StopReason.ROUTE_FAILED, f"routing turn {turn} failed: every runtime stayed "
                                f"overloaded for {waited:.1f}s: {e}", e.code.value) from None
                if e.code is ErrorCode.UNAVAILABLE:  # no runtime (yet): wait for one to join
                    last = e
                    now = self.ports.clock()
                    wait_from = now if wait_from is None else wait_from
                    waited = now - wait_from
                    left = self.policy.fleet_wait_s - waited
                    remaining = self.budget.remaining_s()
                    if remaining is not None:
                        left = min(left, remaining)
                    if left > 0:
                        delay = min(self.policy.fleet_retry_s, left)
                        if attempt == 1 or attempt % 10 == 0:
                            await self._emit(RouteDeferred(
                                **self._base(turn), error_code=e.code.value, message=e.message, attempt=attempt,
                                retry_in_s=delay, waited_s=round(waited, 3),
                                wait_limit_s=None if remaining is None and self.policy.fleet_wait_s <= 0
                                else round(waited + left, 3)))
                        await self.ports.sleep(delay)
                        continue
                    raise _Stop(StopReason.ROUTE_FAILED, f"routing turn {turn} failed: no runtime joined within "
                                f"{waited:.1f}s: {e}", e.code.value) from None
                failed += 1
                if not e.retryable or failed >= attempts:
                    raise _Stop(StopReason.ROUTE_FAILED, f"routing turn {turn} failed: {e}", e.code.value) from None
        if logits.routing_profile != self.policy.routing_profile:
            raise _Stop(StopReason.ROUTE_FAILED, f"the runtime routed turn {turn} under routing profile "
                        f"{logits.routing_profile!r}; this coordinator runs {self.policy.routing_profile!r} "
                        "(set the same routing_profile in model_runtime and coordinator)", "invalid")
        try:
            decision = choose(logits, self.policy.profile, self.mask, profile=self.policy.routing_profile,
                              rule=self.policy.route_rule, temperature=self.policy.route_temperature,
                              rng=self._rng)
        except (SchemaError, ValueError, ArithmeticError) as e:  # any logits it cannot read end the run
            raise _Stop(StopReason.ROUTE_FAILED, f"cannot interpret routing logits of turn {turn}: {e}",
                        "invalid") from None
        self._route_hash = decision.route_hash
        await self._emit(RouteDecided(**self._base(turn), decision=decision, token_count=logits.token_count,
                                      cached_tokens=logits.cached_tokens, route_latency_ms=logits.latency_ms,
                                      runtime_id=logits.runtime_id,
                                      routing_profile=self.policy.routing_profile))
        return decision

    async def _inject(self, turn: int, agent_id: int, role: Role) -> RoleInjectReply:
        req = RoleInjectRequest(request_id=self.request.request_id, turn=turn, agent_id=agent_id, role=role,
                                query=self.request.query, history=list(self.history),
                                role_pack=self.policy.role_pack)
        try:
            reply = await self.ports.inject(req, self._ctx(turn, self.policy.role_inject_timeout_s))
        except RoleInjectFailed as e:
            raise _Stop(StopReason.ROLE_INJECT_FAILED, f"role injection for turn {turn} failed: {e}",
                        e.code.value) from None
        if reply.turn != turn or reply.role is not role:
            raise _Stop(StopReason.ROLE_INJECT_FAILED,
                        f"role injector answered turn {reply.turn} as {reply.role.label}, "
                        f"asked turn {turn} as {role.label}", "upstream")
        return reply

    def _intent(self, turn: int, agent_id: int, role: Role, messages: list[Message]) -> AgentCallIntent:
        max_tokens = self.policy.agent_max_tokens
        left = self.budget.remaining_tokens()
        if left is not None:
            max_tokens = max(1, min(max_tokens, left))
        return AgentCallIntent(request_id=self.request.request_id, turn=turn, agent_id=agent_id, role=role,
                               messages=messages, max_tokens=max_tokens, temperature=self.policy.temperature,
                               deadline_ms=self._deadline_ms())

    async def _call(self, turn: int, decision: RouteDecision, role: Role, inject: RoleInjectReply,
                    failures: list[AgentFailure]) -> tuple[AgentCallIntent | None, AgentCallReceipt | None,
                                                          StopReason | None]:
        ranking = decision.agent_ranking
        if self.policy.max_fallbacks is not None:
            ranking = ranking[: 1 + self.policy.max_fallbacks]
        intent: AgentCallIntent | None = None
        for i, agent_id in enumerate(ranking):
            if (reason := self.budget.check_call()) is not None:
                return intent, None, reason
            intent = self._intent(turn, agent_id, role, inject.messages)
            encoded = msgspec.json.encode(inject.messages)
            prompt_text = encoded.decode() if self.policy.trace_content else None
            await self._emit(AgentCallStarted(**self._base(turn), agent_id=agent_id, role=role.label,
                                              prompt_sha256=inject.prompt_sha256 or hashlib.sha256(encoded).hexdigest(),
                                              prompt_text=prompt_text))
            if self.resume.guard is not None:
                await self.resume.guard()
            self.budget.start_call()
            try:
                receipt = await self.ports.call_agent(intent, self._ctx(turn, self.policy.agent_timeout_s))
                if (receipt.request_id, receipt.turn, receipt.agent_id) != (self.request.request_id, turn, agent_id):
                    raise AgentCallFailed("upstream", f"agent {agent_id} answered for request "
                                          f"{receipt.request_id!r} turn {receipt.turn} agent {receipt.agent_id}")
            except AgentCallFailed as e:
                nxt = ranking[i + 1] if i + 1 < len(ranking) else None
                failures.append(AgentFailure(agent_id=agent_id, error_code=e.code.value, message=e.message,
                                             fallback_agent_id=nxt))
                await self._emit(AgentCallFailedEvent(**self._base(turn), agent_id=agent_id, error_code=e.code.value,
                                                      message=e.message, fallback_agent_id=nxt))
                continue
            self.budget.record_receipt(receipt)
            shown = receipt if self.policy.trace_content else msgspec.structs.replace(
                receipt, content=f"sha256:{sha256_text(receipt.content)}")
            await self._emit(AgentCallFinished(**self._base(turn), receipt=shown))
            return intent, receipt, None
        return intent, None, None

    async def _turn(self, turn: int) -> None:
        self.budget.start_turn()
        decision = await self._route(turn)
        suggestion, self.pending = self.pending, None
        role, source, note = resolve_role(decision.role, suggestion, self.answer is not None,
                                          self.policy.verifier_before_worker)
        if role is Role.VERIFIER and self.answer is None and self.policy.verifier_before_worker == "end":
            raise _Stop(StopReason.VERIFIER_BEFORE_WORKER,
                        f"a Verifier ({source.value}) was chosen at turn {turn} before any Worker reply; "
                        f"routing profile {self.policy.routing_profile!r} ends the run there")
        inject = await self._inject(turn, decision.agent_id, role)
        assignment = RoleAssignment(request_id=self.request.request_id, turn=turn, agent_id=decision.agent_id,
                                    role=role, source=source, routed_role=decision.role,
                                    role_pack=inject.role_pack,
                                    suggestion=suggestion.raw if suggestion else None, note=note)
        await self._emit(RoleAssigned(**self._base(turn), assignment=assignment))
        failures: list[AgentFailure] = []
        intent, receipt, budget_stop = await self._call(turn, decision, role, inject, failures)
        wait_from, attempt = self.ports.clock(), 1
        while receipt is None and budget_stop is None and failures and \
                all(f.error_code == ErrorCode.UNAVAILABLE.value for f in failures):
            # no agent serves yet (the fleet is starting): wait for them as for a runtime, then call again
            waited = self.ports.clock() - wait_from
            left = self.policy.fleet_wait_s - waited
            remaining = self.budget.remaining_s()
            if remaining is not None:
                left = min(left, remaining)
            if left <= 0:
                break
            delay = min(max(self.policy.fleet_retry_s, 2.0), left)
            if attempt == 1 or attempt % 10 == 0:
                await self._emit(RouteDeferred(**self._base(turn), error_code=ErrorCode.UNAVAILABLE.value,
                                               message=f"no agent serves yet: {failures[0].message}",
                                               attempt=attempt, retry_in_s=delay, waited_s=round(waited, 3),
                                               wait_limit_s=round(waited + left, 3),
                                               attrs={"waiting_for": "agents"}))
            await self.ports.sleep(delay)
            attempt += 1
            failures = []
            intent, receipt, budget_stop = await self._call(turn, decision, role, inject, failures)
        if receipt is None:
            self.turns.append(TurnRecord(turn=turn, decision=decision, assignment=assignment, intent=intent,
                                         failures=failures, budget=self.budget.snapshot()))
            if budget_stop is not None:
                raise _Stop(budget_stop)
            tried = ", ".join(str(f.agent_id) for f in failures) or "none"
            raise _Stop(StopReason.NO_AGENT_AVAILABLE,
                        f"every candidate agent failed at turn {turn} (tried {tried})", "unavailable")
        if receipt.agent_id != assignment.agent_id:
            assignment = msgspec.structs.replace(assignment, agent_id=receipt.agent_id)
        self.transcript.append(Message(role="assistant", content=receipt.content))
        self.history.append(TranscriptEntry(turn=turn, agent_id=receipt.agent_id, role=role,
                                            content=receipt.content))
        verdict: VerifierVerdict | None = None
        if role is Role.WORKER:
            self.answer, self.answer_turn = receipt.content, turn
        elif role is Role.THINKER:
            self.pending = read_suggestion(self.policy.routing_profile, receipt.content)
        else:
            parsed = read_verdict(self.policy.routing_profile, receipt.content)
            verdict = VerifierVerdict(request_id=self.request.request_id, turn=turn, verdict=parsed.verdict,
                                      parsed=parsed.parsed, excerpt=parsed.excerpt)
            await self._emit(VerdictRecorded(**self._base(turn), verdict=verdict))
        snapshot = self.budget.snapshot()
        await self._emit(BudgetRecorded(**self._base(turn), budget=snapshot))
        record = TurnRecord(turn=turn, decision=decision, assignment=assignment, intent=intent, receipt=receipt,
                            verdict=verdict, failures=failures, budget=snapshot)
        self.turns.append(record)
        if self.resume.record is not None:  # durable before going on: a redelivery resumes after this turn
            await self.resume.record(record, self._rng_state(), self._cause)
        if verdict is not None and verdict.verdict is Verdict.ACCEPT:
            raise _Stop(StopReason.ACCEPTED)

    def _rng_state(self) -> list[int] | None:
        if self._rng is None:
            return None
        version, internal, _gauss = self._rng.getstate()
        return [version, *internal]

    def _replay(self) -> _Stop | None:
        """Rebuild the run's state from the turns earlier deliveries completed (no port is called)."""
        resume = self.resume
        if self._rng is not None and resume.rng_state:
            self._rng.setstate((resume.rng_state[0], tuple(resume.rng_state[1:]), None))
        if resume.cause:
            self._cause = resume.cause
        for record in resume.turns:
            receipt = record.receipt
            if receipt is None:  # not a completed turn (never recorded as one)
                break
            self.budget.start_turn()
            for _ in range(len(record.failures) + 1):
                self.budget.start_call()
            self.budget.record_receipt(receipt)
            role = record.assignment.role
            self.pending = None
            self.transcript.append(Message(role="assistant", content=receipt.content))
            self.history.append(TranscriptEntry(turn=record.turn, agent_id=receipt.agent_id, role=role,
                                                content=receipt.content))
            if role is Role.WORKER:
                self.answer, self.answer_turn = receipt.content, record.turn
            elif role is Role.THINKER:
                self.pending = read_suggestion(self.policy.routing_profile, receipt.content)
            self.turns.append(record)
            if record.verdict is not None and record.verdict.verdict is Verdict.ACCEPT:
                return _Stop(StopReason.ACCEPTED)
        return None

    async def execute(self) -> CoordinationResult:
        """Run to completion and return the full record (after the resumed turns, if any)."""
        q = self.request.query
        replayed = self._replay()
        resumed = {"resumed_at_turn": str(len(self.turns))} if self.resume.turns else {}
        await self._emit(RunStarted(**self._base(), query_sha256=sha256_text(q),
                                    query_text=q if self.policy.trace_content else None,
                                    attrs={"verifier_before_worker": self.policy.verifier_before_worker,
                                           "routing_profile": self.policy.routing_profile,
                                           "route_rule": self.policy.route_rule,
                                           **({"route_seed": str(self.route_seed)}
                                              if self.route_seed is not None else {}),
                                           "agent_mask": ",".join(map(str, self.mask))
                                           if self.mask is not None else "all", **resumed}))
        stop: _Stop
        if replayed is not None:
            stop = replayed
        elif self.mask is not None and not self.mask:
            stop = _Stop(StopReason.NO_AGENT_AVAILABLE,
                         "the request's agent_mask and this deployment's agents do not overlap", "invalid")
        else:
            turn = len(self.turns)
            while True:
                if (reason := self.budget.check_turn()) is not None:
                    stop = _Stop(reason)
                    break
                try:
                    await self._turn(turn)
                except _Stop as s:
                    stop = s
                    break
                turn += 1
        if self.resume.guard is not None:  # a run taken over elsewhere does not record an end here
            await self.resume.guard()
        return await self._finish(stop)

    async def _finish(self, stop: _Stop) -> CoordinationResult:
        self._route_hash = ""
        error = stop.error
        if self.answer is None and error is None:
            error = f"no Worker reply before the run stopped ({stop.reason.value})"
        status = RunStatus.OK if self.answer is not None else RunStatus.FAILED
        n = len(self.turns)
        answer = self.answer
        if answer is not None:
            await self._emit(RunFinished(
                **self._base(), stop_reason=stop.reason, answer_sha256=sha256_text(answer),
                answer_text=answer if self.policy.trace_content else None, answer_turn=self.answer_turn,
                turns=n, attrs={"error": error} if error else {}))
        else:
            await self._emit(RunFailed(**self._base(), error_code=stop.code or "no_answer",
                                       message=error or "", stop_reason=stop.reason))
        return CoordinationResult(request_id=self.request.request_id, status=status, answer=self.answer,
                                  stop_reason=stop.reason, turns=self.turns, budget=self.budget.snapshot(),
                                  error=error, answer_turn=self.answer_turn,
                                  routing_profile=self.policy.routing_profile, route_seed=self.route_seed)


async def coordinate(request: CoordinationRequest, ports: Ports, policy: Policy | None = None,
                     resume: Resume | None = None) -> CoordinationResult:
    """Run TRINITY's loop for ``request`` through ``ports`` (see the module docstring); ``resume`` continues a
    queued job after the turns its earlier deliveries completed."""
    return await Run(request, ports, policy or Policy(), resume).execute()


__all__ = [
    "CallContext",
    "Policy",
    "PortError",
    "Ports",
    "Resume",
    "Run",
    "RunDeferred",
    "coordinate",
    "effective_mask",
    "resolve_role",
]
