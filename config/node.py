"""Settings of one node process: which actors it runs and how it drains."""

from __future__ import annotations

import msgspec

#: Every actor a node can run, in start order (the runtime before those that call it).
ALL_ACTORS: tuple[str, ...] = ("trace_sink", "model_runtime", "fleet_registry", "provider_agents", "role_injector",
                               "coordinator")
#: Every actor a node may run: the default ones plus those started only when named (``--actors``): the
#: OpenAI-compatible HTTP gateway listens on a port, so a default node does not open one.
KNOWN_ACTORS: tuple[str, ...] = (*ALL_ACTORS, "gateway")


class NodeSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A node: the actors it starts (all of them for single-node), its id, and supervision limits.

    ``drain_timeout_s``: the whole drain after SIGINT/SIGTERM (every actor together); past it the process
    exits anyway, naming the actors that did not finish. ``trace_drain_share``: the part of that drain kept
    for the trace sink, which drains last (the others stop within the rest), so the events of runs that ended
    during the drain still reach its exporters. ``ready_file``: when set, the node writes its
    status (JSON, ``"ready": true``) there once every actor serves, and removes it when it stops.
    ``metrics_port``: serve Prometheus metrics of this node's process on ``http://metrics_host:metrics_port/metrics``
    (0: a free port, logged); ``None`` (the default) opens no port, as a default node opens none.
    """

    actors: list[str] = msgspec.field(default_factory=lambda: list(ALL_ACTORS))
    node_id: str = "node-1"
    drain_timeout_s: float = 10.0
    trace_drain_share: float = 0.25
    max_restarts: int = 5
    restart_period_s: float = 60.0
    log_level: str = "INFO"
    ready_file: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        unknown = [a for a in self.actors if a not in KNOWN_ACTORS]
        if unknown:
            raise ValueError(f"actors: unknown {unknown}; choose from {', '.join(KNOWN_ACTORS)}")
        if not self.drain_timeout_s > 0:
            raise ValueError(f"drain_timeout_s: must be > 0 seconds, got {self.drain_timeout_s}")
        if not 0.0 <= self.trace_drain_share < 1.0:
            raise ValueError(f"trace_drain_share: must be in [0, 1), got {self.trace_drain_share}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port: must be 0-65535 (0: any free port) or unset, got {self.metrics_port}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level: must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
