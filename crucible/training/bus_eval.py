"""Evaluation over the bus: a generation's episodes as JetStream jobs for any number of evaluator processes.

Trainer side, :class:`BusEvaluator`: each candidate (a cheap adapter: the vector itself) and a chunk of at most
``job_tasks`` tasks make one :class:`EvalJob` on the work queue ``TRINITY_TRAIN_JOBS``
(``trinity.train.jobs.<run>``). The job carries the run's :class:`~crucible.training.trainer.TrainConfig` (so an
evaluator on any host builds the same episode runner), the suite fingerprint, the task ids and the vector as
float64 bytes. Replies come back on the trainer process's own subject (``trinity.train.reply.<run>.<nonce>``);
the trainer keeps the first reply per job (a redelivered job may answer twice) and rebuilds each candidate's
:class:`~crucible.training.episodes.Evaluation` in task order, so the fitness is the same float as in process.

Evaluator side, :class:`EvaluatorWorker` (``run.py evaluator``): one durable pull consumer (``evaluators``)
shared by every evaluator; fetch one job, build (once per config) the runner with its memos (agent replies of
deterministic agents, backbone states of head-only layouts), run the episodes, reply, then acknowledge. A job
whose evaluator dies is not acknowledged and JetStream redelivers it after ``ack_wait`` to another evaluator;
a live evaluator keeps a long job with in-progress acks.

Head-only candidates travel with the trainer's column scale already applied (the head the runtime would load),
so evaluators need no per-run state beyond the config.

Example (two shells)::

    run.py evaluator --nats nats://host:4222                       # any number of these, on any host
    run.py train --run-dir runs/a --backbone tiny --external-evaluators --nats nats://host:4222
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from numpy.typing import NDArray

from bus import subjects
from bus.jetstream import (
    MSG_ID_HEADER,
    ensure_consumer,
    ensure_stream,
    train_jobs_consumer_spec,
    train_jobs_stream_spec,
)
from crucible.training.episodes import Episode, EpisodeRunner, Evaluation
from crucible.training.setup import SetupError
from crucible.world.tasks import Task, TaskSuite, build_suite

log = logging.getLogger(__name__)


class BusEvalError(Exception):
    """Evaluation over the bus failed: an evaluator refused a job, or no reply came in time (message says why)."""


class EvalJob(msgspec.Struct, frozen=True):
    """One candidate on a chunk of tasks."""

    run_id: str
    job_id: str
    reply_to: str
    config: dict[str, Any]
    config_sha256: str
    suite_fingerprint: str
    task_ids: list[str]
    vector: bytes  # float64, little-endian, the layout's order (head-only: the scaled head, row-major)


class EvalReply(msgspec.Struct, frozen=True):
    """The episodes of one job (or why it could not run)."""

    job_id: str
    evaluator: str
    delivery: int = 1
    episodes: list[Episode] = msgspec.field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    stats: dict[str, Any] = msgspec.field(default_factory=dict)
    spent_usd: float = 0.0  # agent calls this job really made (memo hits are free)


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 of a run config (canonical JSON): evaluators key their built runners by it."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def run_id_for(path: Any) -> str:
    """A subject-safe run id for a run folder: its name plus 8 hex of its absolute path."""
    import re
    from pathlib import Path

    p = Path(path).expanduser().resolve()
    name = re.sub(r"[^A-Za-z0-9_-]", "-", p.name)[:64] or "run"
    return f"{name}-{hashlib.sha256(str(p).encode()).hexdigest()[:8]}"


async def _ensure_jobs(js: Any, spec: Any, attempts: int = 5) -> None:
    """Create the jobs stream and the evaluators' consumer unless they exist (a trainer and evaluators
    starting together may race to create them: the loser retries and finds them)."""
    for i in range(attempts):
        try:
            await ensure_stream(js, train_jobs_stream_spec())
            await ensure_consumer(js, subjects.TRAIN_JOBS_STREAM, spec)
            return
        except nats.js.errors.BadRequestError:
            if i == attempts - 1:
                raise
            await asyncio.sleep(0.2 * (i + 1))


@dataclass
class BusStats:
    """Trainer-side counters."""

    jobs: int = 0
    replies: int = 0
    duplicates: int = 0
    redelivered: int = 0
    evaluators: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return {"jobs": self.jobs, "replies": self.replies, "duplicates": self.duplicates,
                "redelivered": self.redelivered, "evaluators": sorted(self.evaluators)}


class BusEvaluator:
    """The trainer's side: publish jobs, gather replies (see the module docs).

    ``stall_timeout_s`` bounds the wait for the next reply (not the whole batch): with no evaluator alive the
    trainer stops with :class:`BusEvalError` and its checkpoint (the last finished generation) stays usable.
    """

    def __init__(self, nc: Client, run_id: str, config: dict[str, Any], suite_fingerprint: str, *,
                 job_tasks: int = 64, ack_wait_s: float = 60.0, max_deliver: int = 5,
                 stall_timeout_s: float = 600.0) -> None:
        if job_tasks < 1 or not ack_wait_s > 0 or max_deliver < 1 or not stall_timeout_s > 0:
            raise ValueError("need job_tasks >= 1, ack_wait_s > 0, max_deliver >= 1, stall_timeout_s > 0")
        self.nc = nc
        self.js = nc.jetstream()
        self.run_id = subjects.token("run_id", run_id)
        self.config = config
        self.sha = config_sha256(config)
        self.fingerprint = suite_fingerprint
        self.job_tasks = job_tasks
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.stall_timeout_s = stall_timeout_s
        self.nonce = uuid.uuid4().hex[:12]
        self.reply_subject = subjects.train_reply(self.run_id, self.nonce)
        self.stats = BusStats()
        #: USD the evaluators spent on this trainer's jobs (first reply per job)
        self.spent_usd = 0.0
        self._batch = 0
        self._queue: asyncio.Queue[EvalReply] = asyncio.Queue()
        self._sub: Any = None

    async def start(self) -> None:
        """Create the stream and consumer if missing, drop this run's stale jobs, listen for replies."""
        spec = train_jobs_consumer_spec(self.ack_wait_s, self.max_deliver)
        await _ensure_jobs(self.js, spec)
        info = await self.js.consumer_info(subjects.TRAIN_JOBS_STREAM, subjects.TRAIN_EVALUATORS)
        if info.config.ack_wait != spec.ack_wait_s or info.config.max_deliver != spec.max_deliver:
            try:  # the server updates a durable consumer given the same name and an edited config
                await self.js.add_consumer(subjects.TRAIN_JOBS_STREAM, spec.to_config())
            except nats.js.errors.Error as e:
                log.warning("kept the evaluators' consumer as it is (ack wait %ss, max deliver %s): %s",
                            info.config.ack_wait, info.config.max_deliver, e)
        # a killed trainer's jobs would only be answered to a subject nobody reads
        await self.js.purge_stream(subjects.TRAIN_JOBS_STREAM, subject=subjects.train_jobs(self.run_id))

        async def on_reply(msg: Msg) -> None:
            try:
                self._queue.put_nowait(msgspec.msgpack.decode(msg.data, type=EvalReply))
            except msgspec.DecodeError as e:
                log.warning("dropped a malformed evaluator reply on %s: %s", msg.subject, e)

        self._sub = await self.nc.subscribe(self.reply_subject, cb=on_reply)
        await self.nc.flush()

    async def close(self) -> None:
        """Stop listening (the stream and consumer stay for other runs)."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    async def evaluate_many(self, vectors: Sequence[NDArray[np.floating]], tasks: Sequence[Task]) -> list[Evaluation]:
        """Every vector on every task, as jobs spread over the evaluators; one Evaluation per vector."""
        if self._sub is None:
            raise BusEvalError("BusEvaluator.start() was not awaited")
        self._batch += 1
        ids = [t.id for t in tasks]
        chunks = [ids[i:i + self.job_tasks] for i in range(0, len(ids), self.job_tasks)] or [[]]
        order: dict[str, tuple[int, int]] = {}
        subject = subjects.train_jobs(self.run_id)
        for ci, v in enumerate(vectors):
            data = np.ascontiguousarray(v, dtype="<f8").tobytes()
            for k, chunk in enumerate(chunks):
                jid = f"{self.nonce}-{self._batch}-{ci}-{k}"
                order[jid] = (ci, k)
                job = EvalJob(self.run_id, jid, self.reply_subject, self.config, self.sha, self.fingerprint,
                              chunk, data)
                await self.js.publish(subject, msgspec.msgpack.encode(job), headers={MSG_ID_HEADER: jid})
                self.stats.jobs += 1
        got: dict[str, EvalReply] = {}
        while len(got) < len(order):
            try:
                reply = await asyncio.wait_for(self._queue.get(), timeout=self.stall_timeout_s)
            except TimeoutError:
                raise BusEvalError(f"no evaluator reply for {self.stall_timeout_s:.0f}s ({len(got)}/{len(order)} "
                                   f"jobs of this batch answered); start `run.py evaluator` processes on "
                                   f"{subjects.train_jobs(self.run_id)} or resume later") from None
            if reply.job_id not in order:
                continue  # an earlier batch's late duplicate
            if reply.error is not None:
                raise BusEvalError(f"evaluator {reply.evaluator} refused job {reply.job_id}: {reply.error}")
            if reply.job_id in got:
                self.stats.duplicates += 1
                continue
            got[reply.job_id] = reply
            self.spent_usd += reply.spent_usd
            self.stats.replies += 1
            self.stats.evaluators.add(reply.evaluator)
            if reply.delivery > 1:
                self.stats.redelivered += 1
        out = [Evaluation() for _ in vectors]
        for jid, (ci, _k) in sorted(order.items(), key=lambda kv: kv[1]):
            out[ci].episodes.extend(got[jid].episodes)
        return out


@dataclass
class BuiltRunner:
    """An evaluator's episode runner for one run config, and how to release it (its agent pool)."""

    runner: EpisodeRunner
    close: Callable[[], Awaitable[None]]


