"""Run journal: each completed turn of a running request id recorded in JetStream before the run goes on.

Queued jobs and request/reply runs (:meth:`~.jobs.JobIntake.run_claimed`) claim their id here alike.

One key per running request id in the KV bucket ``TRINITY_RUNS`` (history 1). The value is a
:class:`RunJournal`: who owns the run now (``owner``, ``term``), until when (``lease_until``, renewed with
every in-progress ack), the job's absolute deadline, and every completed :class:`~schemas.TurnRecord`
(route decision, role assignment, agent receipt, verdict, budget). Every write is a compare-and-set on the
key's last revision, so:

- a redelivered job *claims* the run (``term + 1``) and resumes after its last completed turn: no agent whose
  receipt was recorded is called again;
- the coordinator it was taken from (paused past the ack wait, or cut off) fails its next write (a turn, a
  lease renewal or the final claim before storing the result) with :class:`Superseded` and stops: one owner
  per running id across the cluster;
- a delivery that finds a live lease held by another coordinator does not run it (:class:`LeaseHeld`);
  the job goes back to the queue until the lease ends.

The entry is deleted once the result is stored. A write that fails for another reason (JetStream timeout,
store full, a value over the server's max payload) is logged and carried by the next write; the run goes on
(without a fresh resume point meanwhile). If such a write did land unacknowledged, the next compare-and-set
fails and the run stops conservatively (the job is redelivered after the ack wait and resumes).

Example:
    >>> j = RunJournal(request_id="q1", fingerprint="ab", owner="n1", term=1, lease_until=10.0)
    >>> j.completed_turns
    0
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from schemas.coordination import TurnRecord

log = logging.getLogger(__name__)

BUCKET = "TRINITY_RUNS"
_BUS_ERRORS = (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError)


class RunJournal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The durable state of one running request id (see the module docstring).

    ``deadline_at``: the job's absolute deadline (epoch seconds; ``None``: no deadline); ``started_at``: when
    the first delivery started (epoch seconds); ``rng_state``: the sampling generator's state after the last
    completed turn (``route_rule = "sample"``); ``cause``: the last trace event id, so the resumed chain
    continues from it."""

    request_id: str
    fingerprint: str
    owner: str
    term: int
    lease_until: float
    deadline_at: float | None = None
    started_at: float = 0.0
    turns: list[TurnRecord] = msgspec.field(default_factory=list)
    rng_state: list[int] | None = None
    cause: str = ""

    @property
    def completed_turns(self) -> int:
        """Turns recorded as completed."""
        return len(self.turns)


class Superseded(Exception):
    """Another coordinator claimed this run (a newer delivery): stop without storing anything."""

    def __init__(self, request_id: str, term: int) -> None:
        super().__init__(f"run {request_id} (term {term}) was claimed by another coordinator; stopping here")
        self.request_id, self.term = request_id, term


class LeaseHeld(Exception):
    """The run is held by a live lease of another coordinator: do not run it now."""

    def __init__(self, request_id: str, owner: str, left_s: float, revision: int = 0, fingerprint: str = "") -> None:
        super().__init__(f"run {request_id} is held by {owner} for another {left_s:.1f}s")
        self.request_id, self.owner, self.left_s, self.revision = request_id, owner, left_s, revision
        self.fingerprint = fingerprint  # the held run's request fingerprint (another payload: a conflict)


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(RunJournal)


