"""``run.py fleet``: what the fleet registry knows (runtimes, base models, warm adapters, load, leases), and
``--drain RUNTIME_ID`` to take one runtime out of placement before stopping or moving it."""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgspec

from ops.commands import CommandError

NAME = "fleet"
HELP = "show the runtime fleet as the registry sees it; --drain a runtime before moving it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``fleet``."""
    p.add_argument("--drain", metavar="RUNTIME_ID", help="tell this runtime to stop taking work (it stays up)")
    p.add_argument("--json", action="store_true", help="print the registry's status as JSON")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="reply deadline")


def render(status: Any, now: float) -> str:
    """A table of the registry's runtimes (one line each) and its counters."""
    lines = [f"registry {status.registry_id}: {len(status.runtimes)} runtime(s), {len(status.leases)} lease(s), "
             f"joins {status.joins}, rejoins {status.rejoins}, drops {status.drops}, loads {status.ensures}, "
             f"evictions {status.evictions}"]
    for hb in status.runtimes:
        state = "draining" if hb.draining else "serving"
        lines.append(f"  {hb.runtime_id:<24} {hb.spec.backend_id}/{hb.spec.base_model} {hb.spec.profile.device:<8} "
                     f"{state:<8} queue {hb.queue_depth}/{hb.spec.limits.max_queue} rss {hb.rss_mb:.0f} MB "
                     f"seen {max(0.0, now - hb.ts):.1f}s ago  warm {', '.join(hb.warm_adapters)}")
    return "\n".join(lines)


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Print the status, or drain one runtime; exit 1 when nobody answers."""
    from bus import rpc, subjects
    from bus.connection import connect
    from bus.errors import BusError
    from schemas.fleet import ControlOp, FleetStatus, FleetStatusRequest, RuntimeControl, RuntimeControlReply

    nc = await connect(settings.nats, name="run.py-fleet")
    try:
        if args.drain:
            reply = await rpc.request(nc, subjects.runtime_control(args.drain), RuntimeControl(op=ControlOp.DRAIN),
                                      RuntimeControlReply, timeout=args.timeout)
            print(f"{reply.runtime_id}: draining (warm {', '.join(reply.warm_adapters)})")
            return 0
        status = await rpc.request(nc, subjects.FLEET_STATUS, FleetStatusRequest(), FleetStatus, timeout=args.timeout)
    except BusError as e:
        raise CommandError(f"{e} (is a fleet_registry actor running? `run.py node --actors fleet_registry`)") from None
    finally:
        await nc.close()
    print(msgspec.json.encode(status).decode() if args.json else render(status, time.time()))
    return 0
