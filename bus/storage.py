"""Self-healing JetStream storage: typed storage errors, a keeper that recreates missing streams and
consumers, and an async publish that never leaks nats-py's publish slots.

* :func:`storage_error` is the one place that maps what nats-py raises for a JetStream write or create to a
  typed :class:`StorageError` (``code``, ``retryable``, a message that says what to do), or ``None`` for a
  transient fault (timeout, reconnect) that a retry may cure. Measured against nats-server 2.15.1:

  - stream deleted, then a publish: ``NoStreamResponseError``;
  - stream at ``max_bytes`` (discard new): ``ServiceUnavailableError`` 10077 "maximum bytes exceeded";
  - one result per subject already stored: 10077 "maximum messages per subject exceeded";
  - the server's JetStream store full: ``ServiceUnavailableError`` 10023 "insufficient resources";
  - a stream created larger than the server's store: ``ServerError`` 10047 "insufficient storage resources
    available";
  - a message over the stream's ``max_msg_size``: ``BadRequestError`` 10054;
  - a payload over the server's ``max_payload``: ``MaxPayloadError`` (client side).

* :class:`StorageKeeper` checks its streams and consumers every ``check_every_s`` (or at once after
  :meth:`StorageKeeper.poke`) and recreates what is missing, with one warning line each
  (``stream TRINITY_RESULTS was missing; recreated it``). A pull subscription bound to a durable consumer
  keeps working once the consumer is recreated under the same name, so consumers need no rebinding. A store
  too small for a stream is a typed :class:`StoreTooSmall`, logged once per change, and retried every round.
* :func:`publish_async` wraps ``JetStreamContext.publish_async``: nats-py takes one of its
  ``publish_async_max_pending`` slots *before* it validates the subject and payload, and a publish that then
  raises (a subject with a newline, a payload over ``max_payload``, a closed connection) never gives it back.
  Here permanent faults are refused before a slot is taken (:class:`PublishRefused`) and a slot taken by a
  publish that raised anyway is released.

Example:
    >>> keeper = StorageKeeper(js, "coordinator", [results_stream_spec()], [])   # doctest: +SKIP
    >>> await keeper.ensure()           # True when every stream and consumer exists   # doctest: +SKIP
    >>> await keeper.start()            # then checks every 2 s                        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

from bus.errors import BusError, ContractError
from bus.jetstream import ConsumerSpec, StreamSpec, ensure_consumer, ensure_stream
from schemas.wire import ErrorCode
from supervisors.watch import LoopWatch

log = logging.getLogger(__name__)

# JetStream API error codes (nats-server's errors.json) that this module tells apart.
ERR_INSUFFICIENT_RESOURCES = 10023
ERR_MEMORY_EXCEEDED = 10028
ERR_STORAGE_EXCEEDED = 10047
ERR_MSG_TOO_LARGE = 10054
ERR_STREAM_NOT_FOUND = 10059
ERR_STREAM_MISMATCH = 10060
ERR_STORE_FAILED = 10077  # "{err}": per-subject limit, maximum bytes/messages exceeded...
ERR_CONSUMER_NOT_FOUND = 10014
_RESOURCE_CODES = {ERR_INSUFFICIENT_RESOURCES, ERR_MEMORY_EXCEEDED, ERR_STORAGE_EXCEEDED}

# What nats-py refuses on the client (its own publish-path check): empty subject, whitespace or CR/LF.
_BAD_SUBJECT = re.compile(r"[\s]")


class StorageError(ContractError, BusError):
    """A JetStream write or create failed for a reason with a name. ``code``/``retryable`` follow the bus's
    error contract (:class:`~schemas.wire.ErrorReply`)."""

    code: ErrorCode = ErrorCode.UNAVAILABLE
    retryable: bool = True

    def __init__(self, message: str, *, stream: str = "", subject: str = "") -> None:
        self.stream, self.subject = stream, subject
        super().__init__(message)  # ContractError: ``code``/``retryable`` from the class


class StreamMissing(StorageError):
    """The stream that should hold a subject does not exist (deleted, or never created)."""


class StoreFull(StorageError):
    """The stream hit its byte/message cap (discard new), or the server's JetStream store is full."""


class StoreTooSmall(StorageError):
    """The server's JetStream store (``max_file_store``/``max_memory_store``) cannot hold a stream's cap."""

    retryable = False


class AlreadyStored(StorageError):
    """A subject that holds one message (a result) has it already: the first one stands."""

    code = ErrorCode.INVALID
    retryable = False


class PublishRefused(StorageError):
    """A publish that can never succeed as sent (bad subject, too large, another stream owns the subject)."""

    code = ErrorCode.INVALID
    retryable = False


