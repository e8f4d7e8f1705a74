"""NATS authentication and per-actor subject permissions: one user per actor, a nats-server config block.

Each actor connects as its own user and may publish and subscribe only on the subjects its job needs, so
a compromised or buggy process cannot act as another: a provider agent cannot publish coordination
results or trace events, a runtime cannot submit jobs, a client cannot answer agent calls. Replies to
requests are allowed through ``allow_responses`` (a responder may publish once to the reply subject of a
request it received), so services need no publish rights of their own.

What holds, each checked by an attack run as that user in ``tests/e2e/test_permissions.py``:

- **Private inboxes.** Every user connects with its own inbox prefix ``_INBOX_<user>`` (setting
  ``nats.inbox_prefix``, written into each user's settings file) and may subscribe only under it; ``_INBOX.>`` is
  denied to all. No one sees another's replies or JetStream deliveries, so no one can answer them or ack/term a
  job delivery (``allow_responses`` lets a user answer only what it received).
- **Answer only your own subjects.** Runtimes, agents, the role injector and coordinators subscribe their request
  subjects only inside their queue group, so a process holding those credentials takes its share of requests but
  cannot watch or answer every one; they publish nothing but replies (and heartbeats, for runtimes; the agents'
  shared receipts, for agents: only their own agents' keys for a scoped ``agents-<x>`` user).
- **JetStream API by owner.** The coordinator manages the jobs and results streams and its ``coordinators``
  consumer, the trace sink the trace stream's ``trace-sink`` consumer; no generated user may delete or purge a
  stream or delete a consumer, and the client's ephemeral trace readers may never touch ``trace-sink``.
- **Clients read only their own results**: a ``tenant-<name>`` user may only send requests on
  ``trinity.coord.request``; its result comes back to its own inbox, and it can read no results stream, trace
  or job. The ``client`` user is the operator's: it reads every stored result and trace (``result``, ``tail``).
- **Node readiness** ``trinity.node.status.<id>`` is answerable only by the user that runs node ``<id>``
  (``nats-auth --node <id>=<user>``); without it no actor user may answer any.

- **Per-host scoped users** (``nats-auth --agents-user NAME=0,1 --runtime-user ID``). ``agents-<name>`` may
  subscribe ``trinity.agent.<id>.call`` (in the ``agents`` queue group) only for its listed agent ids; the host
  running as it lists only those agents in ``provider_agents.agents``. ``runtime-<id>`` may publish only
  ``trinity.runtime.heartbeat.<id>`` and subscribe only its own ``trinity.runtime.route.<id>`` and
  ``trinity.runtime.control.<id>`` (besides the shared ``trinity.route.*.*`` in the ``runtimes`` queue group); its
  settings file sets ``model_runtime.runtime_id = "<id>"``. The fleet registry takes a heartbeat only when its
  ``runtime_id`` is the subject's, so no holder can report another runtime's liveness or capacity. (Attacks as
  ``agents-a`` and ``runtime-r1``, and the real actors running as them: ``tests/e2e/test_scoped_users.py``.)

Limits: trust is per user, not per process. Whoever holds the unscoped ``provider_agents`` password is an agent
replica of every agent id, and a ``model_runtime`` holder may heartbeat, be placed and serve
``trinity.runtime.route.<id>`` as any runtime id: give each host a scoped user where hosts must not vouch for each
other. A scoped holder still takes its share of its own agent ids' calls and of the shared ``trinity.route.*.*``
routes in the ``runtimes`` queue group (a runtime may serve any adapter a registry asks it to load). Every actor
user may answer ``$SRV`` discovery. Durable consumer names are fixed here (``coordinators``, ``trace-sink``).

Example:
    >>> users = generate_users(["coordinator", "provider_agents"], password=lambda name: "pw-" + name)
    >>> [u.user for u in users]
    ['coordinator', 'provider_agents']
    >>> "trinity.coord.result.>" in users[0].permissions.publish
    True
    >>> "trinity.coord.result.>" in users[1].permissions.publish
    False
    >>> host = generate_users(["agents-gpu-a", "runtime-r1"], agents={"agents-gpu-a": [0, 1]})
    >>> [s for s in host[0].permissions.subscribe if s.startswith("trinity.")]
    ['trinity.agent.0.call agents', 'trinity.agent.1.call agents']
    >>> host[1].permissions.publish
    ('trinity.runtime.heartbeat.r1',)
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bus import subjects
from config.secrets import Secret

_INBOX = "_INBOX.>"  # nats-py's default inbox: denied to every generated user (anyone could snoop replies)
_SERVICE = "$SRV.>"  # nats micro discovery (PING/INFO/STATS) every actor answers
_API = "$JS.API"
_T, _J, _R = subjects.TRACE_STREAM, subjects.JOBS_STREAM, subjects.RESULTS_STREAM
#: durable consumer names the permissions are cut for (the defaults of the coordinator and trace sink settings)
TRACE_SINK_DURABLE = "trace-sink"
_JOBS_DURABLE = subjects.JOBS_CONSUMER
#: no generated user (but ``node``) may delete or purge a stream or delete a consumer; stored messages may be
#: deleted only by the coordinator, on its own jobs stream (an allow, below)
_JS_DESTRUCTIVE = (f"{_API}.STREAM.DELETE.>", f"{_API}.STREAM.PURGE.>", f"{_API}.CONSUMER.DELETE.>",
                   f"{_API}.ACCOUNT.PURGE.>", f"{_API}.META.>",
                   f"{_API}.STREAM.SNAPSHOT.>", f"{_API}.STREAM.RESTORE.>", f"{_API}.SERVER.>")


def inbox_prefix(user: str) -> str:
    """The reply-inbox prefix of ``user`` (``_INBOX_<user>``): only that user may subscribe under it, so no one
    else sees the replies it receives (nor the JetStream deliveries and their ack subjects)."""
    return f"_INBOX_{subjects.token('user', user)}"


def _own_consumer(stream: str, durable: str) -> tuple[str, ...]:
    """Create/info/next on one durable consumer (no delete: that is in :data:`_JS_DESTRUCTIVE`)."""
    return (f"{_API}.CONSUMER.CREATE.{stream}.{durable}", f"{_API}.CONSUMER.CREATE.{stream}.{durable}.>",
            f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}", f"{_API}.CONSUMER.INFO.{stream}.{durable}",
            f"{_API}.CONSUMER.MSG.NEXT.{stream}.{durable}")


#: the coordinators' run journal (a JetStream KV bucket is the stream ``KV_<bucket>``)
_RUNS_KV = "KV_TRINITY_RUNS"
#: the agents' shared receipts (:mod:`actors.provider_agents.shared_receipts`)
_RECEIPTS_BUCKET = "TRINITY_RECEIPTS"
_RECEIPTS_KV = f"KV_{_RECEIPTS_BUCKET}"


def _own_stream(stream: str) -> tuple[str, ...]:
    return (f"{_API}.STREAM.CREATE.{stream}", f"{_API}.STREAM.UPDATE.{stream}", f"{_API}.STREAM.INFO.{stream}")


#: ephemeral trace readers (``run.py tail``): create an unnamed or named ordered consumer, never the sink's
_TRACE_READER = (f"{_API}.CONSUMER.CREATE.{_T}", f"{_API}.CONSUMER.CREATE.{_T}.*.>",
                 f"{_API}.CONSUMER.INFO.{_T}.*", "$JS.FC.>")
_NOT_THE_SINK = (f"{_API}.CONSUMER.*.{_T}.{TRACE_SINK_DURABLE}", f"{_API}.CONSUMER.*.{_T}.{TRACE_SINK_DURABLE}.>",
                 f"{_API}.CONSUMER.MSG.NEXT.{_T}.{TRACE_SINK_DURABLE}",
                 f"{_API}.CONSUMER.DURABLE.CREATE.{_T}.{TRACE_SINK_DURABLE}")


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish to and subscribe on (everything else is denied; ``*_deny`` wins over allow).

    A subscribe entry ``"<subject> <queue>"`` allows that subject only inside queue group ``<queue>``: a process
    holding the credentials cannot watch every request on it, only take its share."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = True
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()


#: prefix of a per-host agents user (``agents-<name>``), limited to the agent ids it is generated for
AGENTS_USER_PREFIX = "agents-"
#: prefix of a per-host runtime user (``runtime-<runtime_id>``), limited to that one runtime id
RUNTIME_USER_PREFIX = "runtime-"
_TENANT_PREFIX = "tenant-"


def agents_user(name: str) -> str:
    """The user name of agents host ``name`` (``agents-<name>``); ``InvalidSubjectToken`` (a ``ValueError``)
    unless the whole user name is one subject token."""
    subjects.token("agents user name", name)
    return subjects.token("user", AGENTS_USER_PREFIX + name)


def runtime_user(runtime_id: str) -> str:
    """The user name of runtime ``runtime_id`` (``runtime-<runtime_id>``); ``InvalidSubjectToken`` (a
    ``ValueError``) unless the id and the whole user name are subject tokens."""
    subjects.token("runtime_id", runtime_id)
    return subjects.token("user", RUNTIME_USER_PREFIX + runtime_id)


def runtime_id_of(user: str) -> str | None:
    """The runtime id a ``runtime-<id>`` user is limited to; ``None`` for any other user."""
    return user[len(RUNTIME_USER_PREFIX):] if user.startswith(RUNTIME_USER_PREFIX) else None


_AGENT_ID = re.compile(r"[0-9]{1,18}")


def agent_ids(values: Iterable[int | str]) -> tuple[int, ...]:
    """Agent ids as :class:`~config.provider_agents.AgentSpec` has them (whole numbers >= 0), sorted, once each.

    Raises ``ValueError`` naming the first bad value, or for none at all."""
    out: set[int] = set()
    for v in values:
        text = "" if isinstance(v, bool) else subjects.token("agent_id", v)
        if _AGENT_ID.fullmatch(text) is None:
            raise ValueError(f"agent id {v!r}: agent ids are whole numbers >= 0 (as provider_agents.agents has them)")
        out.add(int(text))
    if not out:
        raise ValueError("an agents user needs at least one agent id")
    return tuple(sorted(out))


def _receipts(agents: Iterable[int] | None = None) -> tuple[str, ...]:
    """The shared agent receipts (KV bucket ``TRINITY_RECEIPTS``, keys ``<queue group>.a<agent id>.<call id>``) of
    ``agents`` (``None``: every agent): create and look up the bucket (never update, purge or delete it), write
    and read (direct get, by subject) those agents' keys only."""
    keys = [f"$KV.{_RECEIPTS_BUCKET}.>"] if agents is None else [f"$KV.{_RECEIPTS_BUCKET}.*.a{i}.*" for i in agents]
    return (f"{_API}.STREAM.CREATE.{_RECEIPTS_KV}", f"{_API}.STREAM.INFO.{_RECEIPTS_KV}",
            *(p for k in keys for p in (k, f"{_API}.DIRECT.GET.{_RECEIPTS_KV}.{k}")))


