"""JetStream streams and durable consumers, created idempotently, and event publishing with dedupe.

Example:
    >>> js = nc.jetstream()                                                   # doctest: +SKIP
    >>> await ensure_stream(js, trace_stream_spec())                          # doctest: +SKIP
    >>> await publish_event(js, subjects.trace("q1", "run_started"), ev, msg_id=ev.event_id)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from bus import subjects
from bus.codec import encode
from bus.errors import BusError
from bus.provenance import Provenance

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"


class StreamConflict(BusError):
    """A stream exists with a configuration that cannot be updated in place."""


@dataclass(frozen=True)
class StreamSpec:
    """Desired stream configuration."""

    name: str
    subjects: list[str]
    retention: str = "limits"  # limits | workqueue | interest
    storage: str = "file"  # file | memory
    max_age_s: float = 7 * 24 * 3600.0
    max_bytes: int = 256 * 1024 * 1024
    max_msgs: int = -1
    replicas: int = 1
    duplicate_window_s: float = 120.0
    max_msg_size: int = 8 * 1024 * 1024
    max_msgs_per_subject: int = -1
    discard_new_per_subject: bool = False

    def _duplicate_window(self) -> float:
        # The server refuses a duplicate window longer than the stream's max age.
        return min(self.duplicate_window_s, self.max_age_s) if self.max_age_s > 0 else self.duplicate_window_s

    def to_config(self) -> StreamConfig:
        """The nats.py StreamConfig."""
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=RetentionPolicy(self.retention),
            storage=StorageType(self.storage),
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            max_msgs=self.max_msgs,
            num_replicas=self.replicas,
            duplicate_window=self._duplicate_window(),
            max_msg_size=self.max_msg_size,
            max_msgs_per_subject=self.max_msgs_per_subject,
            # with discard_new_per_subject, a subject at max_msgs_per_subject refuses new messages
            discard=DiscardPolicy.NEW if self.discard_new_per_subject else DiscardPolicy.OLD,
            discard_new_per_subject=self.discard_new_per_subject,
        )


@dataclass(frozen=True)
class ConsumerSpec:
    """Desired durable pull consumer."""

    durable: str
    filter_subject: str | None = None
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000
    deliver_policy: str = "all"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_config(self) -> ConsumerConfig:
        """The nats.py ConsumerConfig."""
        return ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            deliver_policy=DeliverPolicy(self.deliver_policy),
            **self.extra,
        )


def trace_stream_spec(replicas: int = 1, max_age_s: float = 7 * 24 * 3600.0) -> StreamSpec:
    """The trace stream: every ``trinity.trace.>`` event, kept by limits."""
    return StreamSpec(name=subjects.TRACE_STREAM, subjects=[subjects.TRACE_ALL], replicas=replicas,
                      max_age_s=max_age_s)


def jobs_stream_spec(replicas: int = 1, duplicate_window_s: float = 600.0) -> StreamSpec:
    """The durable coordination work queue (each job delivered to one coordinator).

    Clients publish with ``Nats-Msg-Id`` = request id, so a resubmission within ``duplicate_window_s`` is
    stored once."""
    return StreamSpec(name=subjects.JOBS_STREAM, subjects=[subjects.COORD_JOBS], retention="workqueue",
                      replicas=replicas, max_age_s=24 * 3600.0, duplicate_window_s=duplicate_window_s)


def results_stream_spec(replicas: int = 1, max_age_s: float = 24 * 3600.0, max_bytes: int = 1024 * 1_048_576,
                        max_msg_size: int = 8 * 1024 * 1024) -> StreamSpec:
    """Results of queued jobs, one subject per request id (``trinity.coord.result.<rid>``).

    At most one message per subject, and a second one is refused (discard new per subject): a job that is
    redelivered after its result was stored cannot produce a second result. A client that connects late
    reads the stored result (kept ``max_age_s``). Bounded by ``max_bytes`` (-1: no cap): discard-new means a
    full stream refuses new results (a typed ``StoreFull``; the coordinator hands their jobs back) until old
    ones expire, rather than dropping stored ones; coordinators trim each result to their
    ``result_max_bytes`` first, so the stream holds at least ``max_bytes / result_max_bytes`` results."""
    return StreamSpec(name=subjects.RESULTS_STREAM, subjects=[subjects.COORD_RESULT_ALL], replicas=replicas,
                      max_age_s=max_age_s, max_bytes=max_bytes, duplicate_window_s=600.0, max_msgs_per_subject=1,
                      discard_new_per_subject=True, max_msg_size=max_msg_size)


def jobs_consumer_spec(ack_wait_s: float = 30.0, max_deliver: int = 3, max_ack_pending: int = 1000) -> ConsumerSpec:
    """The coordinators' shared durable pull consumer on the work queue."""
    return ConsumerSpec(durable=subjects.JOBS_CONSUMER, filter_subject=subjects.COORD_JOBS, ack_wait_s=ack_wait_s,
                        max_deliver=max_deliver, max_ack_pending=max_ack_pending)