def storage_error(exc: BaseException, *, subject: str = "", stream: str = "",
                  creating: bool = False) -> StorageError | None:
    """Map what nats-py raised for a JetStream write (or a stream create, ``creating=True``) to a typed
    :class:`StorageError`; ``None`` for a transient fault worth retrying as is (timeout, reconnect).

    Example:
        >>> err = storage_error(nats.js.errors.NoStreamResponseError(), subject="trinity.coord.result.q1")
        >>> type(err).__name__, err.code.value, err.retryable
        ('StreamMissing', 'unavailable', True)
    """
    where = subject or stream
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return StreamMissing(f"no JetStream stream holds {where} (deleted?); it is recreated by the node's storage "
                             "keeper within its check interval", stream=stream, subject=subject)
    if isinstance(exc, nats.errors.MaxPayloadError):
        return PublishRefused(f"message on {where} exceeds the server's max_payload; send less", stream=stream,
                              subject=subject)
    if isinstance(exc, nats.errors.BadSubjectError):
        return PublishRefused(f"subject {subject!r} is not a valid NATS subject (whitespace or empty); fix the id "
                              "that built it", stream=stream, subject=subject)
    if isinstance(exc, nats.js.errors.APIError):
        code, text = exc.err_code, str(exc.description or "")
        if code in (ERR_STREAM_NOT_FOUND, ERR_CONSUMER_NOT_FOUND):
            return StreamMissing(f"{text} ({where}); it is recreated by the node's storage keeper", stream=stream,
                                 subject=subject)
        if code in _RESOURCE_CODES:
            if creating:
                return StoreTooSmall(
                    f"JetStream store too small for stream {stream or where} ({text}): raise the server's "
                    "jetstream max_file_store, or lower the stream's max_bytes setting", stream=stream,
                    subject=subject)
            return StoreFull(f"JetStream store full writing {where} ({text}): free space (old results and traces "
                             "expire by age) or raise the server's jetstream max_file_store", stream=stream,
                             subject=subject)
        if code == ERR_STORE_FAILED:
            if "per subject" in text:
                return AlreadyStored(f"{where} already holds its one message", stream=stream, subject=subject)
            if "maximum" in text:
                return StoreFull(f"stream {stream or 'of ' + where} is full ({text}); its oldest entries expire by "
                                 "age, or raise its max_bytes", stream=stream, subject=subject)
            return StorageError(f"JetStream could not store {where}: {text}", stream=stream, subject=subject)
        if code == ERR_MSG_TOO_LARGE:
            return PublishRefused(f"message on {where} exceeds the stream's max_msg_size ({text}); send less",
                                  stream=stream, subject=subject)
        if code == ERR_STREAM_MISMATCH:
            return PublishRefused(f"{where} is held by another stream than {stream} ({text}); remove the overlapping "
                                  "stream", stream=stream, subject=subject)
    return None


