"""Agent receipts shared by every replica of an agent: a repeated call is answered once across hosts.

:class:`~actors.provider_agents.idempotency.CallCache` answers a repeated intent (a resumed job asking again for
a call whose receipt its killed coordinator never got) from the process that made the call. When an agent runs
on several hosts (the ``agents`` queue group), the repeat may reach another replica, which would call the
provider again. :class:`SharedReceipts` keeps every receipt also in the JetStream key-value bucket
``TRINITY_RECEIPTS`` (history 1, entries kept ``ttl_s``, at most ``max_bytes``), so a replica that did not make
the call finds its receipt there before calling the provider.

- Keys are ``<queue group>.a<agent_id>.<call id>`` (:func:`~actors.provider_agents.idempotency.call_key`):
  replicas are the actors of one queue group, and the agent id is a subject token of its own
  (``$KV.TRINITY_RECEIPTS.agents.a<id>.<call id>``), so NATS permissions can give a host's user the receipts of
  its own agents only (reads go through ``$JS.API.DIRECT.GET`` with the subject in it).
- A receipt read back must match the intent (request id, turn, agent id) or it is ignored.
- The store never fails a call: while JetStream or the bucket is unavailable (no JetStream, store full, no
  permission) reads miss and writes are skipped, counted in :attr:`SharedReceipts.stats`, logged once per
  change by the storage keeper, which recreates the bucket when it goes missing.
- Only in-flight *joins* stay per process: a repeat that reaches another replica while the first call still
  runs calls the provider again (a redelivered job comes after the coordinators' ack wait, when the first call
  has usually ended).

Example:
    >>> receipts = SharedReceipts(js, ttl_s=600.0, max_bytes=64 << 20)   # doctest: +SKIP
    >>> await receipts.start()                                           # doctest: +SKIP
    >>> cache = CallCache(ttl_s=600.0, shared=receipts)                  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from bus.storage import StorageKeeper
from schemas.coordination import AgentCallIntent, AgentCallReceipt

log = logging.getLogger(__name__)

BUCKET = "TRINITY_RECEIPTS"


def receipt_key(group: str, agent_id: int, call_id: str) -> str:
    """The bucket key of call ``call_id`` of agent ``agent_id`` served by queue group ``group`` (the agent id a
    subject token of its own)."""
    return f"{group}.a{agent_id}.{call_id}"


@dataclass
class SharedReceiptStats:
    """Receipts found, misses, written, ignored (not matching their intent), reads and writes that failed or
    were skipped because the store was unavailable."""

    hits: int = 0
    misses: int = 0
    written: int = 0
    mismatched: int = 0
    read_errors: int = 0
    write_errors: int = 0
    unavailable: int = 0


class SharedReceipts:
    """The ``TRINITY_RECEIPTS`` bucket as a best-effort receipt store (see the module docstring)."""

    def __init__(self, js: JetStreamContext, *, ttl_s: float, max_bytes: int, group: str = "agents",
                 replicas: int = 1, timeout_s: float = 1.0, check_every_s: float = 5.0) -> None:
        self.js = js
        self.group = group
        self.ttl_s, self.max_bytes, self.replicas = ttl_s, max_bytes, replicas
        self.timeout_s = timeout_s
        self.stats = SharedReceiptStats()
        self._kv: KeyValue | None = None
        self.keeper = StorageKeeper(js, "provider_agents", (), check_every_s=check_every_s,
                                    buckets=[(BUCKET, self._create)])

    async def _create(self) -> KeyValue:
        try:
            kv = await self.js.create_key_value(config=KeyValueConfig(
                bucket=BUCKET, description="TRINITY agent receipts, shared by an agent's replicas", history=1,
                ttl=self.ttl_s, max_bytes=self.max_bytes, storage=StorageType.FILE, replicas=self.replicas,
                direct=True))
            log.info("created key-value bucket %s", BUCKET)
        except nats.js.errors.BadRequestError:  # another replica created it meanwhile
            kv = await self.js.key_value(BUCKET)
        self._kv = kv
        return kv

    async def start(self) -> None:
        """Start the storage keeper (creates the bucket when missing, in the background, checking at once)."""
        self.keeper.poke()
        await self.keeper.start()

    async def stop(self) -> None:
        """Stop the storage keeper."""
        await self.keeper.stop()

    async def _bucket(self) -> KeyValue | None:
        if not self.keeper.ready.is_set():
            self.stats.unavailable += 1
            return None
        if self._kv is None:
            try:
                self._kv = await asyncio.wait_for(self.js.key_value(BUCKET), self.timeout_s)
            except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError):
                self.stats.unavailable += 1
                self.keeper.poke()
                return None
        return self._kv

    async def get(self, intent: AgentCallIntent, call_id: str) -> AgentCallReceipt | None:
        """The kept receipt of ``intent`` (call id ``call_id``), or ``None``; never raises."""
        kv = await self._bucket()
        if kv is None:
            return None
        try:
            entry = await asyncio.wait_for(kv.get(receipt_key(self.group, intent.agent_id, call_id)), self.timeout_s)
        except nats.js.errors.KeyNotFoundError:
            self.stats.misses += 1
            return None
        except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as e:
            self.stats.read_errors += 1
            log.debug("shared receipt of %s turn %d not read (%r)", intent.request_id, intent.turn, e)
            if isinstance(e, nats.js.errors.NotFoundError):
                self.keeper.poke()
            return None
        try:
            receipt = msgspec.json.decode(entry.value or b"", type=AgentCallReceipt)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.stats.mismatched += 1
            return None
        if (receipt.request_id, receipt.turn, receipt.agent_id) != (intent.request_id, intent.turn,
                                                                    intent.agent_id):
            self.stats.mismatched += 1
            return None
        self.stats.hits += 1
        return receipt

    async def put(self, intent: AgentCallIntent, call_id: str, receipt: AgentCallReceipt) -> None:
        """Keep ``receipt`` for other replicas; never raises (a failed write is counted)."""
        kv = await self._bucket()
        if kv is None:
            return
        try:
            key = receipt_key(self.group, intent.agent_id, call_id)
            await asyncio.wait_for(kv.put(key, msgspec.json.encode(receipt)), self.timeout_s)
        except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as e:
            self.stats.write_errors += 1
            log.debug("receipt of %s turn %d not shared (%r)", intent.request_id, intent.turn, e)
            if isinstance(e, nats.js.errors.NotFoundError):
                self.keeper.poke()
            return
        self.stats.written += 1
