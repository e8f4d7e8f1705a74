"""Decide whether a node needs its own nats-server, and start it (``nats.embedded = auto|always|never``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgspec

from bus.embedded import NatsServerProcess, url_reachable
from config.nats import NatsSettings

log = logging.getLogger(__name__)


async def ensure_nats(settings: NatsSettings, store_dir: Path | None = None,
                      ) -> tuple[NatsSettings, NatsServerProcess | None]:
    """Return settings pointing at a reachable server, starting an embedded one when configured to.

    ``auto`` starts one only when no configured server answers; ``always`` starts one regardless;
    ``never`` returns the settings unchanged. The embedded server listens on loopback only.
    """
    if settings.embedded == "never":
        return settings, None
    if settings.embedded == "auto":
        answers = await asyncio.to_thread(lambda: any(url_reachable(u) for u in settings.servers))
        if answers:
            return settings, None
    srv = await asyncio.to_thread(NatsServerProcess.start, binary=settings.nats_server_binary,
                                  base_dir=store_dir, name="trinity-embedded")
    log.info("started embedded nats-server at %s (store %s)", srv.url, srv.store_dir)
    return msgspec.structs.replace(settings, servers=[srv.url]), srv