class StorageKeeper:
    """Keeps a set of streams and durable consumers in existence (see the module docstring).

    ``update=False`` only creates what is missing (an existing stream is never reconfigured). ``buckets``:
    key-value buckets, each a name and a coroutine function that creates it (called when ``KV_<name>`` is
    missing).
    ``ready`` is set while every stream and consumer exists; ``error`` holds the last typed failure.
    """

    def __init__(self, js: JetStreamContext, owner: str, streams: Sequence[StreamSpec],
                 consumers: Sequence[tuple[str, ConsumerSpec]] = (), *, check_every_s: float = 2.0,
                 update: bool = True, buckets: Sequence[tuple[str, Callable[[], Awaitable[object]]]] = ()) -> None:
        if not check_every_s > 0:
            raise ValueError(f"check_every_s must be > 0 seconds, got {check_every_s}")
        self.js, self.owner = js, owner
        self.streams, self.consumers = list(streams), list(consumers)
        self.buckets = list(buckets)  # key-value buckets: (name, coroutine function creating it)
        self.check_every_s, self.update = check_every_s, update
        self.ready = asyncio.Event()
        self.error: StorageError | None = None
        self.recreated: dict[str, int] = {}  # stream or "stream/consumer" -> times recreated after the first ensure
        self.checks = 0
        self._ensured_once = False
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.watch = LoopWatch(f"{owner} storage keeper", stall_after_s=max(30.0, 10 * check_every_s))

    def poke(self) -> None:
        """Check now (a publish just found a stream missing)."""
        self._poke.set()

    async def _exists_stream(self, name: str) -> bool:
        try:
            await self.js.stream_info(name)
        except NotFoundError:
            return False
        return True

    async def _exists_consumer(self, stream: str, durable: str) -> bool:
        try:
            await self.js.consumer_info(stream, durable)
        except NotFoundError:
            return False
        return True

    async def ensure(self) -> bool:
        """Create (or, with ``update``, reconcile) every stream, then every consumer. Returns True when all
        exist; a typed failure is logged once per change and kept in :attr:`error`. Transient faults
        (timeouts) return False without a log line, to be retried next round."""
        self.checks += 1
        again = self._ensured_once
        current = ""
        try:
            for spec in self.streams:
                current = spec.name
                if again or not self.update:
                    if not await self._exists_stream(spec.name):
                        await ensure_stream(self.js, spec)
                        if again:
                            self.recreated[spec.name] = self.recreated.get(spec.name, 0) + 1
                            log.warning("%s: stream %s was missing; recreated it", self.owner, spec.name)
                else:
                    await ensure_stream(self.js, spec)
            for stream, cspec in self.consumers:
                current = stream
                if not await self._exists_consumer(stream, cspec.durable):
                    await ensure_consumer(self.js, stream, cspec)
                    if again:
                        key = f"{stream}/{cspec.durable}"
                        self.recreated[key] = self.recreated.get(key, 0) + 1
                        log.warning("%s: consumer %s was missing; recreated it", self.owner, key)
            for bucket, create in self.buckets:
                current = f"KV_{bucket}"  # a bucket is the stream KV_<name>
                if not await self._exists_stream(current):
                    await create()
                    if again:
                        self.recreated[current] = self.recreated.get(current, 0) + 1
                        log.warning("%s: key-value bucket %s was missing; recreated it", self.owner, bucket)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            typed = storage_error(e, stream=current, creating=True)
            self.ready.clear()
            if typed is None:
                log.debug("%s: storage check failed (%r); retrying", self.owner, e)
                return False
            if self.error is None or str(self.error) != str(typed):
                log.error("%s: %s: %s (request/reply keeps serving; retrying every %.1f s)", self.owner,
                          type(typed).__name__, typed, self.check_every_s)
            self.error = typed
            return False
        if self.error is not None:
            log.warning("%s: JetStream storage is back (%s resolved)", self.owner, type(self.error).__name__)
            self.error = None
        self._ensured_once = True
        self.ready.set()
        return True

    async def start(self) -> None:
        """Start the periodic check (watched by :attr:`watch`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"{self.owner}.storage-keeper")
            self.watch.attach(self._task)

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), timeout=self.check_every_s)
            self._poke.clear()
            await self.ensure()
            self.watch.progress()
            await asyncio.sleep(min(0.25, self.check_every_s))  # pokes in a burst (every failed publish) coalesce

    async def stop(self) -> None:
        """Stop the periodic check."""
        self.watch.detach()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def stats(self) -> dict[str, Any]:
        """Checks made, what was recreated, the current typed error (if any)."""
        return {"checks": self.checks, "recreated": dict(self.recreated), "ready": self.ready.is_set(),
                "error": f"{type(self.error).__name__}: {self.error}" if self.error else None}


def _release_leaked_slot(js: JetStreamContext, before: set[str]) -> int:
    """Release the slot(s) a ``publish_async`` that raised took and never gave back (nats-py 2.x keeps one
    future per slot in ``_publish_async_futures``; a future added by the failed call is never resolved)."""
    futures: dict[str, asyncio.Future[Any]] | None = getattr(js, "_publish_async_futures", None)
    if futures is None:
        return 0
    leaked = [f for k, f in list(futures.items()) if k not in before and not f.done()]
    # The failed call raised before any await after registering its future, so it is the newest one.
    if leaked:
        leaked[-1].cancel()  # its done-callback drops it and releases the semaphore
        return 1
    return 0


async def publish_async(js: JetStreamContext, subject: str, payload: bytes, *, headers: dict[str, str] | None = None,
                        wait_stall: float | None = None, max_payload: int | None = None) -> asyncio.Future[PubAck]:
    """``js.publish_async`` that never leaks a publish slot (see the module docstring).

    Raises :class:`PublishRefused` for what can never be published as given (before a slot is taken), or
    :class:`StorageError`/``nats.errors.Error`` for other failures (the slot given back)."""
    if not subject or _BAD_SUBJECT.search(subject):
        raise PublishRefused(f"subject {subject!r} is not a valid NATS subject (empty, whitespace or a newline); "
                             "fix the id that built it", subject=subject)
    if max_payload is not None and len(payload) > max_payload:
        raise PublishRefused(f"message of {len(payload)} bytes on {subject} exceeds the server's max_payload "
                             f"({max_payload}); send less", subject=subject)
    before = set(getattr(js, "_publish_async_futures", {}))
    try:
        return await js.publish_async(subject, payload, wait_stall=wait_stall, headers=headers)
    except nats.js.errors.TooManyStalledMsgsError:
        raise  # no slot was taken
    except (nats.errors.Error, OSError) as e:
        if _release_leaked_slot(js, before):
            await asyncio.sleep(0)  # let the cancelled future's done-callback give the slot back
        typed = storage_error(e, subject=subject)
        if typed is not None:
            raise typed from e
        raise


def in_flight_slots(js: JetStreamContext) -> int:
    """Async publishes holding a slot now (``publish_async_pending``)."""
    return js.publish_async_pending()
