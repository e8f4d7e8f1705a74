"""Cheap evaluation of router candidates: real coordination runs, in process, with memoization.

Each episode is one task run through :class:`actors.coordinator.state_machine.Run` (the coordinator's own loop
and the routing profile's rules from :mod:`actors.coordinator.profiles`, so what is trained is what is served)
with in-process ports:

* **route** — the candidate's head applied to the backbone's final-norm state at position -2 of the router
  text. For a ``head-only`` layout that state does not depend on the candidate, so :class:`HiddenMemo`
  computes it once per distinct router text (packed batches through :class:`RouterEngine`) and every
  candidate costs one small matmul. Layouts with SVF offsets load the candidate as an engine adapter
  (milliseconds) and route through it (:class:`AdapterRouter`); only agent replies are shared then.
* **inject** — the role injector's builder (pure function) with the pack the coordinator would ask for: the
  routing profile's (``sakana-fugu/1`` under ``sakana``, ``DEFAULT_ROLE_PACK``) unless ``role_pack`` names one.
* **call_agent** — the provider pool (tool agents, SmolLM2, HTTP providers); replies of deterministic agents are
  memoized by ``(agent, role, max_tokens, temperature, messages)`` (:class:`ReplyMemo`).

The hidden vector stays inside this process (DESIGN rule 5 is about the bus).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import numpy as np
from numpy.typing import NDArray

from actors.coordinator.errors import AgentCallFailed, RouteFailed
from actors.coordinator.profiles import DEFAULT_ROLE_PACK, VERIFIER_BEFORE_WORKER, observation
from actors.coordinator.state_machine import CallContext, Policy, Ports, Run
from actors.provider_agents.errors import ProviderError
from actors.role_injector.builder import build
from actors.role_injector.packs import BUILTIN_PACKS, PackRegistry
from crucible.training.fitness import FitnessWeights, episode_fitness
from crucible.training.layout import VectorLayout
from crucible.world.tasks import Task, grade
from schemas.common import Message
from schemas.coordination import AgentCallIntent, AgentCallReceipt, Budget, CoordinationRequest
from schemas.roles import RoleInjectReply, RoleInjectRequest
from schemas.routing import RouteLogits, RouteRequest
from schemas.trace import TraceEvent
from schemas.wire import ErrorCode

_ZERO_HASH = "0" * 64
AgentCall = Callable[[AgentCallIntent], Awaitable[AgentCallReceipt]]


class Features(Protocol):
    """Router text -> final-norm hidden state at position -2 (float64 ``(hidden,)``), memoized."""

    hidden: int

    def text(self, messages: Sequence[Message]) -> str:
        """The router text of ``messages`` under the routing profile."""
        ...

    def states(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """Hidden states of ``texts`` (``(len(texts), hidden)``)."""
        ...


class HiddenMemo:
    """Hidden states of a :class:`~actors.model_runtime.engine.RouterEngine` (base adapter), one per router text.

    ``hits``/``misses`` count lookups; ``forward_s`` is the time spent in the backbone.
    """

    def __init__(self, engine: Any, batch: int = 16, share_prefix: bool = True) -> None:
        from actors.model_runtime.formatting import router_text

        self.engine = engine
        #: run the router texts' shared system preamble once (see :meth:`_from_prefix`)
        self.share_prefix = share_prefix
        self._prefix: tuple[list[int], Any] | None = None
        self.hidden = int(engine.model.config.hidden_size)
        self.batch = batch
        self._router_text = router_text
        self._memo: dict[str, NDArray[np.float64]] = {}
        self.hits = 0
        self.misses = 0
        self.forward_s = 0.0

    def text(self, messages: Sequence[Message]) -> str:
        """The router text of ``messages`` (the engine's routing profile and agent count)."""
        return str(self._router_text(list(messages), self.engine.settings.routing_profile,
                                     self.engine.head.spec.num_agents))

    def _compute(self, texts: list[str]) -> None:
        import torch

        from actors.model_runtime.errors import ModelRuntimeError

        start = time.perf_counter()
        for i in range(0, len(texts), self.batch):
            chunk = texts[i:i + self.batch]
            prepared = []
            for t in chunk:
                ids = self.engine.tokenizer.encode(t)
                if len(ids) < 2:
                    raise RouteFailed(ErrorCode.INVALID, f"router text of {len(ids)} tokens; needs at least 2")
                ids = ids[-self.engine.max_context_tokens:]
                prepared.append(_Prepared(ids))
            if self.share_prefix:
                with torch.inference_mode():
                    results = [self._from_prefix(p.feed) for p in prepared]
            else:
                results = self.engine._hidden(prepared)  # package-internal hook: the final-norm state at -2
            for t, r in zip(chunk, results, strict=True):
                if isinstance(r, ModelRuntimeError):
                    raise RouteFailed(ErrorCode.INVALID, str(r))
                state = r if isinstance(r, torch.Tensor) else r.hidden
                self._memo[t] = state.detach().to(torch.float64).cpu().numpy()
        self.forward_s += time.perf_counter() - start

    def _from_prefix(self, feed: list[int]) -> Any:
        """The state at the end of ``feed``, continuing from the K/V of the router texts' shared prefix.

        Every router text starts with the same system preamble (most of a first-turn text's tokens): it runs
        once, its cache is cloned per text and only the rest runs (package-internal engine hooks, the same
        ones the runtime's own prefix cache uses). Base adapter only.
        """
        from transformers import DynamicCache

        from actors.model_runtime.prefix_cache import common_prefix_len

        if self._prefix is None:
            n = len(feed) - 1
            cache = DynamicCache(config=self.engine.model.config)
            self.engine._forward_one(feed[:n], 0, cache, None)
            self._prefix = (feed[:n], cache)
        ids, cache = self._prefix
        reuse = min(common_prefix_len(ids, feed), len(feed) - 1)
        if reuse < 1:
            return self.engine._forward_one(feed, 0, DynamicCache(config=self.engine.model.config), None)
        return self.engine._forward_one(feed[reuse:], reuse, self.engine._slice_cache(cache, 0, reuse), None)

    def states(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """Hidden states of ``texts``, computing the missing ones in packed batches."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        if missing:
            self._compute(missing)
        return np.stack([self._memo[t] for t in texts])

    def stats(self) -> dict[str, Any]:
        """Counters for the checkpoint and the report."""
        return {"texts": len(self._memo), "hits": self.hits, "misses": self.misses,
                "forward_s": round(self.forward_s, 3)}


@dataclass
class _Prepared:
    """The minimum of :class:`~actors.model_runtime.engine.PreparedRoute` that ``RouterEngine._hidden`` reads."""

    ids: list[int]
    request: Any = None
    adapter: str = "base"

    def __post_init__(self) -> None:
        self.request = _NoRun()

    @property
    def feed(self) -> list[int]:
        return self.ids[:-1]


class _NoRun:
    run_id = None


class ReplyMemo:
    """Agent replies memoized for deterministic agents (others are always called)."""

    def __init__(self, call: AgentCall, deterministic: set[int]) -> None:
        self.call = call
        self.deterministic = set(deterministic)
        self._memo: dict[tuple[Any, ...], AgentCallReceipt] = {}
        self.hits = 0
        self.misses = 0
        self.calls = 0
        #: USD of the calls really made (memo hits are free)
        self.spent_usd = 0.0
        #: a :class:`~crucible.training.budget.SpendMeter` also charged per real call (the trainer's, or None)
        self.meter: Any = None

    async def _real(self, intent: AgentCallIntent) -> AgentCallReceipt:
        self.calls += 1
        got = await self.call(intent)
        self.spent_usd += got.cost_usd
        if self.meter is not None:
            self.meter.add(got.cost_usd)
        return got

    async def __call__(self, intent: AgentCallIntent) -> AgentCallReceipt:
        if intent.agent_id not in self.deterministic:
            return await self._real(intent)
        key = (intent.agent_id, int(intent.role), intent.max_tokens, intent.temperature,
               msgspec.json.encode(intent.messages))
        got = self._memo.get(key)
        if got is None:
            self.misses += 1
            got = await self._real(intent)
            self._memo[key] = got
        else:
            self.hits += 1
        return msgspec.structs.replace(got, request_id=intent.request_id, turn=intent.turn)

    def stats(self) -> dict[str, Any]:
        """Counters for the checkpoint and the report."""
        return {"replies": len(self._memo), "hits": self.hits, "misses": self.misses, "calls": self.calls,
                "spent_usd": round(self.spent_usd, 6)}


@dataclass(frozen=True)
class Episode:
    """One task under one candidate: the answer, whether it is right, the agents called, the fitness."""

    task_id: str
    family: str
    correct: bool
    agents: tuple[int, ...]
    roles: tuple[int, ...]
    stop_reason: str
    fitness: float


@dataclass
class Evaluation:
    """A candidate over a set of tasks."""

    episodes: list[Episode] = field(default_factory=list)

    @property
    def fitness(self) -> float:
        """Mean episode fitness."""
        return float(np.mean([e.fitness for e in self.episodes])) if self.episodes else 0.0

    @property
    def accuracy(self) -> float:
        """Fraction of tasks answered right."""
        return float(np.mean([e.correct for e in self.episodes])) if self.episodes else 0.0


RouteFn = Callable[[RouteRequest], RouteLogits]


class EpisodeRunner:
    """Runs coordination episodes for candidates of ``layout`` (see the module docs).

    ``features`` serves ``head-only`` layouts; ``adapter_router`` (a callable ``(vector) -> context manager
    yielding a RouteFn``) serves layouts with SVF offsets.
    """

    def __init__(self, layout: VectorLayout, call_agent: AgentCall, *, deterministic: set[int],
                 features: Features | None = None, adapter_router: Any = None,
                 routing_profile: str = "elixir-port", route_rule: str = "argmax", max_turns: int = 5,
                 agent_mask: Sequence[int] | None = None, agent_max_tokens: int = 64,
                 weights: FitnessWeights | None = None, role_pack: str | None = None) -> None:
        if layout.head_only and features is None:
            raise ValueError("a head-only layout needs features (a HiddenMemo)")
        if not layout.head_only and adapter_router is None:
            raise ValueError(f"layout {layout.name} adapts the backbone; it needs an adapter_router")
        self.layout = layout
        self.features = features
        self.adapter_router = adapter_router
        self.replies = ReplyMemo(call_agent, deterministic)
        self.policy = Policy(verifier_before_worker=VERIFIER_BEFORE_WORKER[routing_profile],  # type: ignore[arg-type]
                             agent_mask=tuple(agent_mask) if agent_mask is not None else None,
                             agent_max_tokens=agent_max_tokens, temperature=0.0, route_attempts=1,
                             fleet_wait_s=0.0, routing_profile=routing_profile, route_rule=route_rule,
                             route_seed=0 if route_rule == "sample" else None,
                             role_pack=role_pack or DEFAULT_ROLE_PACK[routing_profile])
        self.packs = PackRegistry(list(BUILTIN_PACKS))
        self.packs.resolve(self.policy.role_pack)  # an unknown pack fails here, not in the first episode
        self.routing_profile = routing_profile
        self.max_turns = max_turns
        self.weights = weights or FitnessWeights(max_turns=max_turns)
        self.episodes_run = 0
        self.turns_run = 0
        #: Column scale of the head (``None``: none): the candidate ``x`` encodes ``W / scale`` (see
        #: :meth:`feature_scale`); :meth:`head_of` gives the head the runtime applies.
        self.scale: NDArray[np.float64] | None = None

    def head_of(self, x: NDArray[np.floating]) -> NDArray[np.float64]:
        """The head matrix candidate ``x`` stands for (its layout head times :attr:`scale`, column-wise)."""
        head = self.layout.head(x)
        return head if self.scale is None else head * self.scale[None, :]

    def feature_scale(self, tasks: Sequence[Task]) -> NDArray[np.float64]:
        """``1 / RMS`` of each hidden dimension over the first-turn states of ``tasks`` (1 where it is 0).

        Backbones have a few dimensions with huge, nearly constant activations (SmolLM2: one at ~32 where the
        median is ~0.7); an isotropic search over ``W`` then routes every text alike. Searching ``x = W * rms``
        instead weighs every dimension equally at the start; the exported head is ``W`` itself, so the runtime
        needs no normalization.
        """
        assert self.features is not None
        texts = [self.features.text(observation(self.routing_profile, t.question, [])) for t in tasks]
        rms = np.sqrt(np.mean(self.features.states(texts) ** 2, axis=0))
        return np.where(rms > 1e-12, 1.0 / np.maximum(rms, 1e-12), 1.0)

    def pca_basis(self, tasks: Sequence[Task], k: int) -> NDArray[np.float64]:
        """A data basis ``P {k, hidden}`` for ``W = Z P`` searches (``--basis pca``), from first-turn states.

        Rows: the mean preconditioned state ``m / |m|^2`` (so ``P[0] @ f`` is ~1 for every text: a bias), then
        the top ``k - 1`` principal directions of the centred states, each divided by its standard deviation
        (every searched coordinate then moves the logits by the same amount at the start). Preconditioned
        means ``f = h * scale`` (:meth:`feature_scale`); unsupervised: it reads the texts, never the answers.
        """
        assert self.features is not None
        if k < 2:
            raise ValueError(f"a pca basis needs k >= 2 (a bias row and one direction), got {k}")
        texts = [self.features.text(observation(self.routing_profile, t.question, [])) for t in tasks]
        f = self.features.states(texts)
        if self.scale is not None:
            f = f * self.scale[None, :]
        mean = f.mean(axis=0)
        _, sv, vt = np.linalg.svd(f - mean, full_matrices=False)
        k = min(k, vt.shape[0] + 1)
        std = np.maximum(sv[:k - 1] / np.sqrt(len(f)), 1e-12)
        return np.vstack([mean / max(float(mean @ mean), 1e-12), vt[:k - 1] / std[:, None]])

    # -- ports ---------------------------------------------------------------------------------------------
    def _head_route(self, head: NDArray[np.float64]) -> RouteFn:
        assert self.features is not None
        features, n = self.features, self.layout.n_agents

        def route(req: RouteRequest) -> RouteLogits:
            h = features.states([features.text(req.messages)])[0]
            logits = head @ h
            return RouteLogits(request_id=req.request_id, turn=req.turn, agent_logits=logits[:n].tolist(),
                               role_logits=logits[n:].tolist(), token_count=2, transcript_hash=_ZERO_HASH,
                               routing_profile=self.routing_profile, runtime_id="trainer")
        return route

    def _ports(self, route: RouteFn) -> Ports:
        async def route_port(req: RouteRequest, ctx: CallContext) -> RouteLogits:
            return route(req)

        async def inject(req: RoleInjectRequest, ctx: CallContext) -> RoleInjectReply:
            return build(self.packs.resolve(req.role_pack), req)

        async def call_agent(intent: AgentCallIntent, ctx: CallContext) -> AgentCallReceipt:
            try:
                return await self.replies(intent)
            except ProviderError as e:  # the coordinator's typed failure: it falls back to the next agent
                raise AgentCallFailed(ErrorCode.UPSTREAM, f"{type(e).__name__}: {e}", retryable=False) from None

        async def emit(event: TraceEvent) -> None:
            return None

        return Ports(route=route_port, inject=inject, call_agent=call_agent, emit=emit, clock=lambda: 0.0,
                     wall=lambda: 0.0, new_id=lambda: "e")

    # -- episodes ------------------------------------------------------------------------------------------
    async def _episodes(self, route: RouteFn, tasks: Sequence[Task]) -> Evaluation:
        ports = self._ports(route)
        out = Evaluation()
        for task in tasks:
            if self.replies.meter is not None:
                self.replies.meter.check()  # BudgetExhausted once the spend budget is used up
            req = CoordinationRequest(request_id=task.id, query=task.question,
                                      budget=Budget(max_turns=self.max_turns, deadline_ms=None))
            result = await Run(req, ports, self.policy).execute()
            done = [t for t in result.turns if t.receipt is not None]
            agents = tuple(t.receipt.agent_id for t in done)  # type: ignore[union-attr]
            correct = result.answer is not None and grade(task, result.answer)
            out.episodes.append(Episode(task.id, task.family, correct, agents,
                                        tuple(int(t.assignment.role) for t in done), result.stop_reason.value,
                                        episode_fitness(correct, agents, self.weights)))
            self.episodes_run += 1
            self.turns_run += len(result.turns)
        return out

    async def evaluate(self, x: NDArray[np.floating], tasks: Sequence[Task]) -> Evaluation:
        """Run every task under candidate vector ``x``."""
        if self.layout.head_only:
            return await self._episodes(self._head_route(self.head_of(x)), tasks)
        self.layout.check(x)
        with self.adapter_router(np.asarray(x, dtype=np.float64)) as route:
            return await self._episodes(route, tasks)

    def warm(self, tasks: Sequence[Task]) -> None:
        """Compute the first-turn hidden states of ``tasks`` in packed batches (head-only layouts)."""
        if self.features is None:
            return
        texts = [self.features.text(observation(self.routing_profile, t.question, [])) for t in tasks]
        self.features.states(texts)

    def stats(self) -> dict[str, Any]:
        """Memo and episode counters."""
        hidden = self.features.stats() if isinstance(self.features, HiddenMemo) else {}
        return {"episodes": self.episodes_run, "turns": self.turns_run, "replies": self.replies.stats(),
                "hidden": hidden}


class AdapterRouter:
    """Route candidates with SVF offsets through a :class:`RouterEngine`: load as adapter, route, unload."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __call__(self, vector: NDArray[np.float64]) -> Any:
        import contextlib

        from schemas.routing import RouteRequest as _RR

        engine = self.engine

        @contextlib.contextmanager
        def ctx() -> Any:
            info = engine.load_adapter(vector)

            def route(req: RouteRequest) -> RouteLogits:
                logits: RouteLogits = engine.route(msgspec.structs.replace(
                    _RR(request_id=req.request_id, turn=req.turn, messages=req.messages), adapter=info.token))
                return logits
            try:
                yield route
            finally:
                engine.unload_adapter(info.token)
        return ctx()
