"""Every NATS subject, queue group and stream name of the system, in one place.

=================================  ======================================================
``trinity.coord.request``          coordination requests (queue group of coordinators)
``trinity.coord.jobs``             durable coordination work queue (JetStream ``TRINITY_JOBS``)
``trinity.coord.result.<rid>``     the one result of a queued job (JetStream ``TRINITY_RESULTS``)
``trinity.route.<backend>.<ad>``   routing on a runtime holding adapter ``<ad>`` warm
``trinity.role.inject``            role injector (build an agent's messages for a role)
``trinity.agent.<id>.call``        provider agent ``<id>``
``trinity.trace.<rid>.<kind>``     trace events (JetStream stream ``TRINITY_TRACE``)
``trinity.runtime.heartbeat.<id>`` runtime heartbeats
``trinity.runtime.control.<id>``   runtime control (ensure/evict adapters, drain)
``trinity.runtime.route.<id>``     routing on one runtime (placed by the fleet registry)
``trinity.runtime.announce``       ask every runtime to heartbeat now (a registry starting)
``trinity.fleet.place``            placement: lease runtimes for (backend, base, adapter)
``trinity.fleet.release``          give a placement lease back early
``trinity.fleet.status``           a registry's view of the fleet
``trinity.train.jobs.<run>``       training episodes as jobs (JetStream work queue ``TRINITY_TRAIN_JOBS``)
``trinity.train.reply.<run>.<n>``  evaluators' replies to one trainer process ``<n>`` of run ``<run>``
=================================  ======================================================
"""

from __future__ import annotations

from schemas.common import TOKEN

PREFIX = "trinity"
COORD_REQUEST = f"{PREFIX}.coord.request"
COORD_JOBS = f"{PREFIX}.coord.jobs"
COORD_RESULT_ALL = f"{PREFIX}.coord.result.>"
ROLE_INJECT = f"{PREFIX}.role.inject"
TRACE_ALL = f"{PREFIX}.trace.>"
HEARTBEAT_ALL = f"{PREFIX}.runtime.heartbeat.*"
RUNTIME_ANNOUNCE = f"{PREFIX}.runtime.announce"
FLEET_PLACE = f"{PREFIX}.fleet.place"
FLEET_RELEASE = f"{PREFIX}.fleet.release"
FLEET_STATUS = f"{PREFIX}.fleet.status"
#: node readiness: ``trinity.node.status.<node_id>`` (empty request -> the node's status as JSON)
NODE_STATUS_PREFIX = f"{PREFIX}.node.status"
NODE_STATUS_ALL = f"{NODE_STATUS_PREFIX}.*"

TRACE_STREAM = "TRINITY_TRACE"
JOBS_STREAM = "TRINITY_JOBS"
RESULTS_STREAM = "TRINITY_RESULTS"
JOBS_CONSUMER = "coordinators"
TRAIN_JOBS_ALL = f"{PREFIX}.train.jobs.>"
TRAIN_JOBS_STREAM = "TRINITY_TRAIN_JOBS"
TRAIN_EVALUATORS = "evaluators"

QUEUE_COORDINATORS = "coordinators"
QUEUE_RUNTIMES = "runtimes"
QUEUE_AGENTS = "agents"
QUEUE_ROLE_INJECTORS = "role-injectors"
QUEUE_TRACE_SINKS = "trace-sinks"
QUEUE_REGISTRIES = "fleet-registries"

class InvalidSubjectToken(ValueError):
    """A value cannot be one token of a NATS subject."""

    def __init__(self, what: str, value: object) -> None:
        super().__init__(f"{what} {value!r} cannot be a subject token: use 1-128 of A-Z a-z 0-9 _ -")


def token(what: str, value: str | int) -> str:
    """Validate ``value`` as one subject token (no dots, spaces, wildcards or control characters; the whole
    string must match, so ``"abc\\n"`` is refused)."""
    text = str(value)
    if TOKEN.fullmatch(text) is None:
        raise InvalidSubjectToken(what, value)
    return text


def coord_request() -> str:
    """Subject of coordination requests."""
    return COORD_REQUEST


def coord_jobs() -> str:
    """Subject of the durable coordination work queue."""
    return COORD_JOBS


def coord_result(request_id: str) -> str:
    """Subject holding the result of queued job ``request_id``."""
    return f"{PREFIX}.coord.result.{token('request_id', request_id)}"


def max_deliveries_advisory(stream: str = JOBS_STREAM, consumer: str = JOBS_CONSUMER) -> str:
    """JetStream's advisory published when a message of ``stream`` ran out of deliveries on ``consumer``."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"


def role_inject() -> str:
    """Subject of the role injector."""
    return ROLE_INJECT


def route(backend: str, adapter: str) -> str:
    """Routing subject served by runtimes of ``backend`` holding ``adapter`` (``"base"`` for none)."""
    return f"{PREFIX}.route.{token('backend', backend)}.{token('adapter', adapter)}"


def route_all() -> str:
    """Wildcard over every routing subject."""
    return f"{PREFIX}.route.*.*"


def agent_call(agent_id: int | str) -> str:
    """Subject of provider agent ``agent_id``."""
    return f"{PREFIX}.agent.{token('agent_id', agent_id)}.call"


def trace(request_id: str, kind: str) -> str:
    """Trace subject of one event kind of one request."""
    return f"{PREFIX}.trace.{token('request_id', request_id)}.{token('kind', kind)}"


def trace_filter(request_id: str | None = None, kind: str | None = None) -> str:
    """Trace subject filter; ``None`` parts become wildcards."""
    rid = token("request_id", request_id) if request_id else "*"
    k = token("kind", kind) if kind else "*"
    return f"{PREFIX}.trace.{rid}.{k}"


def runtime_heartbeat(runtime_id: str) -> str:
    """Heartbeat subject of one runtime."""
    return f"{PREFIX}.runtime.heartbeat.{token('runtime_id', runtime_id)}"


def runtime_control(runtime_id: str) -> str:
    """Control subject of one runtime."""
    return f"{PREFIX}.runtime.control.{token('runtime_id', runtime_id)}"


def runtime_route(runtime_id: str) -> str:
    """Routing subject of one runtime (any adapter it holds warm; no queue group)."""
    return f"{PREFIX}.runtime.route.{token('runtime_id', runtime_id)}"


def node_status(node_id: str) -> str:
    """The subject node ``node_id`` answers its readiness on."""
    return f"{NODE_STATUS_PREFIX}.{token('node_id', node_id)}"


def train_generation(run_id: str) -> str:
    """Per-generation fitness of training run ``run_id`` (``run.py train --publish``; plain JSON, no stream)."""
    return f"{PREFIX}.train.{token('run_id', run_id)}.generation"


def train_jobs(run_id: str) -> str:
    """Episode jobs of training run ``run_id`` (work queue ``TRINITY_TRAIN_JOBS``; ``run.py evaluator``)."""
    return f"{PREFIX}.train.jobs.{token('run_id', run_id)}"


def train_reply(run_id: str, nonce: str) -> str:
    """Where evaluators answer the jobs of trainer process ``nonce`` of run ``run_id``."""
    return f"{PREFIX}.train.reply.{token('run_id', run_id)}.{token('nonce', nonce)}"