def _agents_permissions(ids: Iterable[int]) -> Permissions:
    """An agents host serving only ``ids``: each one's call subject in the ``agents`` queue group, and the shared
    receipts of those agents only; nothing else published."""
    ids = tuple(ids)
    return Permissions(publish=_receipts(ids),
                       subscribe=(*(f"{subjects.agent_call(i)} {subjects.QUEUE_AGENTS}" for i in ids), _SERVICE))


def _runtime_permissions(runtime_id: str) -> Permissions:
    """A runtime that is only ``runtime_id``: its heartbeat, its own direct route and control subjects, and the
    shared per-adapter route subjects in the ``runtimes`` queue group."""
    return Permissions(
        publish=(subjects.runtime_heartbeat(runtime_id),),
        subscribe=(f"{subjects.route_all()} {subjects.QUEUE_RUNTIMES}", subjects.runtime_route(runtime_id),
                   subjects.runtime_control(runtime_id), subjects.RUNTIME_ANNOUNCE, _SERVICE))


def actor_permissions(name: str, nodes: Iterable[str] = (), agents: Iterable[int] | None = None) -> Permissions:
    """Permissions of user ``name`` (an actor, ``client``, ``node``, ``tenant-<x>``, ``runtime-<id>`` or
    ``agents-<x>``), with its own inbox prefix and, for each id in ``nodes``, the right to answer
    ``trinity.node.status.<id>``. ``agents``: the agent ids an ``agents-<x>`` user serves (required for it).

    Raises ``KeyError`` naming the known users for an unknown name (or an ``agents-<x>`` without ids), and
    ``ValueError`` for a runtime id or agent id that cannot be a subject token."""
    if name.startswith(_TENANT_PREFIX):
        base = _TENANT
    elif name.startswith(RUNTIME_USER_PREFIX):
        runtime_id = name[len(RUNTIME_USER_PREFIX):]
        runtime_user(runtime_id)  # the id and the whole user name must be subject tokens
        base = _runtime_permissions(runtime_id)
    elif name.startswith(AGENTS_USER_PREFIX):
        if agents is None:
            raise KeyError(f"user {name!r} needs the agent ids it may serve (nats-auth --agents-user "
                           f"{name[len(AGENTS_USER_PREFIX):]}=0,1)")
        base = _agents_permissions(agent_ids(agents))
    elif name in ACTOR_PERMISSIONS:
        base = ACTOR_PERMISSIONS[name]
    else:
        raise KeyError(f"no permissions defined for {name!r}; known: {', '.join(ACTOR_PERMISSIONS)}, tenant-<name>, "
                       "agents-<name>, runtime-<id>")
    if name == "node":
        return base
    own = (f"{inbox_prefix(name)}.>", *(subjects.node_status(n) for n in nodes))
    return Permissions(publish=base.publish, subscribe=base.subscribe + own, allow_responses=base.allow_responses,
                       publish_deny=base.publish_deny + _JS_DESTRUCTIVE,
                       subscribe_deny=(*base.subscribe_deny, _INBOX))


