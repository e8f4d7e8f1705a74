"""Connect to NATS with the configured servers, credentials, TLS and reconnect policy."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from nats.aio.client import Client

from bus.errors import ConnectFailed
from config.nats import NatsSettings
from schemas.redaction import scrub_text

log = logging.getLogger(__name__)


def _tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    if not settings.tls_ca and not settings.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca)
    if settings.tls_cert:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    return ctx


def connect_options(settings: NatsSettings, name: str | None = None) -> dict[str, Any]:
    """Keyword arguments for :func:`nats.connect` derived from ``settings`` (secrets included)."""
    opts: dict[str, Any] = {
        "servers": list(settings.servers),
        "name": name or settings.name,
        "connect_timeout": settings.connect_timeout_s,
        "reconnect_time_wait": settings.reconnect_wait_s,
        "max_reconnect_attempts": settings.max_reconnect_attempts,
        "ping_interval": settings.ping_interval_s,
        "max_outstanding_pings": settings.max_outstanding_pings,
        "allow_reconnect": True,
    }
    if settings.user is not None:
        opts["user"] = settings.user
        opts["password"] = settings.password.reveal() if settings.password is not None else None
    if settings.inbox_prefix is not None:
        opts["inbox_prefix"] = settings.inbox_prefix
    if settings.token is not None:
        opts["token"] = settings.token.reveal()
    if settings.nkeys_seed is not None:
        opts["nkeys_seed"] = settings.nkeys_seed
    if settings.creds_file is not None:
        opts["user_credentials"] = settings.creds_file
    tls = _tls_context(settings)
    if tls is not None:
        opts["tls"] = tls
    return opts


async def connect(settings: NatsSettings, name: str | None = None) -> Client:
    """Open a NATS connection; raises :class:`ConnectFailed` naming the servers (never the secrets).

    The first connect is bounded: an authorization violation fails at once, and no server answering
    within ``connect_timeout_s`` per server (plus one retry round) fails too. Later reconnects are
    automatic (``max_reconnect_attempts``, ``reconnect_wait_s``) and logged.
    """
    label = name or settings.name
    connecting = True
    auth_failed = asyncio.Event()

    async def on_error(e: Exception) -> None:
        if connecting and "authorization" in str(e).lower():
            auth_failed.set()
        log.warning("nats error on %s: %s", label, e)

    async def on_disconnected() -> None:
        if nc.is_closed:  # our own close(): expected, not worth a warning
            log.debug("nats disconnected on close: %s", label)
        else:
            log.warning("nats disconnected: %s", label)

    async def on_reconnected() -> None:
        log.info("nats reconnected: %s", label)

    async def on_closed() -> None:
        log.debug("nats connection closed: %s", label)

    opts = connect_options(settings, name)
    nc = Client()
    attempt = asyncio.ensure_future(nc.connect(**opts, error_cb=on_error, disconnected_cb=on_disconnected,
                                               reconnected_cb=on_reconnected, closed_cb=on_closed))
    auth_wait = asyncio.ensure_future(auth_failed.wait())
    budget = settings.connect_timeout_s * (len(settings.servers) + 1) + settings.reconnect_wait_s + 1.0
    where = scrub_text(", ".join(settings.servers))  # a URL may carry user:password
    try:
        done, _ = await asyncio.wait({attempt, auth_wait}, timeout=budget, return_when=asyncio.FIRST_COMPLETED)
        if attempt in done:
            exc = attempt.exception()
            if exc is not None:
                raise ConnectFailed(f"could not connect to NATS at {where} as {label!r}: {type(exc).__name__}: "
                                    f"{exc}. Check the URL, that the server runs, and the credentials.") from exc
            return nc
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
        await nc.close()
        if auth_wait in done:
            raise ConnectFailed(f"NATS at {where} refused {label!r}: authorization violation. Check the "
                                "user/password, token, nkeys seed or creds file in the settings.")
        raise ConnectFailed(f"no NATS server at {where} answered within {budget:.1f}s; start one (`python run.py "
                            "node` starts an embedded server when none answers) and check the URL.")
    finally:
        connecting = False
        auth_wait.cancel()
