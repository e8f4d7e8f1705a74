"""``run.py nats-auth``: write a nats-server authorization block with one user per actor, and their settings.

Example::

    python run.py nats-auth --out /etc/trinity/nats --nats nats://10.0.0.5:4222,nats://10.0.0.6:4222
    # then in nats-server.conf:   include "/etc/trinity/nats/auth.conf"
    # and on each host, e.g.:
    python run.py node --actors model_runtime --config /etc/trinity/nats/model_runtime.toml

``--node ID=USER`` lets only ``USER`` answer node ``ID``'s readiness (``run.py status --node-id ID``);
``--users ...,tenant-alice`` adds a tenant that may only ask through request/reply and reads only its own results.

Per-host users, so that hosts do not vouch for each other::

    python run.py nats-auth --out /etc/trinity/nats --agents-user gpu-a=0,1,2 --agents-user gpu-b=3,4,5,6 \
        --runtime-user r1 --runtime-user r2
    # agents-gpu-a.toml: serves only agents 0, 1, 2 (its settings list only those in provider_agents.agents)
    # runtime-r1.toml: sets model_runtime.runtime_id = "r1", the only id it may heartbeat and be routed to as
    python run.py node --actors model_runtime --config /etc/trinity/nats/runtime-r1.toml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from config.settings import Settings
from ops.commands import UsageError
from ops.nats_auth import ACTOR_PERMISSIONS, agent_ids, agents_user, generate_users, runtime_user, write_auth_files

NAME = "nats-auth"
HELP = "write nats-server users with per-actor subject permissions (auth.conf) and each actor's settings file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``nats-auth``."""
    p.add_argument("--out", required=True, metavar="DIR", help="directory for auth.conf and <user>.toml (mode 600)")
    p.add_argument("--users", default=",".join(ACTOR_PERMISSIONS), metavar="A,B",
                   help=f"users to create (default: all of {', '.join(ACTOR_PERMISSIONS)}; also tenant-<name>, "
                        "runtime-<id>)")
    p.add_argument("--node", action="append", default=[], metavar="ID=USER",
                   help="node ID runs as USER: only USER may answer its readiness (repeatable)")
    p.add_argument("--agents-user", action="append", default=[], metavar="NAME=ID,ID",
                   help="add user agents-NAME, which may serve only these agent ids (repeatable; one per agents host)")
    p.add_argument("--runtime-user", action="append", default=[], metavar="ID",
                   help="add user runtime-ID, which may heartbeat and be routed to only as runtime ID; its settings "
                        "set model_runtime.runtime_id (repeatable; one per runtime)")


def scoped_users(args: argparse.Namespace) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """The ``agents-<name>`` and ``runtime-<id>`` users of ``--agents-user`` / ``--runtime-user``, and each agents
    user's ids; :class:`UsageError` naming the flag and the rule for bad input."""
    names: list[str] = []
    agents: dict[str, tuple[int, ...]] = {}
    for item in args.agents_user:
        name, sep, ids = item.partition("=")
        if not sep or not name.strip() or not ids.strip():
            raise UsageError(f"--agents-user {item!r}: write NAME=ID,ID,..., e.g. --agents-user gpu-a=0,1,2")
        try:
            user = agents_user(name.strip())
            served = agent_ids(i.strip() for i in ids.split(","))
        except ValueError as e:
            raise UsageError(f"--agents-user {item!r}: {e}") from None
        if user in agents:
            raise UsageError(f"--agents-user {item!r}: {name.strip()!r} is given twice; list all its ids once")
        agents[user] = served
        names.append(user)
    for rid in args.runtime_user:
        try:
            user = runtime_user(rid)
        except ValueError as e:
            raise UsageError(f"--runtime-user {rid!r}: {e}") from None
        if user in names:
            raise UsageError(f"--runtime-user {rid!r}: given twice")
        names.append(user)
    return names, agents


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Generate fresh passwords and write the files (their paths are printed, never the passwords)."""
    names = [n.strip() for n in args.users.split(",") if n.strip()]
    scoped, agents = scoped_users(args)
    names += [n for n in scoped if n not in names]
    nodes: dict[str, str] = {}
    for item in args.node:
        node_id, sep, owner = item.partition("=")
        if not sep or not node_id or not owner:
            raise UsageError(f"--node {item!r}: write ID=USER, e.g. --node node-1=coordinator")
        nodes[node_id.strip()] = owner.strip()
    try:
        users = generate_users(names, nodes=nodes, agents=agents)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    for path in write_auth_files(Path(args.out), users, list(settings.nats.servers)):
        print(path)
    return 0