#: Per-actor permissions before the user's own inbox and node-status subjects are added
#: (:func:`actor_permissions`). ``node`` is the all-in-one single-node process (every actor on one user).
ACTOR_PERMISSIONS: dict[str, Permissions] = {
    "coordinator": Permissions(
        publish=("trinity.route.>", "trinity.runtime.route.>", subjects.ROLE_INJECT, "trinity.agent.*.call",
                 subjects.TRACE_ALL, subjects.COORD_RESULT_ALL, "trinity.fleet.>", f"{_API}.INFO",
                 *_own_stream(_J), *_own_stream(_R), *_own_stream(_T), f"{_API}.STREAM.MSG.GET.{_J}",
                 f"{_API}.STREAM.MSG.GET.{_R}", f"{_API}.STREAM.MSG.DELETE.{_J}", *_own_consumer(_J, _JOBS_DURABLE),
                 f"$JS.ACK.{_J}.{_JOBS_DURABLE}.>",
                 # the run journal (KV bucket TRINITY_RUNS): resume points of running jobs
                 *_own_stream(_RUNS_KV), f"{_API}.STREAM.MSG.GET.{_RUNS_KV}", f"{_API}.DIRECT.GET.{_RUNS_KV}.>",
                 "$KV.TRINITY_RUNS.>"),
        subscribe=(f"{subjects.COORD_REQUEST} {subjects.QUEUE_COORDINATORS}",
                   f"{subjects.max_deliveries_advisory()} {subjects.QUEUE_COORDINATORS}", subjects.HEARTBEAT_ALL,
                   _SERVICE)),
    "model_runtime": Permissions(
        publish=("trinity.runtime.heartbeat.>",),
        subscribe=(f"trinity.route.*.* {subjects.QUEUE_RUNTIMES}", "trinity.runtime.route.*",
                   "trinity.runtime.control.*", subjects.RUNTIME_ANNOUNCE, _SERVICE)),
    "provider_agents": Permissions(
        publish=_receipts(),
        subscribe=(f"trinity.agent.*.call {subjects.QUEUE_AGENTS}", _SERVICE)),
    "role_injector": Permissions(
        publish=(),
        subscribe=(f"{subjects.ROLE_INJECT} {subjects.QUEUE_ROLE_INJECTORS}", _SERVICE)),
    "trace_sink": Permissions(
        publish=(f"{_API}.INFO", *_own_stream(_T), *_own_consumer(_T, TRACE_SINK_DURABLE),
                 f"$JS.ACK.{_T}.{TRACE_SINK_DURABLE}.>"),
        subscribe=(_SERVICE,)),
    "fleet_registry": Permissions(
        publish=("trinity.runtime.announce", "trinity.runtime.control.>", "trinity.fleet.>"),
        subscribe=(f"{subjects.FLEET_PLACE} {subjects.QUEUE_REGISTRIES}",
                   f"{subjects.FLEET_STATUS} {subjects.QUEUE_REGISTRIES}", subjects.FLEET_RELEASE,
                   "trinity.runtime.heartbeat.>", _SERVICE)),
    # the operator's client: submit, status, result, tail (reads every stored result and trace)
    "client": Permissions(
        publish=(subjects.COORD_REQUEST, subjects.COORD_JOBS, subjects.FLEET_STATUS, subjects.NODE_STATUS_ALL,
                 f"{_API}.INFO", f"{_API}.STREAM.INFO.*", f"{_API}.STREAM.MSG.GET.{_R}", *_TRACE_READER),
        subscribe=(subjects.COORD_RESULT_ALL,),
        allow_responses=False, publish_deny=_NOT_THE_SINK),
    # the OpenAI-compatible gateway: durable jobs, their results, and live trace events (for streaming)
    "gateway": Permissions(
        publish=(subjects.COORD_JOBS, f"{_API}.INFO", f"{_API}.STREAM.INFO.*", f"{_API}.STREAM.MSG.GET.{_R}"),
        subscribe=(subjects.COORD_RESULT_ALL, "trinity.trace.*.*"),
        allow_responses=False),
    "node": Permissions(publish=(">",), subscribe=(">",)),
}

