"""NATS connection settings (servers, credentials, TLS, reconnect policy). No environment reads here."""

from __future__ import annotations

import re

import msgspec

from config.secrets import Secret

_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,128}")


class NatsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How actors connect to NATS.

    Credentials: ``user``/``password``, ``token``, an nkeys seed file (``nkeys_seed``) or a ``.creds`` file
    (``creds_file``). TLS: set ``tls_ca`` (and ``tls_cert``/``tls_key`` for mutual TLS).
    ``inbox_prefix``: the prefix of this connection's reply inboxes (default nats-py's ``_INBOX``); users made by
    ``run.py nats-auth`` get ``_INBOX_<user>`` and may subscribe only there.
    ``embedded``: ``auto`` starts a local nats-server when none is reachable, ``always`` / ``never``.
    ``password`` and ``token`` are :class:`~config.secrets.Secret` (plain strings given here are wrapped), so
    the settings print ``***``.
    """

    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    name: str = "trinity"
    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    nkeys_seed: str | None = None
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout_s: float = 2.0
    reconnect_wait_s: float = 0.5
    max_reconnect_attempts: int = -1
    ping_interval_s: float = 20.0
    max_outstanding_pings: int = 3
    embedded: str = "auto"
    inbox_prefix: str | None = None
    nats_server_binary: str | None = None

    def __post_init__(self) -> None:
        for name in ("password", "token"):
            value = getattr(self, name)
            if isinstance(value, str):
                msgspec.structs.force_setattr(self, name, Secret(value))
        if not self.servers:
            raise ValueError("servers: list at least one nats:// URL")
        if self.embedded not in ("auto", "always", "never"):
            raise ValueError(f"embedded: must be auto, always or never, got {self.embedded!r}")
        if self.inbox_prefix is not None and _PREFIX.fullmatch(self.inbox_prefix) is None:
            raise ValueError(f"inbox_prefix: {self.inbox_prefix!r} must be 1-128 of A-Z a-z 0-9 _ - (no dots)")
        if (self.user is None) != (self.password is None):
            raise ValueError("user/password: set both or neither")

    def redacted(self) -> dict[str, object]:
        """The settings as a dict with every secret replaced by ``'***'``."""
        out = msgspec.structs.asdict(self)
        for k in ("password", "token"):
            if out[k] is not None:
                out[k] = "***"
        return out

    def secrets(self) -> list[str]:
        """The secret values (for redaction)."""
        return [s.reveal() for s in (self.password, self.token) if s is not None]
