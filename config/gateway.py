"""Settings of the OpenAI-compatible HTTP gateway actor (``run.py node --actors gateway``).

The gateway serves ``POST /v1/chat/completions`` and ``GET /v1/models`` on ``host:port`` and submits each
chat completion through the durable work queue. Models: ``model`` (``"trinity"``) routes with the base
adapter; each other token in ``adapters`` is served as ``"<model>:<adapter>"`` (the mapping lives in
:func:`actors.gateway.openai_api.served_models`).

``api_keys`` are compared in constant time against ``Authorization: Bearer <key>``; an empty list leaves the
gateway open (logged as a warning at start). Set them with ``--set 'gateway.api_keys=["sk-..."]'``, a TOML
``[gateway]`` table, or ``TRINITY__GATEWAY__API_KEYS='["sk-..."]'``.

Example:
    >>> s = GatewaySettings()
    >>> (s.host, s.port, s.model, s.adapters, s.max_concurrency)
    ('127.0.0.1', 8080, 'trinity', ['base'], 64)
"""

from __future__ import annotations

import msgspec

from config.secrets import Secret


class GatewaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The HTTP gateway: where it listens, who may call it, how much it takes at once, and its deadlines.

    ``max_concurrency`` bounds the chat completions in flight (streaming ones count until their stream
    ends); one more gets ``429`` with ``Retry-After: retry_after_s``. ``request_deadline_s`` is a run's
    deadline unless the request asks for another (``deadline_s``, at most ``max_deadline_s``); the gateway
    waits ``result_grace_s`` past it for the stored result before answering ``504``. ``port`` 0 picks a free
    port (logged at start). ``keep_alive_s`` keeps an idle connection open longer than clients keep theirs
    (httpx and the openai client: 5 s), so a client never reuses a connection the server is closing.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: list[Secret] = msgspec.field(default_factory=list)
    max_concurrency: int = 64
    retry_after_s: int = 1
    request_deadline_s: float = 120.0
    max_deadline_s: float = 600.0
    result_grace_s: float = 10.0
    result_poll_s: float = 2.0
    max_body_bytes: int = 1_048_576
    model: str = "trinity"
    adapters: list[str] = msgspec.field(default_factory=lambda: ["base"])
    backend: str = "torch"
    backlog: int = 2048
    keep_alive_s: float = 75.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be in 0..65535, got {self.port}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency: must be >= 1, got {self.max_concurrency}")
        if self.retry_after_s < 1:
            raise ValueError(f"retry_after_s: must be >= 1 (whole seconds), got {self.retry_after_s}")
        if not 0 < self.request_deadline_s <= self.max_deadline_s:
            raise ValueError(f"request_deadline_s: must be in (0, max_deadline_s={self.max_deadline_s:g}], "
                             f"got {self.request_deadline_s:g}")
        if self.result_grace_s < 0 or self.result_poll_s <= 0:
            raise ValueError("result_grace_s must be >= 0 and result_poll_s > 0")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes: must be >= 1024, got {self.max_body_bytes}")
        if not self.model or ":" in self.model or any(c.isspace() for c in self.model):
            raise ValueError(f"model: a name without ':' or spaces, got {self.model!r}")
        if not self.adapters:
            raise ValueError("adapters: serve at least one adapter token (e.g. ['base'])")
        if any(not a or ":" in a or any(c.isspace() for c in a) for a in self.adapters):
            raise ValueError(f"adapters: tokens without ':' or spaces, got {self.adapters!r}")
        if not self.keep_alive_s > 0:
            raise ValueError(f"keep_alive_s: must be > 0 seconds, got {self.keep_alive_s:g}")
        if self.backlog < 1:
            raise ValueError(f"backlog: must be >= 1, got {self.backlog}")

    def secrets(self) -> list[str]:
        """The configured API keys (for redaction)."""
        return [k.reveal() for k in self.api_keys if k]
