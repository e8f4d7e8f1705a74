"""Runtime fleet contracts: what a model runtime instance is, and what it announces while alive."""

from __future__ import annotations

import msgspec

from schemas.common import check_token
from schemas.errors import require
from schemas.sakana import RuntimeProfile


class InstanceLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Capacity limits of a runtime instance."""

    max_queue: int = 64
    max_batch: int = 16
    batch_window_ms: float = 2.0
    max_context_tokens: int = 32768
    adapter_memory_budget_mb: int = 512

    def __post_init__(self) -> None:
        require(self.max_queue >= 1, "max_queue", f"must be >= 1, got {self.max_queue}")
        require(self.max_batch >= 1, "max_batch", f"must be >= 1, got {self.max_batch}")
        require(self.batch_window_ms >= 0, "batch_window_ms", f"must be >= 0, got {self.batch_window_ms}")
        require(self.max_context_tokens >= 2, "max_context_tokens",
                f"must be >= 2 (routing reads position -2), got {self.max_context_tokens}")
        require(self.adapter_memory_budget_mb >= 0, "adapter_memory_budget_mb", "must be >= 0")


class InstanceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A runtime instance: backend, base model identity, optional adapter, profile and limits."""

    backend_id: str
    base_model: str
    adapter: str | None = None
    profile: RuntimeProfile = msgspec.field(default_factory=RuntimeProfile)
    limits: InstanceLimits = msgspec.field(default_factory=InstanceLimits)

    def __post_init__(self) -> None:
        check_token(self.backend_id, "backend_id")
        require(bool(self.base_model), "base_model", "must identify the base weights")
        if self.adapter is not None:
            check_token(self.adapter, "adapter")


class RuntimeHeartbeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Published by each runtime on its heartbeat subject: what it holds warm and how busy it is."""

    runtime_id: str
    spec: InstanceSpec
    warm_adapters: list[str]
    queue_depth: int
    in_flight: int
    rss_mb: float
    ts: float
    draining: bool = False
