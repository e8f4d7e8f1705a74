"""Helpers of the fleet tests: heartbeats built by hand for the pure registry modules, the two tiny base
models with their adapter vectors, and engines on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.tokenizer import RouterTokenizer
from config.model_runtime import ModelRuntimeSettings
from schemas.fleet import InstanceLimits, InstanceSpec, RuntimeHeartbeat, WarmAdapter

MB = 2**20


def heartbeat(runtime_id: str, *, base: str = "qwen3-a", backend: str = "torch", warm: dict[str, int] | None = None,
              queue: int = 0, in_flight: int = 0, max_queue: int = 8, budget_mb: int = 10, ts: float = 1.0,
              incarnation: float = 100.0, last_used: dict[str, float] | None = None,
              draining: bool = False) -> RuntimeHeartbeat:
    """A heartbeat of ``runtime_id`` holding ``warm`` (token -> bytes; ``base`` always first)."""
    sizes = {"base": 0, **(warm or {})}
    used = last_used or {}
    return RuntimeHeartbeat(
        runtime_id=runtime_id,
        spec=InstanceSpec(backend_id=backend, base_model=base,
                          limits=InstanceLimits(max_queue=max_queue, adapter_memory_budget_mb=budget_mb)),
        warm_adapters=list(sizes), queue_depth=queue, in_flight=in_flight, rss_mb=100.0, ts=ts, draining=draining,
        incarnation=incarnation,
        adapters=[WarmAdapter(token=t, nbytes=n, last_used=used.get(t, 0.0)) for t, n in sizes.items()],
    )


@dataclass(frozen=True)
class BaseModel:
    """One tiny base model: its checkpoint, identity, and adapter vectors (token -> .npy path) built for it."""

    seed: int
    checkpoint: Path
    identity: str
    adapters: dict[str, Path]


@dataclass(frozen=True)
class Fleet:
    """Two base models, the shared factor cache and a catalog of every adapter."""

    a: BaseModel
    b: BaseModel
    factor_cache: Path

    @property
    def catalog(self) -> dict[str, str]:
        """Adapter token -> vector path, for ``fleet.adapter_catalog``."""
        return {t: str(p) for base in (self.a, self.b) for t, p in base.adapters.items()}


EngineMaker = Callable[..., RouterEngine]


def engine_maker(models: Fleet, tokenizer: RouterTokenizer) -> EngineMaker:
    """A function building an engine on base ``"a"`` or ``"b"``; keyword arguments override settings."""

    def make(base: str = "a", **overrides: Any) -> RouterEngine:
        m = models.a if base == "a" else models.b
        settings = ModelRuntimeSettings(**{"checkpoint_dir": str(m.checkpoint),
                                           "factor_cache_dir": str(models.factor_cache), **overrides})
        return RouterEngine.load(settings, tokenizer=tokenizer)

    return make
