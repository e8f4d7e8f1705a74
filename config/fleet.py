"""Settings of the runtime fleet: heartbeats (runtimes), placement and leases (registry), and the
coordinator's placement client. One section, ``[fleet]``, read by whichever of the three a node runs.

Example:
    >>> s = FleetSettings(heartbeat_interval_s=0.5)
    >>> (s.placement, s.heartbeat_timeout_s)
    ('registry', 3.0)
"""

from __future__ import annotations

import msgspec


class FleetSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How runtimes announce themselves, how the registry places work and how coordinators use it.

    Runtimes:
      ``heartbeat_interval_s``: how often a runtime publishes its heartbeat. (A runtime's adapter memory
        budget is ``model_runtime.adapter_memory_budget_mb``; the registry evicts least-recently-used idle
        adapters to stay under it.)
    Registry:
      ``heartbeat_timeout_s``: a runtime silent this long is dropped from placement (default 3 intervals).
      ``lease_ttl_s``: how long a coordinator may reuse a placement without asking again.
      ``queue_high_water``: fraction of a runtime's ``max_queue`` above which it counts as full (placement
        prefers others, and loads the adapter on another runtime when every holder is full).
      ``adapter_catalog``: adapter token -> vector file (``.npy``) path *on the runtime hosts*; the source sent
        with an ``ensure`` when no runtime holds the adapter warm.
      ``ensure_timeout_s``: how long the registry waits for a runtime to load an adapter.
      ``service_name``: the registry's micro service name.
    Coordinator placement client:
      ``placement``: ``"registry"`` (ask the registry, cache leases, route to one runtime's subject, fail over)
        or ``"subject"`` (send to the queue group ``trinity.route.<backend>.<adapter>``; no registry needed).
      ``base_model``: base model identity routes ask for when the request names none (``None``: any).
      ``attempt_timeout_s``: per-runtime attempt deadline inside a route's deadline (a runtime killed
        mid-request costs at most this before the route is retried on another replica).
      ``place_timeout_s``: deadline of one placement request to the registry.
      ``owner``: lease owner name (``""``: derived from the host and process id).
    """

    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 3.0
    lease_ttl_s: float = 30.0
    queue_high_water: float = 0.75
    adapter_catalog: dict[str, str] = msgspec.field(default_factory=dict)
    ensure_timeout_s: float = 60.0
    service_name: str = "trinity-fleet-registry"
    placement: str = "registry"
    base_model: str | None = None
    attempt_timeout_s: float = 5.0
    place_timeout_s: float = 5.0
    owner: str = ""

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval_s", "heartbeat_timeout_s", "lease_ttl_s", "ensure_timeout_s",
                     "attempt_timeout_s", "place_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0 seconds, got {getattr(self, name)}")
        if self.heartbeat_timeout_s < self.heartbeat_interval_s:
            raise ValueError(f"heartbeat_timeout_s ({self.heartbeat_timeout_s}) must be >= heartbeat_interval_s "
                             f"({self.heartbeat_interval_s}), else live runtimes are dropped between heartbeats")
        if not 0.0 < self.queue_high_water <= 1.0:
            raise ValueError(f"queue_high_water: must be in (0, 1], got {self.queue_high_water}")
        if self.placement not in ("registry", "subject"):
            raise ValueError(f"placement: must be 'registry' or 'subject', got {self.placement!r}")
