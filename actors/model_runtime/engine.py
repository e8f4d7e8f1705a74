"""The routing engine: Qwen3 decoder up to the final-norm state at position -2, then the TRINITY head.

Causal attention makes the state at position -2 depend only on tokens ``0..n-2``, so the engine feeds
``input_ids[:-1]`` and reads the last fed position; it never computes the last token nor the LM head.

Work is synchronous and meant for a single worker thread (see :mod:`actors.model_runtime.batcher`):

* fresh transcripts of a batch run as one forward pass, packed into a single row (no padding): attention
  runs causally within each transcript only (:mod:`.packed_attention`, no dense mask) and positions restart
  at 0 for each; packs hold at
  most ``max_batch`` requests and ``max_batch_tokens`` tokens (longer transcripts run alone);
* transcripts of a run whose K/V is in the :class:`PrefixCache` crop it to the longest common prefix of
  token ids and compute only the rest (an entry is only reused by a request of the adapter that made it).

**Adapters.** Besides ``base`` (the checkpoint's weights and the configured head) the engine holds any
number of cheap SVF adapters (:mod:`actors.model_runtime.adapters`) over the same, unmodified weights:
:meth:`RouterEngine.load_adapter` reads a TRINITY vector, each request names its adapter, and a packed
batch may mix adapters (each token gets its own adapter's offsets; each request its own adapter's head).
Loading and unloading mutate engine state: call them on the worker thread (``RouterRuntime`` does).

Example:
    >>> engine = RouterEngine.load(ModelRuntimeSettings(checkpoint_preset="qwen3-tiny-synthetic"))
    ... # doctest: +SKIP
    >>> engine.route(RouteRequest("r1", 0, [Message("user", "2 + 2?")])).agent_logits  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
from transformers import AutoModel, DynamicCache, PreTrainedModel
from transformers.utils import logging as hf_logging

from actors.model_runtime.adapters import Adapter, AdapterBank, AdapterInfo, VectorSource, read_vector
from actors.model_runtime.checkpoints import resolve_checkpoint
from actors.model_runtime.errors import (
    AdapterBudgetExceeded,
    AdapterNotLoaded,
    AdapterNotServed,
    BaseAdapterPinned,
    CheckpointError,
    ContextTooLong,
    EmptyTranscript,
    HeadShapeMismatch,
    ModelRuntimeError,
    TranscriptTooShort,
)
from actors.model_runtime.formatting import router_text, transcript_hash
from actors.model_runtime.head import RoutingHead
from actors.model_runtime.packed_attention import ATTN_IMPLEMENTATION, PackedSegments
from actors.model_runtime.prefix_cache import PrefixCache, common_prefix_len, crop_to
from actors.model_runtime.tokenizer import RouterTokenizer
from config.model_runtime import ModelRuntimeSettings
from schemas.routing import RouteLogits, RouteRequest
from schemas.sakana import BASE_ADAPTER_TOKEN, HeadSpec

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


#: Backbone families served (``model_type`` of the checkpoint's config): the decoder without its LM head is loaded
#: with ``AutoModel`` and the head size is its ``hidden_size`` (Qwen3-0.6B: 1024; SmolLM2-135M, Llama: 576).
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("qwen3", "llama")


def _model_type(path: Path) -> str:
    import json

    try:
        return str(json.loads((path / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError) as e:
        raise CheckpointError(str(path), f"unreadable config.json: {e}") from None


def pick_device(name: str) -> torch.device:
    """``"auto"``: CUDA where present, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class PreparedRoute:
    """A validated, tokenized request waiting for the worker (``feed`` = ``ids[:-1]``)."""

    request: RouteRequest
    ids: list[int]
    transcript_hash: str
    received: float = field(default_factory=time.perf_counter)

    @property
    def feed(self) -> list[int]:
        """The tokens the decoder runs: all but the last."""
        return self.ids[:-1]

    @property
    def adapter(self) -> str:
        """The adapter token the request asked for."""
        return self.request.adapter


@dataclass
class HiddenResult:
    """The final-norm state at position -2 of one transcript (never leaves this package)."""

    hidden: torch.Tensor
    cached_tokens: int