#: a tenant (``tenant-<name>``): asks through request/reply only; its results come back to its own inbox, which no
#: other user may read, and it reads no stored result, trace or job of anyone
_TENANT = Permissions(publish=(subjects.COORD_REQUEST,), subscribe=(), allow_responses=False)


@dataclass(frozen=True)
class NatsUser:
    """One NATS user: name, password (a :class:`Secret`), permissions and, for an ``agents-<x>`` user, the agent
    ids it may serve."""

    user: str
    password: Secret
    permissions: Permissions = field(repr=False)
    agent_ids: tuple[int, ...] = ()


def generate_users(names: Iterable[str], password: Callable[[str], str] | None = None,
                   nodes: dict[str, str] | None = None,
                   agents: Mapping[str, Iterable[int | str]] | None = None) -> list[NatsUser]:
    """One user per name (keys of :data:`ACTOR_PERMISSIONS`, ``tenant-<x>``, ``runtime-<id>`` or ``agents-<x>``),
    each with a fresh random password.

    ``nodes`` maps a node id to the user that runs it: only that user may answer ``trinity.node.status.<id>``
    (readiness); a user with no node answers none. ``agents`` maps each ``agents-<x>`` user to the agent ids it
    may serve.

    Raises ``KeyError`` naming the known users for an unknown name (or a node or agents entry naming a user
    not among ``names``), ``ValueError`` for an id that cannot be a subject token."""
    make = password or (lambda _name: secrets.token_urlsafe(24))
    nodes = nodes or {}
    names = list(names)
    for node_id, owner in nodes.items():
        subjects.token("node_id", node_id)
        if owner not in names:
            raise KeyError(f"node {node_id!r} runs as {owner!r}, which is not among the users {', '.join(names)}")
    served = {user: agent_ids(ids) for user, ids in (agents or {}).items()}
    for user in served:
        if user not in names or not user.startswith(AGENTS_USER_PREFIX):
            raise KeyError(f"agent ids are given for {user!r}, which is not an {AGENTS_USER_PREFIX}<name> user among "
                           f"the users {', '.join(names)}")
    out = []
    for name in names:
        mine = [n for n, owner in nodes.items() if owner == name]
        out.append(NatsUser(user=name, password=Secret(make(name)),
                            permissions=actor_permissions(name, mine, served.get(name)),
                            agent_ids=served.get(name, ())))
    return out


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def render_authorization(users: Iterable[NatsUser]) -> str:
    """The nats-server ``authorization`` block for ``users`` (contains the passwords: keep it private)."""
    lines = ["authorization {", "  users = ["]
    for u in users:
        p = u.permissions
        pub = f"allow: {_list(p.publish)}" if p.publish else 'deny: [">"]'
        if p.publish and p.publish_deny:
            pub += f", deny: {_list(p.publish_deny)}"
        sub = f"allow: {_list(p.subscribe)}" if p.subscribe else 'deny: [">"]'
        if p.subscribe and p.subscribe_deny:
            sub += f", deny: {_list(p.subscribe_deny)}"
        perms = [f"publish: {{{pub}}}", f"subscribe: {{{sub}}}"]
        if p.allow_responses:
            perms.append("allow_responses: true")
        lines.append(f"    {{user: {json.dumps(u.user)}, password: {json.dumps(u.password.reveal())}, "
                     f"permissions: {{{', '.join(perms)}}}}}")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def settings_snippet(user: NatsUser, servers: list[str]) -> str:
    """A TOML ``[nats]`` section for the process that runs as ``user``; for ``runtime-<id>`` also
    ``[model_runtime] runtime_id = "<id>"`` (the only id it may heartbeat and be routed to as), for
    ``agents-<x>`` a comment naming the agent ids it may serve."""
    text = (f"[nats]\nservers = {_list(servers)}\nuser = {json.dumps(user.user)}\n"
            f"password = {json.dumps(user.password.reveal())}\n")
    if user.user != "node":
        text += f"inbox_prefix = {json.dumps(inbox_prefix(user.user))}\n"
    runtime_id = runtime_id_of(user.user)
    if runtime_id is not None:
        text += (f"\n# {user.user} may heartbeat, be placed and be routed to only as runtime {runtime_id}\n"
                 f"[model_runtime]\nruntime_id = {json.dumps(runtime_id)}\n")
    if user.agent_ids:
        ids = ", ".join(str(i) for i in user.agent_ids)
        text += (f"\n# {user.user} may serve only agent ids {ids}: list only these in [[provider_agents.agents]]\n"
                 f"# (the server refuses the subscription of any other agent id)\n")
    return text


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
