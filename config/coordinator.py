"""Coordinator and role-injector settings. No environment reads here (the loader in config/ fills them).

Example:
    >>> CoordinatorSettings().verifier_before_worker is None  # the routing profile's rule
    True
    >>> RoleInjectorSettings().default_pack is None
    True
"""

from __future__ import annotations

import msgspec


class CoordinatorSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a coordinator node runs TRINITY's loop and talks to the bus.

    Policy:
      ``routing_profile``: ``"elixir-port"`` (default) or ``"sakana"`` (see ``schemas.profiles`` and the README's
        "Routing profiles"); must equal the model runtimes' ``routing_profile`` (a mismatch fails the route).
      ``route_rule``: ``"argmax"`` or ``"sample"`` (``None``: the profile's; ``sakana`` samples);
        ``route_temperature``: softmax temperature of ``sample``; ``route_seed``: its seed (``None``: derived
        from each request id); the seed used is recorded in every result.
      ``verifier_before_worker``: what a Verifier chosen before any Worker reply does: ``"worker"`` runs it as a
        Worker (recorded as ``verifier_before_worker_fallback``); ``"allow"`` lets it run as a Verifier;
        ``"end"`` ends the run with no call (stop reason ``verifier_before_worker``). ``None``: the routing
        profile's (``elixir-port``: ``worker``; ``sakana``: ``end``).
      ``agent_mask``: agents this deployment serves (``None``: all 7); intersected with each request's mask.
      ``max_fallbacks``: next-best agents tried after a failed agent call (``None``: every ranked agent).
      ``agent_margin_floor`` / ``role_margin_floor``: the routing profile's margin floors (confidence bands).
      ``agent_max_tokens`` / ``agent_temperature``: completion parameters of every agent call (capped by the
        request's remaining token budget).
    Bus:
      ``route_timeout_s`` / ``role_inject_timeout_s`` / ``agent_timeout_s``: per-call deadlines (each is also
        capped by the request's remaining ``deadline_ms``); ``route_attempts``: tries for retryable route errors.
      ``fleet_wait_s`` / ``fleet_retry_s``: a run whose route finds no runtime (``unavailable``: the fleet is
        still starting, or every runtime left) waits, retrying every ``fleet_retry_s``, until one joins, for at
        most ``fleet_wait_s`` and never past the request's deadline (a ``route_deferred`` trace event says
        so); only then it fails. A queued job is held meanwhile (in-progress acks), not failed.
      ``overload_wait_s`` / ``overload_backoff_s`` / ``overload_backoff_max_s``: a route answered ``overloaded``
        is retried after a full-jitter exponential backoff (base, cap) for up to ``overload_wait_s`` (never past
        the deadline) before the run stops ``route_failed``.
      ``role_inject_mode``: ``"bus"`` asks the role injector on ``trinity.role.inject`` (injectors scale and
        upgrade their packs independently, one extra round trip per turn); ``"local"`` builds prompts
        in-process with a builder the node wiring passes in (no hop, no extra failure mode, but the packs
        ship with the coordinator).
      ``role_pack``: the pack asked for (``None``: the routing profile's, ``sakana-fugu/1`` under ``sakana``,
        else the injector's default).
      ``max_concurrency``: coordinations one node runs at once (over it: typed ``overloaded`` replies).
      ``max_request_bytes``: largest accepted CoordinationRequest.
    Work queue (durability): ``jobs_enabled`` also consumes queued jobs from JetStream (``trinity.coord.jobs``,
      stream ``TRINITY_JOBS``) with the shared durable pull consumer ``coordinators`` and stores each result
      once on ``trinity.coord.result.<request_id>`` (stream ``TRINITY_RESULTS``); ``jobs_ack_wait_s``: how
      long a job may go without an acknowledgement (a running job sends in-progress acks every third of it)
      before JetStream hands it to another coordinator; ``jobs_max_deliver``: deliveries per job before it
      fails explicitly; ``jobs_concurrency``: jobs one node runs at once; ``stream_replicas``: replicas of
      the jobs, results and trace streams this node creates (3 on a 3-node cluster);
      ``results_max_age_s``: how long results are kept for late clients; ``jobs_stall_after_s``: a job
      fetch loop that takes nothing this long while jobs are pending is declared stalled (actor restarted).
      ``jobs_durable``: journal each completed turn in the KV bucket ``TRINITY_RUNS`` so a redelivered job resumes
      after its last completed turn, with one owner per running id (``false``: every delivery starts at turn 0,
      the baseline of ``scripts/probe_durability.py``). ``jobs_requeue_after_s``: a job whose routes stay
      ``overloaded`` this long goes back to the queue (nak, after ``jobs_requeue_delay_s`` with jitter) while
      deliveries are left; ``jobs_adaptive_intake``: the jobs taken at once follow the runtimes' capacity
      (halved when a route is ``overloaded``, +1 per finished job, at most ``jobs_concurrency``).
      ``reply_claims`` (with ``jobs_enabled`` and ``jobs_durable``): a request/reply run claims its id in
      ``TRINITY_RUNS`` too and stores its result like a job, so one id runs once across the cluster (a second
      coordinator asked for it waits for that result; ``false``: request/reply dedupe is per process).
    Idempotency: ``dedupe_capacity`` finished results kept for ``dedupe_ttl_s`` seconds (0 disables caching),
      at most ``dedupe_max_bytes`` of them in all (least recently used evicted first).
    Storage bounds and healing: ``result_max_bytes``: a stored result is trimmed to this size (intents' message
      texts first, then replies, then the answer; see ``actors/coordinator/bounds.py``);
      ``results_max_bytes``: byte cap of the results stream (when full, new results are refused with a typed
      ``StoreFull`` and their jobs handed back until old results expire); ``storage_check_s``: how often the
      node checks that its streams and consumers exist and recreates missing ones.
    Tracing: ``trace_enabled`` publishes trace events (turn it off only to measure or where no trace stream
      exists; results still carry every TurnRecord); ``trace_buffer`` events queued for JetStream before
      new ones are dropped and counted;
      ``trace_content`` records query/prompt/reply text in traces instead of sha256;
      ``trace_publish_timeout_s`` per publish ack; ``ensure_trace_stream`` creates the stream on start.
    """

    service_name: str = "trinity-coordinator"
    routing_profile: str = "elixir-port"
    route_rule: str | None = None
    route_temperature: float = 1.0
    route_seed: int | None = None
    verifier_before_worker: str | None = None
    agent_mask: list[int] | None = None
    max_fallbacks: int | None = None
    agent_margin_floor: float = 0.24
    role_margin_floor: float = 1.06
    agent_max_tokens: int = 1024
    agent_temperature: float = 0.0
    route_timeout_s: float = 10.0
    route_attempts: int = 2
    fleet_wait_s: float = 600.0
    fleet_retry_s: float = 1.0
    overload_wait_s: float = 600.0
    overload_backoff_s: float = 0.05
    overload_backoff_max_s: float = 2.0
    role_inject_timeout_s: float = 5.0
    agent_timeout_s: float = 120.0
    role_inject_mode: str = "bus"
    role_pack: str | None = None
    max_concurrency: int = 2048
    max_request_bytes: int = 1_048_576
    dedupe_capacity: int = 10_000
    dedupe_ttl_s: float = 600.0
    trace_enabled: bool = True
    trace_buffer: int = 100_000
    trace_content: bool = False
    trace_publish_timeout_s: float = 5.0
    ensure_trace_stream: bool = True
    jobs_enabled: bool = True
    jobs_ack_wait_s: float = 30.0
    jobs_max_deliver: int = 3
    jobs_concurrency: int = 256
    stream_replicas: int = 1
    results_max_age_s: float = 24 * 3600.0
    jobs_stall_after_s: float = 60.0
    jobs_durable: bool = True
    jobs_requeue_after_s: float = 30.0
    jobs_requeue_delay_s: float = 2.0
    jobs_adaptive_intake: bool = True
    dedupe_max_bytes: int = 64 * 1_048_576
    result_max_bytes: int = 262_144
    results_max_bytes: int = 1024 * 1_048_576
    storage_check_s: float = 2.0
    reply_claims: bool = True

    def __post_init__(self) -> None:
        if self.routing_profile not in ("elixir-port", "sakana"):
            raise ValueError(f"routing_profile: must be 'elixir-port' or 'sakana', got {self.routing_profile!r}")
        if self.route_rule not in (None, "argmax", "sample"):
            raise ValueError(f"route_rule: must be 'argmax', 'sample' or null, got {self.route_rule!r}")
        if not self.route_temperature > 0:
            raise ValueError(f"route_temperature: must be > 0, got {self.route_temperature}")
        if self.verifier_before_worker not in (None, "worker", "allow", "end"):
            raise ValueError("verifier_before_worker: must be 'worker', 'allow', 'end' or null, "
                             f"got {self.verifier_before_worker!r}")
        if self.role_inject_mode not in ("bus", "local"):
            raise ValueError(f"role_inject_mode: must be 'bus' or 'local', got {self.role_inject_mode!r}")
        if self.agent_mask is not None and not self.agent_mask:
            raise ValueError("agent_mask: list at least one agent id, or null for all")
        for name in ("route_timeout_s", "role_inject_timeout_s", "agent_timeout_s", "trace_publish_timeout_s",
                     "fleet_retry_s", "jobs_stall_after_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0 seconds, got {getattr(self, name)}")
        if self.overload_wait_s < 0 or self.overload_backoff_s <= 0 or self.overload_backoff_max_s <= 0:
            raise ValueError("overload_wait_s: must be >= 0; overload_backoff_s and overload_backoff_max_s: > 0")
        if self.jobs_requeue_after_s <= 0 or self.jobs_requeue_delay_s < 0:
            raise ValueError("jobs_requeue_after_s: must be > 0 and jobs_requeue_delay_s >= 0 seconds")
        if self.fleet_wait_s < 0:
            raise ValueError(f"fleet_wait_s: must be >= 0 seconds (0: fail at once), got {self.fleet_wait_s}")
        if self.route_attempts < 1:
            raise ValueError(f"route_attempts: must be >= 1, got {self.route_attempts}")
        if self.max_fallbacks is not None and self.max_fallbacks < 0:
            raise ValueError(f"max_fallbacks: must be >= 0 or null, got {self.max_fallbacks}")
        if not 1 <= self.agent_max_tokens <= 131072:
            raise ValueError(f"agent_max_tokens: must be in 1..131072, got {self.agent_max_tokens}")
        if not 0.0 <= self.agent_temperature <= 2.0:
            raise ValueError(f"agent_temperature: must be in 0..2, got {self.agent_temperature}")
        if self.max_concurrency < 1 or self.trace_buffer < 1:
            raise ValueError("max_concurrency and trace_buffer: must be >= 1")
        if self.jobs_ack_wait_s <= 0 or self.results_max_age_s <= 0:
            raise ValueError("jobs_ack_wait_s and results_max_age_s: must be > 0 seconds")
        if self.jobs_max_deliver < 1 or self.jobs_concurrency < 1:
            raise ValueError("jobs_max_deliver and jobs_concurrency: must be >= 1")
        if self.stream_replicas not in (1, 3, 5):
            raise ValueError(f"stream_replicas: must be 1, 3 or 5, got {self.stream_replicas}")
        if self.dedupe_capacity < 0 or self.dedupe_ttl_s < 0:
            raise ValueError("dedupe_capacity and dedupe_ttl_s: must be >= 0")
        if self.dedupe_max_bytes < 0:
            raise ValueError(f"dedupe_max_bytes: must be >= 0, got {self.dedupe_max_bytes}")
        if self.result_max_bytes < 4096:
            raise ValueError(f"result_max_bytes: must be >= 4096 (ids and budgets are never trimmed), got "
                             f"{self.result_max_bytes}")
        if self.results_max_bytes != -1 and self.results_max_bytes < 4 * self.result_max_bytes:
            raise ValueError(f"results_max_bytes: must be -1 (no cap) or >= 4 x result_max_bytes, got "
                             f"{self.results_max_bytes}")
        if not self.storage_check_s > 0:
            raise ValueError(f"storage_check_s: must be > 0 seconds, got {self.storage_check_s}")


class RoleInjectorSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The role injector: which packs it holds and how it serves.

    ``pack_files``: extra role packs (``.toml`` / ``.json``) loaded beside the built-in
    ``trinity-default/2`` (small-model prompts) and ``trinity-default/1``; ``default_pack``: the
    ``name/version`` used when a request names none (``None``: the first file's pack if any, else
    ``trinity-default/2``); ``include_builtin``: keep the built-in packs.
    """

    service_name: str = "trinity-role-injector"
    pack_files: list[str] = msgspec.field(default_factory=list)
    default_pack: str | None = None
    include_builtin: bool = True
    max_concurrency: int = 4096
    max_request_bytes: int = 4 * 1_048_576

    def __post_init__(self) -> None:
        if not self.include_builtin and not self.pack_files:
            raise ValueError("pack_files: list at least one pack when include_builtin is false")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency: must be >= 1, got {self.max_concurrency}")
