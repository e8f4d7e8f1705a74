"""NATS authentication and per-actor subject permissions: one user per actor, a nats-server config block.

Each actor connects as its own user and may publish and subscribe only on the subjects its job needs, so
a compromised or buggy process cannot act as another: a provider agent cannot publish coordination
results or trace events, a runtime cannot submit jobs, a client cannot answer agent calls. Replies to
requests are allowed through ``allow_responses`` (a responder may publish once to the reply subject of a
request it received), so services need no publish rights of their own.

JetStream goes through ``$JS.API.>``: the coordinator and the trace sink manage their streams and
consumers; clients get only what ``submit``/``tail`` need (stream info, reading a stored result, an
ephemeral consumer on the trace stream).

Example:
    >>> users = generate_users(["coordinator", "provider_agents"], password=lambda name: "pw-" + name)
    >>> [u.user for u in users]
    ['coordinator', 'provider_agents']
    >>> "trinity.coord.result.>" in users[0].permissions.publish
    True
    >>> "trinity.coord.result.>" in users[1].permissions.publish
    False
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bus import subjects
from config.secrets import Secret

_INBOX = "_INBOX.>"
_SERVICE = "$SRV.>"  # nats micro discovery (PING/INFO/STATS) every actor answers
_JS_ALL = "$JS.API.>"
_T = subjects.TRACE_STREAM
_TRACE_CONSUMERS = (f"$JS.API.CONSUMER.CREATE.{_T}", f"$JS.API.CONSUMER.CREATE.{_T}.>",
                    f"$JS.API.CONSUMER.DELETE.{_T}.>", f"$JS.API.CONSUMER.INFO.{_T}.>")


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish to and subscribe on (everything else is denied)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = True


#: Per-actor permissions. ``node`` is the all-in-one single-node process (every actor on one user).
ACTOR_PERMISSIONS: dict[str, Permissions] = {
    "coordinator": Permissions(
        publish=("trinity.route.>", "trinity.runtime.route.>", subjects.ROLE_INJECT, "trinity.agent.*.call",
                 subjects.TRACE_ALL, subjects.COORD_RESULT_ALL, "trinity.fleet.>", _JS_ALL,
                 f"$JS.ACK.{subjects.JOBS_STREAM}.>", "$KV.TRINITY_RUNS.>"),
        subscribe=(subjects.COORD_REQUEST, subjects.max_deliveries_advisory(), subjects.HEARTBEAT_ALL,
                   _INBOX, _SERVICE, subjects.NODE_STATUS_ALL)),
    "model_runtime": Permissions(
        publish=("trinity.runtime.heartbeat.>",),
        subscribe=("trinity.route.>", "trinity.runtime.>", _INBOX, _SERVICE, subjects.NODE_STATUS_ALL)),
    "provider_agents": Permissions(
        publish=(),
        subscribe=("trinity.agent.*.call", _INBOX, _SERVICE, subjects.NODE_STATUS_ALL)),
    "role_injector": Permissions(
        publish=(),
        subscribe=(subjects.ROLE_INJECT, _INBOX, _SERVICE, subjects.NODE_STATUS_ALL)),
    "trace_sink": Permissions(
        publish=(_JS_ALL, f"$JS.ACK.{subjects.TRACE_STREAM}.>"),
        subscribe=(_INBOX, _SERVICE, subjects.NODE_STATUS_ALL)),
    "fleet_registry": Permissions(
        publish=("trinity.runtime.announce", "trinity.runtime.control.>", "trinity.fleet.>"),
        subscribe=("trinity.fleet.>", "trinity.runtime.heartbeat.>", _INBOX, _SERVICE, subjects.NODE_STATUS_ALL)),
    "client": Permissions(
        publish=(subjects.COORD_REQUEST, subjects.COORD_JOBS, subjects.FLEET_STATUS, subjects.NODE_STATUS_ALL,
                 "$JS.API.INFO",
                 "$JS.API.STREAM.INFO.*",
                 f"$JS.API.STREAM.MSG.GET.{subjects.RESULTS_STREAM}", *_TRACE_CONSUMERS, "$JS.FC.>"),
        subscribe=(subjects.COORD_RESULT_ALL, _INBOX),
        allow_responses=False),
    "node": Permissions(publish=(">",), subscribe=(">",)),
}


@dataclass(frozen=True)
class NatsUser:
    """One NATS user: name, password (a :class:`Secret`) and permissions."""

    user: str
    password: Secret
    permissions: Permissions = field(repr=False)


def generate_users(names: Iterable[str], password: Callable[[str], str] | None = None) -> list[NatsUser]:
    """One user per actor name (keys of :data:`ACTOR_PERMISSIONS`), each with a fresh random password.

    Raises ``KeyError`` naming the known actors for an unknown name."""
    make = password or (lambda _name: secrets.token_urlsafe(24))
    out = []
    for name in names:
        if name not in ACTOR_PERMISSIONS:
            raise KeyError(f"no permissions defined for {name!r}; known: {', '.join(ACTOR_PERMISSIONS)}")
        out.append(NatsUser(user=name, password=Secret(make(name)), permissions=ACTOR_PERMISSIONS[name]))
    return out


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def render_authorization(users: Iterable[NatsUser]) -> str:
    """The nats-server ``authorization`` block for ``users`` (contains the passwords: keep it private)."""
    lines = ["authorization {", "  users = ["]
    for u in users:
        p = u.permissions
        perms = [f"subscribe: {{allow: {_list(p.subscribe)}}}"]
        perms.insert(0, f"publish: {{allow: {_list(p.publish)}}}" if p.publish else 'publish: {deny: [">"]}')
        if p.allow_responses:
            perms.append("allow_responses: true")
        lines.append(f"    {{user: {json.dumps(u.user)}, password: {json.dumps(u.password.reveal())}, "
                     f"permissions: {{{', '.join(perms)}}}}}")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def settings_snippet(user: NatsUser, servers: list[str]) -> str:
    """A TOML ``[nats]`` section for the process that runs as ``user``."""
    return (f"[nats]\nservers = {_list(servers)}\nuser = {json.dumps(user.user)}\n"
            f"password = {json.dumps(user.password.reveal())}\n")


def write_auth_files(out_dir: Path, users: list[NatsUser], servers: list[str]) -> list[Path]:
    """Write ``auth.conf`` (include it in nats-server's config) and one ``<user>.toml`` settings file per
    user, each readable by the owner only. Returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in [("auth.conf", render_authorization(users))] + [
            (f"{u.user}.toml", settings_snippet(u, servers)) for u in users]:
        path = out_dir / name
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(text)
        written.append(path)
    return written