Builder = Callable[[dict[str, Any]], Awaitable[BuiltRunner]]


def default_builder(providers: Any = None) -> Builder:
    """A builder making the run's episode runner exactly as ``run.py train`` does
    (:func:`crucible.training.setup.build`); ``providers``: this process's ``provider_agents`` settings, for
    runs with ``agents = "configured"`` (API keys never travel in jobs)."""

    async def make(config: dict[str, Any]) -> BuiltRunner:
        from crucible.training.setup import build
        from crucible.training.trainer import TrainConfig

        built = await build(TrainConfig(**config), providers)
        return BuiltRunner(built.runner, built.close)
    return make


class EvaluatorWorker:
    """One evaluator process's loop (``run.py evaluator``): fetch a job, run it, reply, acknowledge.

    ``builder`` turns a run config into an episode runner (default: :func:`default_builder` ``()``); the last
    ``keep_runners`` built runners stay warm (memos included). ``max_jobs`` stops after that many jobs (tests,
    benchmarks); ``stop`` ends the loop between jobs.
    """

    def __init__(self, nc: Client, *, name: str | None = None, builder: Builder | None = None,
                 keep_runners: int = 1, fetch_timeout_s: float = 1.0) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.name = name or f"evaluator-{uuid.uuid4().hex[:8]}"
        self.builder = builder or default_builder()
        self.keep_runners = max(1, keep_runners)
        self.fetch_timeout_s = fetch_timeout_s
        self._runners: dict[str, BuiltRunner] = {}
        self._suites: dict[int, tuple[TaskSuite, str]] = {}  # seed -> suite, fingerprint (44 ms to compute)
        self.jobs_done = 0
        self.episodes_done = 0
        self.busy_s = 0.0
        self._ack_wait_s = 60.0

    async def run(self, stop: asyncio.Event | None = None, max_jobs: int | None = None) -> None:
        """Serve jobs until ``stop`` is set (or ``max_jobs`` are done)."""
        stop = stop or asyncio.Event()
        await _ensure_jobs(self.js, train_jobs_consumer_spec())
        info = await self.js.consumer_info(subjects.TRAIN_JOBS_STREAM, subjects.TRAIN_EVALUATORS)
        self._ack_wait_s = float(info.config.ack_wait or 60.0)
        sub = await self.js.pull_subscribe_bind(durable=subjects.TRAIN_EVALUATORS,
                                                stream=subjects.TRAIN_JOBS_STREAM)
        try:
            while not stop.is_set() and (max_jobs is None or self.jobs_done < max_jobs):
                try:
                    msgs = await sub.fetch(batch=1, timeout=self.fetch_timeout_s)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
                    if self.nc.is_closed:
                        return
                    log.warning("fetching training jobs failed (%r); retrying", e)
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    await self.handle(msg)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            for b in self._runners.values():
                await b.close()
            self._runners.clear()

    async def _runner(self, job: EvalJob) -> EpisodeRunner:
        built = self._runners.get(job.config_sha256)
        if built is None:
            if config_sha256(job.config) != job.config_sha256:
                raise ValueError("the job's config does not match its config_sha256")
            while len(self._runners) >= self.keep_runners:
                await self._runners.pop(next(iter(self._runners))).close()
            built = await self.builder(job.config)
            self._runners[job.config_sha256] = built
        return built.runner

    def _tasks(self, job: EvalJob) -> list[Task]:
        seed = int(job.config.get("suite_seed", 0))
        got = self._suites.get(seed)
        if got is None:
            built = build_suite(seed=seed)
            got = self._suites[seed] = (built, built.fingerprint)
        suite, fingerprint = got
        if fingerprint != job.suite_fingerprint:
            raise ValueError(f"suite seed {seed} builds fingerprint {fingerprint[:12]} here, the trainer's "
                             f"is {job.suite_fingerprint[:12]} (different code versions?)")
        return [suite.by_id(t) for t in job.task_ids]

    async def handle(self, msg: Msg) -> None:
        """Run one job message and settle it."""
        delivery = msg.metadata.num_delivered
        start = time.perf_counter()
        try:
            job = msgspec.msgpack.decode(msg.data, type=EvalJob)
        except msgspec.DecodeError as e:
            log.warning("terminated a malformed training job: %s", e)
            with contextlib.suppress(nats.errors.Error):
                await msg.term()
            return
        keepalive = asyncio.create_task(self._keep_in_progress(msg))
        try:
            try:
                runner = await self._runner(job)
                tasks = self._tasks(job)
                vector = np.frombuffer(job.vector, dtype="<f8").astype(np.float64)
                runner.scale = None  # head-only jobs carry the scaled head
                if runner.features is not None:
                    runner.warm(tasks)
                spent = runner.replies.spent_usd
                ev = await runner.evaluate(vector, tasks)
                reply = EvalReply(job.job_id, self.name, delivery, ev.episodes,
                                  seconds=round(time.perf_counter() - start, 4), stats=runner.stats(),
                                  spent_usd=runner.replies.spent_usd - spent)
            except (ValueError, KeyError, TypeError, SetupError) as e:  # the same on every delivery: refuse
                log.warning("refused job %s: %s", job.job_id, e)
                reply = EvalReply(job.job_id, self.name, delivery, error=f"{type(e).__name__}: {e}")
            await self.nc.publish(job.reply_to, msgspec.msgpack.encode(reply))
            await self.nc.flush()
        except asyncio.CancelledError:
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.nak()
            raise
        except Exception:  # a bug or a broken backbone here: keep serving, let another evaluator try the job
            log.exception("job %s (delivery %d) crashed on %s; handed back", job.job_id, delivery, self.name)
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.nak(delay=1.0)
            return
        finally:
            keepalive.cancel()
        # acknowledged after the reply: a crash in between makes a duplicate, never a lost job
        with contextlib.suppress(nats.errors.Error, OSError):
            await (msg.term() if reply.error else msg.ack())
        self.jobs_done += 1
        self.episodes_done += len(reply.episodes)
        self.busy_s += time.perf_counter() - start

    async def _keep_in_progress(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(max(self._ack_wait_s / 3.0, 0.1))
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.in_progress()