def train_jobs_stream_spec(replicas: int = 1) -> StreamSpec:
    """Training episode jobs (``trinity.train.jobs.<run>``): a work queue, each job taken by one evaluator.

    Jobs are cheap to re-create (a resumed trainer publishes its generation again), so they live in memory
    and at most a day."""
    return StreamSpec(name=subjects.TRAIN_JOBS_STREAM, subjects=[subjects.TRAIN_JOBS_ALL], retention="workqueue",
                      storage="memory", replicas=replicas, max_age_s=24 * 3600.0, duplicate_window_s=600.0)


def train_jobs_consumer_spec(ack_wait_s: float = 60.0, max_deliver: int = 5) -> ConsumerSpec:
    """The evaluators' shared durable pull consumer: a job not acknowledged within ``ack_wait_s`` (its
    evaluator died) goes to another evaluator, at most ``max_deliver`` times."""
    return ConsumerSpec(durable=subjects.TRAIN_EVALUATORS, filter_subject=subjects.TRAIN_JOBS_ALL,
                        ack_wait_s=ack_wait_s, max_deliver=max_deliver)


_COMPARED = ("subjects", "retention", "storage", "max_age", "max_bytes", "max_msgs", "num_replicas",
             "duplicate_window", "max_msg_size", "max_msgs_per_subject", "discard", "discard_new_per_subject")


async def ensure_stream(js: JetStreamContext, spec: StreamSpec) -> bool:
    """Create the stream, or update it when its settings differ. Returns True when something changed.

    Retention and storage cannot change in place: a differing existing stream raises
    :class:`StreamConflict` telling the operator what to delete.
    """
    want = spec.to_config()
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(want)
        log.info("created stream %s on %s", spec.name, spec.subjects)
        return True
    have = info.config
    if have.retention != want.retention or have.storage != want.storage:
        raise StreamConflict(
            f"stream {spec.name} exists with retention={have.retention} storage={have.storage}; wanted "
            f"retention={want.retention} storage={want.storage}. Delete it (`nats stream rm {spec.name}`) to recreate."
        )
    if any(getattr(have, k) != getattr(want, k) for k in _COMPARED):
        await js.update_stream(want)
        log.info("updated stream %s", spec.name)
        return True
    return False


async def ensure_consumer(js: JetStreamContext, stream: str, spec: ConsumerSpec) -> bool:
    """Create the durable consumer unless it exists. Returns True when it was created."""
    try:
        await js.consumer_info(stream, spec.durable)
        return False
    except NotFoundError:
        await js.add_consumer(stream, spec.to_config())
        return True


async def publish_event(js: JetStreamContext, subject: str, event: msgspec.Struct, *, msg_id: str | None = None,
                        provenance: Provenance | None = None, timeout: float = 5.0) -> int:
    """Publish ``event`` to JetStream with provenance headers; ``msg_id`` dedupes retries. Returns the seq."""
    headers = provenance.to_headers() if provenance else {}
    if msg_id:
        headers[MSG_ID_HEADER] = msg_id
    ack = await js.publish(subject, encode(event), headers=headers or None, timeout=timeout)
    return int(ack.seq)


class JetStreamUnavailable(BusError):
    """JetStream did not answer in time (cluster still electing a leader, or JetStream disabled)."""


async def wait_for_jetstream(js: JetStreamContext, timeout: float = 30.0) -> None:
    """Poll until JetStream answers (a fresh cluster needs a moment to elect its meta leader)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Exception | None = None
    while loop.time() < deadline:
        try:
            await js.account_info()
            return
        except (nats.errors.TimeoutError, nats.js.errors.APIError, nats.errors.NoRespondersError) as e:
            last = e
            await asyncio.sleep(0.2)
    raise JetStreamUnavailable(f"JetStream did not answer within {timeout:.0f}s ({last!r}); check that the "
                               "server runs with -js (or a jetstream block) and the cluster has a quorum")
