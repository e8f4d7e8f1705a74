"""``run.py nats-auth``: write a nats-server authorization block with one user per actor, and their settings.

Example::

    python run.py nats-auth --out /etc/trinity/nats --nats nats://10.0.0.5:4222,nats://10.0.0.6:4222
    # then in nats-server.conf:   include "/etc/trinity/nats/auth.conf"
    # and on each host, e.g.:
    python run.py node --actors model_runtime --config /etc/trinity/nats/model_runtime.toml

``--node ID=USER`` lets only ``USER`` answer node ``ID``'s readiness (``run.py status --node-id ID``);
``--users ...,tenant-alice`` adds a tenant that may only ask through request/reply and reads only its own results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from config.settings import Settings
from ops.commands import UsageError
from ops.nats_auth import ACTOR_PERMISSIONS, generate_users, write_auth_files

NAME = "nats-auth"
HELP = "write nats-server users with per-actor subject permissions (auth.conf) and each actor's settings file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``nats-auth``."""
    p.add_argument("--out", required=True, metavar="DIR", help="directory for auth.conf and <user>.toml (mode 600)")
    p.add_argument("--users", default=",".join(ACTOR_PERMISSIONS), metavar="A,B",
                   help=f"users to create (default: all of {', '.join(ACTOR_PERMISSIONS)}; also tenant-<name>)")
    p.add_argument("--node", action="append", default=[], metavar="ID=USER",
                   help="node ID runs as USER: only USER may answer its readiness (repeatable)")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Generate fresh passwords and write the files (their paths are printed, never the passwords)."""
    names = [n.strip() for n in args.users.split(",") if n.strip()]
    nodes: dict[str, str] = {}
    for item in args.node:
        node_id, sep, owner = item.partition("=")
        if not sep or not node_id or not owner:
            raise UsageError(f"--node {item!r}: write ID=USER, e.g. --node node-1=coordinator")
        nodes[node_id.strip()] = owner.strip()
    try:
        users = generate_users(names, nodes=nodes)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    for path in write_auth_files(Path(args.out), users, list(settings.nats.servers)):
        print(path)
    return 0