async def open_bucket(js: JetStreamContext, *, replicas: int = 1, ttl_s: float = 24 * 3600.0,
                      max_bytes: int = 1024 * 1024 * 1024) -> KeyValue:
    """The journal bucket, created when missing (file storage, history 1, entries kept ``ttl_s``)."""
    try:
        return await js.key_value(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        kv = await js.create_key_value(config=KeyValueConfig(
            bucket=BUCKET, description="TRINITY run journals (completed turns of running jobs)", history=1,
            ttl=ttl_s, max_bytes=max_bytes, storage=StorageType.FILE, replicas=replicas))
        log.info("created key-value bucket %s", BUCKET)
        return kv
    except nats.js.errors.BadRequestError:  # another coordinator created it meanwhile
        return await js.key_value(BUCKET)


class JournalHandle:
    """One coordinator's hold on one run's journal entry: CAS writes on the revision it last saw."""

    def __init__(self, kv: KeyValue | None, state: RunJournal, revision: int | None) -> None:
        self.kv = kv
        self.state = state
        self.revision = revision
        self.writes = 0
        self.failed_writes = 0
        self._lock = asyncio.Lock()  # the run's writes and the lease renewals share one revision
        self.handed_back = False

    @property
    def durable(self) -> bool:
        """False when the journal could not be written (the run goes on without resume points)."""
        return self.kv is not None and self.revision is not None

    async def _write(self, change: Callable[[RunJournal], RunJournal]) -> None:
        async with self._lock:
            if self.handed_back:  # the job went back to the queue: this run must not go on here
                raise Superseded(self.state.request_id, self.state.term)
            await self._write_locked(change(self.state))

    async def hand_back(self) -> None:
        """End the lease now (the job goes back to the queue): the next delivery claims the run at once, and
        this run's next write or guarded call stops it. The completed turns stay for the resume."""
        async with self._lock:
            if self.handed_back:
                return
            self.handed_back = True
            try:
                await self._write_locked(msgspec.structs.replace(self.state, lease_until=0.0))
            except Superseded:
                pass

    async def _write_locked(self, new: RunJournal) -> None:
        if not self.durable:
            self.state = new
            return
        assert self.kv is not None and self.revision is not None
        try:
            self.revision = await self.kv.update(new.request_id, _enc.encode(new), last=self.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise Superseded(new.request_id, self.state.term) from None
        except _BUS_ERRORS as e:
            # the next write carries this one's content; if this one did land unacknowledged, that next write
            # fails its compare-and-set and the run stops here (its redelivery resumes): never two owners
            self.failed_writes += 1
            log.warning("run journal of %s not written (%r); the next write carries it", new.request_id, e)
        else:
            self.writes += 1
        self.state = new

    async def record_turn(self, turn: TurnRecord, *, rng_state: list[int] | None, cause: str) -> None:
        """Record a completed turn (raises :class:`Superseded` when another coordinator owns the run now)."""
        await self._write(lambda s: msgspec.structs.replace(s, turns=[*s.turns, turn], rng_state=rng_state,
                                                            cause=cause))

    async def renew(self, lease_until: float) -> None:
        """Extend the lease (raises :class:`Superseded` when the run was claimed by another coordinator)."""
        await self._write(lambda s: msgspec.structs.replace(s, lease_until=max(s.lease_until, lease_until)))

    async def confirm(self) -> None:
        """Check, with a write, that this coordinator still owns the run (before storing its result)."""
        await self._write(lambda s: s)

    async def release(self) -> None:
        """Delete the entry (the result is stored); only while this coordinator still owns it."""
        if not self.durable:
            return
        assert self.kv is not None
        async with self._lock:
            try:
                await self.kv.delete(self.state.request_id, last=self.revision)
            except _BUS_ERRORS as e:  # a stale entry expires with the bucket's TTL
                log.debug("run journal of %s not deleted (%r)", self.state.request_id, e)
            self.revision = None


async def claim(kv: KeyValue | None, *, request_id: str, fingerprint: str, owner: str, now: float, lease_s: float,
                deadline_at: float | None, force: bool = False) -> JournalHandle:
    """Take ownership of ``request_id``'s run: a new entry (term 1), or the existing one with ``term + 1`` and its
    completed turns kept for the resume. An entry for another payload (other fingerprint) is replaced.

    Raises :class:`LeaseHeld` when another owner's lease is still live (unless ``force``). Without a bucket,
    or when JetStream fails, the handle is not durable (the run starts from turn 0, as before)."""
    fresh = RunJournal(request_id=request_id, fingerprint=fingerprint, owner=owner, term=1, lease_until=now + lease_s,
                       deadline_at=deadline_at, started_at=now)
    if kv is None:
        return JournalHandle(None, fresh, None)
    for _ in range(5):
        try:
            try:
                entry = await kv.get(request_id)
            except nats.js.errors.KeyNotFoundError:
                entry = None
            if entry is None or not entry.value:
                rev = await kv.create(request_id, _enc.encode(fresh))
                return JournalHandle(kv, fresh, rev)
            try:
                old = _dec.decode(entry.value)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                log.warning("unreadable run journal of %s (%s); starting it again", request_id, e)
                old = None
            if old is not None and old.owner != owner and old.lease_until > now and not force:
                raise LeaseHeld(request_id, old.owner, old.lease_until - now, entry.revision or 0,
                                old.fingerprint)
            if old is None or old.fingerprint != fingerprint:
                new = msgspec.structs.replace(fresh, term=(old.term + 1) if old else 1)
            else:
                new = msgspec.structs.replace(old, owner=owner, term=old.term + 1, lease_until=now + lease_s,
                                              deadline_at=old.deadline_at if old.deadline_at is not None
                                              else deadline_at)
            rev = await kv.update(request_id, _enc.encode(new), last=entry.revision)
            return JournalHandle(kv, new, rev)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            continue  # raced with another claim: read again
        except LeaseHeld:
            raise
        except _BUS_ERRORS as e:
            log.warning("run journal of %s unavailable (%r); running without resume points", request_id, e)
            return JournalHandle(None, fresh, None)
    log.warning("could not claim the run journal of %s (contended); running without resume points", request_id)
    return JournalHandle(None, fresh, None)


def node_owner(prefix: str = "coordinator") -> str:
    """A unique owner id for one coordinator instance."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