class RouterEngine:
    """Qwen3 backbone + routing head + tokenizer + prefix cache; synchronous, single-threaded use."""

    def __init__(self, model: PreTrainedModel, tokenizer: RouterTokenizer, head: RoutingHead,
                 settings: ModelRuntimeSettings) -> None:
        hidden = int(model.config.hidden_size)
        if head.spec.cols != hidden:
            raise HeadShapeMismatch((head.spec.rows, head.spec.cols), (head.spec.rows, hidden), head.source)
        if tokenizer.vocab_size > int(model.config.vocab_size):
            raise CheckpointError("model", f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} ids but the "
                                           f"model's vocabulary is {model.config.vocab_size}")
        model.train(False)
        if model.config._attn_implementation != ATTN_IMPLEMENTATION:  # packed batches need it (SDPA otherwise)
            model.set_attn_implementation(ATTN_IMPLEMENTATION)
        if any(t != "full_attention" for t in (getattr(model.config, "layer_types", None) or [])):
            raise CheckpointError("model", "uses sliding-window attention layers; this runtime packs batches with "
                                           "a full-attention mask and supports full-attention Qwen3 only")
        self.model = model
        self.device = next(model.parameters()).device
        self.tokenizer = tokenizer
        self.head = head.to(self.device)
        self.settings = settings
        self.max_batch_tokens = settings.max_batch_tokens
        self.max_context_tokens = min(settings.max_context_tokens, int(model.config.max_position_embeddings) + 1)
        self.cache = PrefixCache(settings.cache_max_tokens, settings.cache_max_bytes)
        self.adapters = AdapterBank(model, self.head.spec, factor_cache_dir=settings.factor_cache_dir,
                                    tied_embedding=settings.tied_embedding or "embed-wins")
        #: Vectors actually loaded (idempotent reloads excluded).
        self.adapter_loads = 0
        # token -> adapter (None: base); replaced, never mutated, so other threads may read it.
        self._slots: MappingProxyType[str, Adapter | None] = MappingProxyType({BASE_ADAPTER_TOKEN: None})
        for vector in settings.adapter_vectors:
            self.load_adapter(vector)
        if settings.adapter not in self._slots:
            raise AdapterNotLoaded(settings.adapter, self.warm_adapters())

    @classmethod
    def load(cls, settings: ModelRuntimeSettings, *, checkpoint_dir: str | Path | None = None,
             head: RoutingHead | None = None, tokenizer: RouterTokenizer | None = None) -> RouterEngine:
        """Load backbone, tokenizer and head as ``settings`` say (explicit arguments take precedence)."""
        s = settings.expanded()
        if s.num_threads is not None:
            torch.set_num_threads(s.num_threads)
        path = Path(checkpoint_dir) if checkpoint_dir is not None else resolve_checkpoint(s)
        if not (path / "config.json").is_file():
            raise CheckpointError(str(path), "no config.json; point checkpoint_dir at a Qwen3 checkpoint folder")
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        kind = _model_type(path)
        if kind not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(str(path), f"model_type is {kind!r}; this runtime serves "
                                             f"{', '.join(SUPPORTED_MODEL_TYPES)} (causal LMs)")
        model = AutoModel.from_pretrained(str(path), dtype=_DTYPES[s.dtype or "float32"],
                                          attn_implementation=ATTN_IMPLEMENTATION)
        model.to(pick_device(s.device))
        tok = tokenizer or RouterTokenizer.load(s.tokenizer_path, path)
        spec = HeadSpec(cols=int(model.config.hidden_size))
        if head is None:
            head = RoutingHead.load(s.head_path, spec) if s.head_path else RoutingHead.random(spec, s.head_seed)
        return cls(model, tok, head, s)

    # -- adapters (worker thread) ------------------------------------------------------------------------

    def load_adapter(self, source: VectorSource) -> AdapterInfo:
        """Load a TRINITY router vector (``.npy``/``.safetensors`` path or array) as a cheap SVF adapter.

        Idempotent: a vector already loaded (same adapter token) returns its info without loading again.
        The first adapter of an engine factors the base matrices (or reads them from ``factor_cache_dir``).

        Raises:
            AdapterVectorInvalid: unreadable, wrong length for this backbone, NaN/inf, degenerate offsets.
            AdapterBudgetExceeded: over ``adapter_memory_budget_mb``.
        """
        started = time.perf_counter()
        vector, desc = read_vector(source)
        plan, ref = self.adapters.plan_vector(vector, desc)
        current = self._slots.get(ref.token)
        if current is not None:
            return current.info
        adapter = self.adapters.build(plan, ref, desc, started)
        used = sum(a.info.nbytes for a in self._slots.values() if a is not None)
        budget = int(self.settings.adapter_memory_budget_mb * 2**20)
        if used + adapter.info.nbytes > budget:
            raise AdapterBudgetExceeded(adapter.info.nbytes, used, budget)
        self._slots = MappingProxyType({**self._slots, ref.token: adapter})
        self.adapter_loads += 1
        return adapter.info

    def unload_adapter(self, token: str) -> None:
        """Forget an adapter and its prefix-cache entries; requests already queued for it fail as not served.

        Raises:
            BaseAdapterPinned: ``token`` is ``"base"``.
            AdapterNotLoaded: no such adapter.
        """
        if token == BASE_ADAPTER_TOKEN:
            raise BaseAdapterPinned()
        if token not in self._slots:
            raise AdapterNotLoaded(token, self.warm_adapters())
        self._slots = MappingProxyType({k: v for k, v in self._slots.items() if k != token})
        self.cache.drop_adapter(token)

    def warm_adapters(self) -> list[str]:
        """Adapter tokens served: ``"base"`` first, then adapters in load order."""
        return list(self._slots)

    def adapter_info(self, token: str) -> AdapterInfo:
        """What ``token`` is and costs (``"base"``: the checkpoint's weights, 0 extra bytes).

        Raises:
            AdapterNotLoaded: no such adapter.
        """
        if token not in self._slots:
            raise AdapterNotLoaded(token, self.warm_adapters())
        adapter = self._slots[token]
        if adapter is None:
            return AdapterInfo(token=BASE_ADAPTER_TOKEN, nbytes=0,
                               source=f"checkpoint weights, head {self.head.source}")
        return adapter.info

    # -- preparation (any thread) -------------------------------------------------------------------------

    def prepare(self, request: RouteRequest) -> PreparedRoute:
        """Check labels, format (the routing profile's text), tokenize and bound-check a request; raises a
        :class:`ModelRuntimeError`. Special tokens written in the text (``sakana``'s chat template) encode as
        themselves."""
        if request.backend != self.settings.backend or request.adapter not in self._slots:
            raise self._not_served(request)
        if not request.messages:
            raise EmptyTranscript()
        ids = self.tokenizer.encode(router_text(request.messages, self.settings.routing_profile,
                                                self.head.spec.num_agents))
        if len(ids) < 2:
            raise TranscriptTooShort(len(ids))
        if len(ids) > self.max_context_tokens:
            raise ContextTooLong(len(ids), self.max_context_tokens)
        return PreparedRoute(request, ids, transcript_hash(request.messages))

    def _not_served(self, request: RouteRequest) -> AdapterNotServed:
        return AdapterNotServed(f"{request.backend}.{request.adapter}",
                                f"{self.settings.backend}.{{{', '.join(self._slots)}}}")

    # -- worker-thread work ---------------------------------------------------------------------------------

    def route(self, request: RouteRequest) -> RouteLogits:
        """Prepare and run one request (raises :class:`ModelRuntimeError` on bad input)."""
        result = self.run([self.prepare(request)])[0]
        if isinstance(result, ModelRuntimeError):
            raise result
        return result

    def run(self, batch: Sequence[PreparedRoute]) -> list[RouteLogits | ModelRuntimeError]:
        """Route prepared requests together; one answer (or error) per request, in order.

        A request whose adapter was unloaded after :meth:`prepare` gets :class:`AdapterNotServed`.
        """
        slots = self._slots
        out: list[RouteLogits | ModelRuntimeError | None] = [None] * len(batch)
        live = [i for i, p in enumerate(batch) if p.adapter in slots]
        for i in set(range(len(batch))) - set(live):
            out[i] = self._not_served(batch[i].request)
        hidden = dict(zip(live, self._hidden([batch[i] for i in live]), strict=True))
        ok: dict[str, list[int]] = {}
        for i, h in hidden.items():
            if isinstance(h, HiddenResult):
                ok.setdefault(batch[i].adapter, []).append(i)
            else:
                out[i] = h
        done = time.perf_counter()
        for token, idx in ok.items():
            adapter = slots[token]
            head = self.head if adapter is None else adapter.head
            agents, roles = head.split(head.apply(torch.stack([hidden[i].hidden for i in idx])))  # type: ignore[union-attr]
            for k, i in enumerate(idx):
                p, h = batch[i], hidden[i]
                assert isinstance(h, HiddenResult)
                out[i] = RouteLogits(
                    request_id=p.request.request_id, turn=p.request.turn, agent_logits=agents[k],
                    role_logits=roles[k], token_count=len(p.ids), transcript_hash=p.transcript_hash,
                    backend=self.settings.backend, profile=self.settings.profile, adapter=token,
                    cached_tokens=h.cached_tokens, latency_ms=(done - p.received) * 1000.0,
                    runtime_id=self.settings.runtime_id, routing_profile=self.settings.routing_profile,
                )
        return [r for r in out if r is not None]

    @torch.inference_mode()
    def _hidden(self, batch: Sequence[PreparedRoute]) -> list[HiddenResult | ModelRuntimeError]:
        """Test hook (package-internal): the final-norm state at position -2 of each prepared request."""
        results: list[HiddenResult | ModelRuntimeError | None] = [None] * len(batch)
        fresh: list[int] = []
        for i, p in enumerate(batch):
            entry = None
            run_id = p.request.run_id
            if run_id is not None and self.cache.enabled:
                entry = self.cache.take(run_id, p.adapter)
            if entry is None:
                fresh.append(i)
                continue
            feed = p.feed
            reuse = min(common_prefix_len(entry.token_ids, feed), len(feed) - 1)
            if reuse <= 0:
                fresh.append(i)
                continue
            crop_to(entry.cache, reuse)
            state = self._forward_one(feed[reuse:], reuse, entry.cache, self._slots[p.adapter])
            self.cache.note_reuse(reuse)
            results[i] = HiddenResult(state, reuse)
            self.cache.put(run_id, feed, entry.cache, p.adapter)  # type: ignore[arg-type]
        for group in self._groups(batch, fresh):
            for i, state in zip(group, self._forward_fresh([batch[i] for i in group]), strict=True):
                results[i] = HiddenResult(state, 0)
        return [r for r in results if r is not None]

    def _groups(self, batch: Sequence[PreparedRoute], idx: list[int]) -> list[list[int]]:
        """Split fresh requests into packs of at most ``max_batch`` requests and ``max_batch_tokens`` tokens."""
        groups: list[list[int]] = []
        size = 0
        for i in idx:
            n = len(batch[i].feed)
            if groups and size + n <= self.max_batch_tokens and len(groups[-1]) < self.settings.max_batch:
                groups[-1].append(i)
                size += n
            else:
                groups.append([i])
                size = n
        return groups

    def _forward_one(self, new_ids: list[int], past: int, cache: DynamicCache, adapter: Adapter | None) -> torch.Tensor:
        ids = torch.tensor([new_ids], dtype=torch.long, device=self.device)
        pos = torch.arange(past, past + len(new_ids), device=self.device).unsqueeze(0)
        with self.adapters.activate(self.adapters.plan([(adapter, len(new_ids))])):
            out = self.model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True)
        state: torch.Tensor = out.last_hidden_state[0, -1]
        return state

    def _forward_fresh(self, items: list[PreparedRoute]) -> list[torch.Tensor]:
        """Run fresh transcripts packed into one row: each attends only to itself (:mod:`.packed_attention`),
        positions restart at 0 for each. Models without per-layer-type masks (Llama) run each transcript alone."""
        if len(items) > 1 and getattr(self.model.config, "layer_types", None) is None:
            return [state for p in items for state in self._forward_fresh([p])]
        keep = [p.request.run_id is not None and self.cache.enabled for p in items]
        lengths = [len(p.feed) for p in items]
        ends = torch.tensor(lengths).cumsum(0).tolist()
        starts = [e - n for e, n in zip(ends, lengths, strict=True)]
        ids = torch.tensor([[t for p in items for t in p.feed]], dtype=torch.long, device=self.device)
        pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).to(self.device)
        mask = {"full_attention": PackedSegments(tuple(lengths))} if len(items) > 1 else None
        cache = DynamicCache(config=self.model.config) if any(keep) else None
        plan = self.adapters.plan([(self._slots[p.adapter], n) for p, n in zip(items, lengths, strict=True)])
        with self.adapters.activate(plan):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                             use_cache=cache is not None)
        states = [out.last_hidden_state[0, e - 1] for e in ends]
        if cache is not None:
            for r, p in enumerate(items):
                if keep[r] and p.request.run_id is not None:
                    self.cache.put(p.request.run_id, p.feed, self._slice_cache(cache, starts[r], ends[r]), p.adapter)
        return states

    def _slice_cache(self, cache: DynamicCache, start: int, end: int) -> DynamicCache:
        data = []
        for layer in cache.layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
                raise CheckpointError("model", "has cache layers without key/value tensors; only full-attention "
                                               "Qwen3 models are supported")
            data.append((keys[:, :, start:end].clone(), values[:, :, start:end].clone()))
        return DynamicCache(ddp_cache_data=data, config=self.model.config)
