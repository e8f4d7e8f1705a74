"""Runtime fleet contracts: what a model runtime instance is, what it announces while alive, and how
coordinators get a runtime placed for a ``(backend, base model, adapter)`` key.

- :class:`RuntimeHeartbeat`: published by every runtime on ``trinity.runtime.heartbeat.<id>``: its
  :class:`InstanceSpec` (backend, base model identity, limits), the adapters it holds warm
  (:class:`WarmAdapter`, with size and last use), its queue depth and memory, and its ``incarnation``
  (start time) so a restarted runtime is told apart from the one that died.
- :class:`RuntimeControl` / :class:`RuntimeControlReply`: the registry tells one runtime to ``ensure``
  (load) or ``evict`` adapters, ``drain`` or report its ``status`` on ``trinity.runtime.control.<id>``.
- :class:`PlacementRequest` / :class:`Lease`: a coordinator asks the registry where a key is served; the
  lease names the runtimes (best first) and lasts ``ttl_s`` seconds, so the coordinator routes directly to
  ``trinity.runtime.route.<runtime_id>`` without asking again on every route.

Example:
    >>> key = PlacementKey(backend="torch", base_model="qwen3-0123abcd", adapter="base")
    >>> PlacementRequest(key=key, owner="coord-1").exclude
    []
"""

from __future__ import annotations

import enum

import msgspec

from schemas.common import check_token
from schemas.errors import require
from schemas.sakana import BASE_ADAPTER_TOKEN, RuntimeProfile


class InstanceLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Capacity limits of a runtime instance."""

    max_queue: int = 64
    max_batch: int = 16
    batch_window_ms: float = 2.0
    max_context_tokens: int = 32768
    adapter_memory_budget_mb: float = 512.0

    def __post_init__(self) -> None:
        require(self.max_queue >= 1, "max_queue", f"must be >= 1, got {self.max_queue}")
        require(self.max_batch >= 1, "max_batch", f"must be >= 1, got {self.max_batch}")
        require(self.batch_window_ms >= 0, "batch_window_ms", f"must be >= 0, got {self.batch_window_ms}")
        require(self.max_context_tokens >= 2, "max_context_tokens",
                f"must be >= 2 (routing reads position -2), got {self.max_context_tokens}")
        require(self.adapter_memory_budget_mb >= 0, "adapter_memory_budget_mb", "must be >= 0")


class InstanceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A runtime instance: backend, base model identity, optional adapter, profile and limits.

    ``base_model`` identifies the base weights by content (a digest of the loaded backbone and base
    head, see the model runtime's ``identity`` module), never by path: two hosts with the same weights
    report the same identity, two seeds of one preset report different ones.
    """

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


class WarmAdapter(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One adapter a runtime holds warm: its token, memory it takes and when it last served (unix s)."""

    token: str
    nbytes: int = 0
    last_used: float = 0.0
    served: int = 0


class RuntimeHeartbeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Published by each runtime on its heartbeat subject: what it holds warm and how busy it is.

    ``incarnation`` is the runtime process's start time: a heartbeat with a new incarnation for a known
    ``runtime_id`` is a restart (the registry forgets what it knew about the old one).
    """

    runtime_id: str
    spec: InstanceSpec
    warm_adapters: list[str]
    queue_depth: int
    in_flight: int
    rss_mb: float
    ts: float
    draining: bool = False
    incarnation: float = 0.0
    adapters: list[WarmAdapter] = msgspec.field(default_factory=list)
    interval_s: float = 0.0
    adapter_loads: int = 0

    def __post_init__(self) -> None:
        check_token(self.runtime_id, "runtime_id")  # heartbeat, control and route subjects end in it


class PlacementKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, order=True):
    """What a route needs from a runtime: backend, base model identity (``None``: any) and adapter."""

    backend: str
    base_model: str | None = None
    adapter: str = BASE_ADAPTER_TOKEN

    def __post_init__(self) -> None:
        check_token(self.backend, "backend")
        check_token(self.adapter, "adapter")
        if self.base_model is not None:
            require(bool(self.base_model), "base_model", "must be null (any) or a base model identity")

    def describe(self) -> str:
        """``backend/base/adapter`` for messages."""
        return f"{self.backend}/{self.base_model or '*'}/{self.adapter}"


class PlacementRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ask the registry for runtimes serving ``key`` (loading the adapter somewhere if none holds it).

    ``exclude`` lists runtimes the caller just saw fail or refuse (overloaded, timed out): the registry
    places elsewhere, or answers ``overloaded`` / ``unavailable`` at once when nothing else can serve.
    """

    key: PlacementKey
    owner: str
    exclude: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        require(bool(self.owner), "owner", "must name the lease holder (a coordinator id)")


class Lease(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A placement the caller may reuse for ``ttl_s`` seconds: runtimes holding ``key`` warm, best first.

    While a lease is live the registry does not evict ``key.adapter`` from ``runtimes``.
    """

    lease_id: str
    key: PlacementKey
    owner: str
    runtimes: list[str]
    ttl_s: float
    base_model: str
    loaded: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        require(bool(self.runtimes), "runtimes", "a lease names at least one runtime")
        for i, rid in enumerate(self.runtimes):
            check_token(rid, f"runtimes[{i}]")  # routed to on trinity.runtime.route.<runtime_id>
        require(self.ttl_s > 0, "ttl_s", f"must be > 0, got {self.ttl_s}")


class LeaseRelease(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A coordinator gives a lease back early (published, no reply)."""

    lease_id: str
    owner: str


class ControlOp(enum.StrEnum):
    """What a :class:`RuntimeControl` asks a runtime to do."""

    ENSURE = "ensure"
    EVICT = "evict"
    DRAIN = "drain"
    STATUS = "status"


class RuntimeControl(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A command to one runtime on ``trinity.runtime.control.<id>``.

    ``ensure``: load ``adapter`` from ``source`` (a vector file path on the runtime's host) unless it is warm,
    after evicting ``evict`` (least-recently-used adapters chosen by the registry to stay in budget); the
    reply's ``warm_adapters`` shows the result. Loading is idempotent: an adapter is never loaded twice.
    ``evict``: unload the adapters in ``evict`` (``base`` is never evicted). ``drain``: stop taking work.
    """

    op: ControlOp
    adapter: str | None = None
    source: str | None = None
    evict: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.adapter is not None:
            check_token(self.adapter, "adapter")
        require(self.op != ControlOp.ENSURE or self.adapter is not None, "adapter", "ensure needs an adapter")
        require(BASE_ADAPTER_TOKEN not in self.evict, "evict", "the base adapter cannot be evicted")


class RuntimeControlReply(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A runtime's answer to a :class:`RuntimeControl`: what it did and what it holds now."""

    runtime_id: str
    op: ControlOp
    warm_adapters: list[str]
    loaded: bool = False
    evicted: list[str] = msgspec.field(default_factory=list)
    heartbeat: RuntimeHeartbeat | None = None

    def __post_init__(self) -> None:
        check_token(self.runtime_id, "runtime_id")


class FleetStatusRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ask a registry what it knows (no fields)."""


class FleetStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A registry's view: live runtimes (their latest heartbeats), live leases and membership counters."""

    registry_id: str
    runtimes: list[RuntimeHeartbeat]
    leases: list[Lease]
    joins: int = 0
    rejoins: int = 0
    drops: int = 0
    ensures: int = 0
    evictions: int = 0

    def runtime(self, runtime_id: str) -> RuntimeHeartbeat | None:
        """The heartbeat of ``runtime_id``, if live."""
        return next((r for r in self.runtimes if r.runtime_id == runtime_id), None)


__all__ = [
    "ControlOp",
    "FleetStatus",
    "FleetStatusRequest",
    "InstanceLimits",
    "InstanceSpec",
    "Lease",
    "LeaseRelease",
    "PlacementKey",
    "PlacementRequest",
    "RuntimeControl",
    "RuntimeControlReply",
    "RuntimeHeartbeat",
    "WarmAdapter",
]
