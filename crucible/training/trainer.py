"""The optimizer loop: sep-CMA-ES (``cmaes.SepCMA``) over a vector layout, with checkpoint, resume, plot, export.

Per generation: ask ``popsize`` candidates, score each on the generation's training batch (the same tasks for
every candidate; drawn from the train split with a generator seeded by ``(seed, generation)``), tell the
optimizer (it minimizes, so it is told ``-fitness``), then score the optimizer's mean on the valid split (and,
for the plot only, on the test split). The best-on-valid mean (accuracy, then fitness) is kept; selection never
looks at the test split.

**Checkpoint.** After every generation the whole state (the pickled ``SepCMA`` object,
the generation, the best vector, the optimizer's random state (``cmaes`` does not pickle it), the history,
memo counters) is written atomically (temp file + rename) to
``RUN_DIR/checkpoint.pkl``. A trainer killed at any point resumes from the last finished generation and
produces the same candidates as an uninterrupted run with the same seed (the history records a sha256 of each
generation's candidates, so this is checkable).

**Outputs** in ``RUN_DIR``: ``checkpoint.pkl``, ``history.json``, ``progress.png`` (best/mean fitness and
valid/test accuracy per generation), and at the end the export (:func:`export`): ``head.npy`` (head-only
layouts; ``model_runtime.head_path`` loads it) or ``vector.npy`` + ``vector.safetensors`` (layouts with SVF
offsets, TRINITY vector order), plus ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from crucible.training.budget import BudgetExhausted, SpendMeter
from crucible.training.episodes import EpisodeRunner, Evaluation
from crucible.training.fitness import FitnessWeights
from crucible.training.layout import VectorLayout
from crucible.world.tasks import FAMILIES, Task, TaskSuite

CHECKPOINT = "checkpoint.pkl"
FORMAT = 1


class TrainError(Exception):
    """A training run cannot start or resume as asked (message says why)."""


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in the checkpoint; ``resume`` rebuilds the evaluator from it)."""

    layout: dict[str, Any]
    generations: int = 30
    popsize: int = 16
    sigma0: float = 0.03
    seed: int = 0
    batch: int = 0
    suite_seed: int = 0
    limit: int = 0
    weights: dict[str, Any] = field(default_factory=lambda: FitnessWeights().to_dict())
    routing_profile: str = "elixir-port"
    route_rule: str = "argmax"
    max_turns: int = 5
    agent_mask: list[int] | None = None
    agent_max_tokens: int = 64
    backbone: dict[str, Any] = field(default_factory=dict)
    agents: str = "offline-world"
    test_each_generation: bool = True
    precondition: bool = True
    project: int = 0
    basis: str = "random"
    export_layout: str = ""
    #: train tasks per family (0: ``limit``): a smaller train set bounds the calls to slow agents
    train_limit: int = 0

    def check(self) -> None:
        """Raise :class:`TrainError` on values that cannot run."""
        if self.generations < 1 or self.popsize < 2 or not self.sigma0 > 0 or self.batch < 0 or self.limit < 0 \
                or self.project < 0 or self.train_limit < 0 or self.basis not in ("random", "pca") \
                or (self.basis == "pca" and self.project < 2):
            raise TrainError(f"need generations >= 1, popsize >= 2, sigma0 > 0, batch, limit, project >= 0, "
                             f"basis random or pca (pca: project >= 2); got {self.generations}, {self.popsize}, "
                             f"{self.sigma0}, {self.batch}, {self.limit}, {self.project}, {self.basis}")


def split_tasks(suite: TaskSuite, split: str, limit: int = 0) -> list[Task]:
    """The tasks of ``split``, at most ``limit`` per family (0: all)."""
    tasks = suite.split(split)
    if limit <= 0:
        return tasks
    out: list[Task] = []
    for f in FAMILIES:
        out += [t for t in tasks if t.family == f][:limit]
    return out


def candidates_sha256(xs: Sequence[NDArray[np.floating]]) -> str:
    """sha256 of a generation's candidates (float64 bytes, in ask order)."""
    h = hashlib.sha256()
    for x in xs:
        h.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    return h.hexdigest()


@dataclass
class TrainState:
    """What the checkpoint holds."""

    config: dict[str, Any]
    optimizer: Any
    generation: int = 0
    best_x: NDArray[np.float64] | None = None
    best_key: tuple[float, float] = (-1.0, float("-inf"))
    best_generation: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    evaluations: int = 0
    memo: dict[str, Any] = field(default_factory=dict)
    suite_fingerprint: str = ""
    rng_state: Any = None
    scale: NDArray[np.float64] | None = None
    format: int = FORMAT
    #: USD spent on agent calls by this run so far (every process, every resume), and the limit (None: none)
    spent_usd: float = 0.0
    budget_usd: float | None = None
    #: ``W = Z P`` basis of a ``basis="pca"`` run (``None`` otherwise: a random basis is rebuilt from the seed)
    projection: NDArray[np.float64] | None = None


def save_state(run_dir: Path, state: TrainState) -> None:
    """Write the checkpoint atomically (temp file + ``os.replace``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # cmaes drops its random generator when pickled (a fresh, unseeded one after unpickling): keep its state
    state.rng_state = state.optimizer._rng.get_state()
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    with tmp.open("wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / CHECKPOINT)


def load_state(run_dir: Path) -> TrainState:
    """Read ``RUN_DIR/checkpoint.pkl`` (:class:`TrainError` when missing or unreadable)."""
    p = run_dir / CHECKPOINT
    if not p.is_file():
        raise TrainError(f"{p}: no checkpoint; start a run with `run.py train --run-dir {run_dir}` first")
    try:
        with p.open("rb") as f:
            state = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as e:
        raise TrainError(f"{p}: unreadable checkpoint ({e})") from None
    if not isinstance(state, TrainState) or state.format != FORMAT:
        raise TrainError(f"{p}: not a checkpoint of this trainer (format {FORMAT})")
    state.optimizer._rng.set_state(state.rng_state)
    return state


def plot(run_dir: Path, history: Sequence[dict[str, Any]]) -> Path:
    """Write ``progress.png``: best/mean fitness and valid/test accuracy per generation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [h["generation"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(gens, [h["best_fitness"] for h in history], label="best fitness")
    a.plot(gens, [h["mean_fitness"] for h in history], label="mean fitness")
    a.set_xlabel("generation")
    a.set_title("train fitness")
    a.legend()
    b.plot(gens, [100 * h["valid_accuracy"] for h in history], label="valid (mean vector)")
    if all(h.get("test_accuracy") is not None for h in history):
        b.plot(gens, [100 * h["test_accuracy"] for h in history], label="test (held out)")
    b.set_xlabel("generation")
    b.set_ylabel("accuracy %")
    b.set_title("held-out accuracy")
    b.legend()
    fig.tight_layout()
    out = run_dir / "progress.png"
    tmp = run_dir / ".progress.png.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, out)
    return out


Publish = Callable[[dict[str, Any]], Awaitable[None]]


class BatchEvaluator(Protocol):
    """Scores vectors on tasks somewhere else (:class:`~crucible.training.bus_eval.BusEvaluator`)."""

    stats: Any

    async def evaluate_many(self, vectors: Sequence[NDArray[np.floating]],
                            tasks: Sequence[Task]) -> list[Evaluation]:
        """One :class:`Evaluation` per vector, episodes in task order."""
        ...


class Trainer:
    """One training run in ``run_dir`` (see the module docs)."""

    def __init__(self, run_dir: Path, config: TrainConfig, runner: EpisodeRunner, suite: TaskSuite, *,
                 state: TrainState | None = None, publish: Publish | None = None, progress: bool = True,
                 evaluator: BatchEvaluator | None = None, budget_usd: float | None = None) -> None:
        from cmaes import SepCMA

        config.check()
        self.run_dir = Path(run_dir)
        self.config = config
        self.runner = runner
        #: where candidates are scored: ``None`` in this process (``runner``), else e.g. a
        #: :class:`~crucible.training.bus_eval.BusEvaluator` (the same episodes as jobs on the bus)
        self.evaluator = evaluator
        self.layout = VectorLayout.from_dict(config.layout)
        if runner.layout != self.layout:
            raise TrainError(f"the evaluator serves layout {runner.layout.name}, the config {self.layout.name}")
        self.suite = suite
        self.train = split_tasks(suite, "train", config.train_limit or config.limit)
        self.valid = split_tasks(suite, "valid", config.limit)
        self.test = split_tasks(suite, "test", config.limit)
        self.publish = publish
        self.progress = progress
        if config.project and not self.layout.head_only:
            raise TrainError("project (a random low-rank head search) applies to head-only layouts only")
        rows, cols = self.layout.head_shape
        self.projection = None
        if config.project and config.basis == "random":
            # W = Z @ P: the optimizer searches Z {rows, k}; P {k, hidden} is fixed, seeded by the run's seed
            self.projection = np.random.default_rng([config.seed, 7919]).standard_normal((config.project, cols))
        elif config.project:  # basis pca: computed from the train states when the run starts (kept in the state)
            self.projection = state.projection if state is not None else None
        dim = rows * config.project if config.project else self.layout.size
        if state is None:
            opt = SepCMA(mean=np.zeros(dim), sigma=config.sigma0, seed=config.seed,
                         population_size=config.popsize)
            state = TrainState(config=asdict(config), optimizer=opt, suite_fingerprint=suite.fingerprint)
        elif state.suite_fingerprint != suite.fingerprint:
            raise TrainError("the task suite differs from the one this run started with (fingerprint "
                             f"{state.suite_fingerprint[:12]} vs {suite.fingerprint[:12]})")
        self.state = state
        if budget_usd is not None:
            if budget_usd < 0:
                raise TrainError(f"the spend budget must be >= 0 USD, got {budget_usd}")
            state.budget_usd = budget_usd
        #: spend so far and its limit; charged by the runner's agent calls (or the bus replies)
        self.meter = SpendMeter(limit_usd=state.budget_usd, spent_usd=state.spent_usd)

    @classmethod
    def resume(cls, run_dir: Path, runner: EpisodeRunner, suite: TaskSuite, *, generations: int | None = None,
               publish: Publish | None = None, progress: bool = True,
               evaluator: BatchEvaluator | None = None, budget_usd: float | None = None) -> Trainer:
        """Continue the run in ``run_dir`` from its last finished generation (optionally to more generations)."""
        state = load_state(Path(run_dir))
        config = TrainConfig(**state.config)
        if generations is not None:
            config.generations = generations
            state.config["generations"] = generations
        return cls(Path(run_dir), config, runner, suite, state=state, publish=publish, progress=progress,
                   evaluator=evaluator, budget_usd=budget_usd)

    def vector(self, z: NDArray[np.floating]) -> NDArray[np.float64]:
        """The layout vector of optimizer point ``z`` (itself unless ``project``: ``(Z @ P).ravel()``)."""
        if self.projection is None:
            return np.asarray(z, dtype=np.float64)
        rows = self.layout.head_shape[0]
        return (np.asarray(z, dtype=np.float64).reshape(rows, -1) @ self.projection).ravel()

    def batch(self, generation: int) -> list[Task]:
        """The generation's training tasks (all when ``batch`` is 0), the same for every candidate."""
        if self.config.batch <= 0 or self.config.batch >= len(self.train):
            return self.train
        rng = np.random.default_rng([self.config.seed, generation])
        idx = sorted(rng.choice(len(self.train), size=self.config.batch, replace=False).tolist())
        return [self.train[i] for i in idx]

    async def _evaluate(self, vectors: Sequence[NDArray[np.float64]], tasks: Sequence[Task]) -> list[Evaluation]:
        """Score layout vectors on ``tasks``: in process, or through :attr:`evaluator` with the head's column
        scale applied first (the same head, so the same episodes and the same fitness floats)."""
        if self.evaluator is None:
            self.runner.replies.meter = self.meter
            try:
                return [await self.runner.evaluate(v, tasks) for v in vectors]
            finally:
                self.runner.replies.meter = None
        self.meter.check()
        scale = self.state.scale
        if self.layout.head_only and scale is not None:
            vectors = [(self.layout.head(v) * scale[None, :]).ravel() for v in vectors]
        before = float(getattr(self.evaluator, "spent_usd", 0.0))
        out = await self.evaluator.evaluate_many(vectors, tasks)
        spent = float(getattr(self.evaluator, "spent_usd", 0.0)) - before
        if spent:
            self.meter.add(spent)
        return out

    async def _generation(self) -> dict[str, Any]:
        st, opt = self.state, self.state.optimizer
        gen = st.generation + 1
        start = time.perf_counter()
        tasks = self.batch(gen)
        xs = [opt.ask() for _ in range(opt.population_size)]
        scores = await self._evaluate([self.vector(x) for x in xs], tasks)
        opt.tell([(x, -e.fitness) for x, e in zip(xs, scores, strict=True)])
        mean = self.vector(np.array(opt._mean, dtype=np.float64))
        valid = (await self._evaluate([mean], self.valid))[0]
        test = (await self._evaluate([mean], self.test))[0] if self.config.test_each_generation else None
        evals = len(xs) * len(tasks) + len(self.valid) + (len(self.test) if test else 0)
        key = (valid.accuracy, valid.fitness)
        new_best = key > st.best_key
        if new_best:
            st.best_key, st.best_x, st.best_generation = key, mean.copy(), gen
        seconds = time.perf_counter() - start
        fits = [e.fitness for e in scores]
        record = {"generation": gen, "best_fitness": max(fits), "mean_fitness": float(np.mean(fits)),
                  "best_train_accuracy": max(e.accuracy for e in scores), "valid_accuracy": valid.accuracy,
                  "valid_fitness": valid.fitness, "test_accuracy": test.accuracy if test else None,
                  "new_best": new_best, "sigma": float(opt._sigma),
                  "candidates_sha256": candidates_sha256(xs), "batch": len(tasks), "evaluations": evals,
                  "seconds": round(seconds, 3), "evals_per_s": round(evals / max(seconds, 1e-9), 1)}
        st.generation = gen
        st.history.append(record)
        st.elapsed_s += seconds
        st.evaluations += evals
        st.memo = self.runner.stats() if self.evaluator is None else self.evaluator.stats.to_dict()
        st.spent_usd = self.meter.spent_usd
        record["spent_usd"] = round(st.spent_usd, 6)
        return record

    def _record_spend(self) -> None:
        """After a budget stop: write the spend into the last checkpoint (its generation and optimizer untouched,
        so a resumed run asks the same candidates)."""
        disk = load_state(self.run_dir)
        disk.spent_usd = self.meter.spent_usd
        save_state(self.run_dir, disk)
        self.state.spent_usd = self.meter.spent_usd

    async def run(self, *, stop_after: int | None = None) -> TrainState:
        """Train up to ``config.generations`` (or only ``stop_after`` more generations), checkpointing each."""
        from tqdm import tqdm

        st = self.state
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if st.generation == 0:
            if self.evaluator is None:
                self.runner.warm([*self.train, *self.valid, *self.test])
            if self.config.precondition and self.layout.head_only and st.scale is None:
                st.scale = self.runner.feature_scale(self.train)
        self.runner.scale = st.scale
        if self.config.project and self.config.basis == "pca" and st.projection is None:
            st.projection = self.runner.pca_basis(self.train, self.config.project)
        if self.config.basis == "pca":
            self.projection = st.projection
        if not (self.run_dir / CHECKPOINT).exists():
            save_state(self.run_dir, st)  # generation 0: a run stopped in its first generation can resume
        todo = self.config.generations - st.generation
        if stop_after is not None:
            todo = min(todo, stop_after)
        bar = tqdm(total=self.config.generations, initial=st.generation, disable=not self.progress,
                   desc="train", unit="gen")
        try:
            for _ in range(max(todo, 0)):
                try:
                    record = await self._generation()
                except BudgetExhausted:
                    self._record_spend()
                    raise
                save_state(self.run_dir, st)
                (self.run_dir / "history.json").write_text(json.dumps(st.history, indent=1))
                plot(self.run_dir, st.history)
                bar.update(1)
                bar.set_postfix(best=f"{record['best_fitness']:.3f}", valid=f"{record['valid_accuracy']:.3f}")
                if self.publish is not None:
                    await self.publish(record)
        finally:
            bar.close()
        return st

    async def finish(self) -> dict[str, Any]:
        """Score the best-on-valid vector on the test split and export it (see :func:`export`)."""
        st = self.state
        if st.best_x is None:
            raise TrainError("no generation has finished; nothing to export")
        self.runner.scale = st.scale
        try:
            test = (await self._evaluate([st.best_x], self.test))[0]
            valid = (await self._evaluate([st.best_x], self.valid))[0]
        except BudgetExhausted:
            self._record_spend()
            raise
        st.spent_usd = self.meter.spent_usd
        by_family = {f: float(np.mean([e.correct for e in test.episodes if e.family == f]))
                     for f in FAMILIES if any(e.family == f for e in test.episodes)}
        self.runner.scale = st.scale
        return export(self.run_dir, self.layout, st, valid_accuracy=valid.accuracy, test_accuracy=test.accuracy,
                      test_by_family=by_family)


def _role_pack_id() -> str:
    """The role pack the episodes inject with (a deployment serving the vector must ask for the same one)."""
    from actors.role_injector.packs import DEFAULT_PACK

    return str(DEFAULT_PACK.pack_id)


def export(run_dir: Path, layout: VectorLayout, state: TrainState, *, valid_accuracy: float,
           test_accuracy: float, test_by_family: dict[str, float] | None = None) -> dict[str, Any]:
    """Write the best vector and ``manifest.json``; return the manifest.

    Head-only layouts: ``head.npy`` (float32 ``{n_agents + 3, hidden}``; ``model_runtime.head_path`` loads it).
    Layouts with SVF offsets: ``vector.npy`` (float64) and ``vector.safetensors`` (one F32 tensor under
    ``trinity_router_es_vector``), in TRINITY vector order (offsets, then the head row-major). A head-only run
    with ``export_layout="sakana"`` writes both: ``head.npy`` and the Sakana-layout vector with zero offsets
    (the backbone as trained; ``head_path`` takes its last ``rows * hidden`` values). Vectors come with
    ``artifact_pin.json`` (``run.py verify RUN_DIR`` checks every file against it).
    """
    from safetensors.numpy import save_file

    from crucible.router_vector import SAFETENSORS_KEY

    assert state.best_x is not None
    x = np.asarray(state.best_x, dtype=np.float64)
    files: dict[str, str] = {}
    c = state.config
    exported = layout
    if layout.head_only:
        head = layout.head(x) if state.scale is None else layout.head(x) * state.scale[None, :]
        np.save(run_dir / "head.npy", head.astype(np.float32))
        files["head"] = "head.npy"
        if c.get("export_layout") == "sakana":  # zero SVF offsets (the backbone unchanged), then the head
            from crucible.training.setup import layout_for

            exported = layout_for("sakana", c["backbone"], c["routing_profile"], layout.n_agents)
            x = np.concatenate([np.zeros(exported.svf_size), head.ravel()])
    if not exported.head_only:
        np.save(run_dir / "vector.npy", x)
        save_file({SAFETENSORS_KEY: x.astype(np.float32)}, str(run_dir / "vector.safetensors"))
        files["vector_npy"], files["vector_safetensors"] = "vector.npy", "vector.safetensors"
    digests = {name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest() for name in files.values()}
    manifest = {"kind": "trinity-trained-router", "layout": layout.to_dict(), "files": files, "sha256": digests,
                "exported_layout": exported.to_dict(), "project": c.get("project", 0), "basis": c.get("basis"),
                "suite_fingerprint": state.suite_fingerprint, "suite_seed": c["suite_seed"],
                "routing_profile": c["routing_profile"], "route_rule": c["route_rule"], "seed": c["seed"],
                "generations": state.generation, "best_generation": state.best_generation,
                "popsize": c["popsize"], "sigma0": c["sigma0"], "weights": c["weights"], "backbone": c["backbone"],
                "agents": c["agents"], "agent_mask": c["agent_mask"], "max_turns": c["max_turns"],
                "agent_max_tokens": c["agent_max_tokens"], "dtype": "float32", "role_pack": _role_pack_id(),
                "valid_accuracy": valid_accuracy, "test_accuracy": test_accuracy,
                "test_accuracy_by_family": test_by_family or {}, "train_seconds": round(state.elapsed_s, 1),
                "evaluations": state.evaluations, "memo": state.memo, "spent_usd": round(state.spent_usd, 6),
                "budget_usd": state.budget_usd}
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if not exported.head_only:  # the Sakana bundle's pin: every exported file with its sha256
        from crucible.registry.pins import build_pin, write_pin

        write_pin(build_pin(run_dir, ["manifest.json", *files.values()], repo_id="local/trinity-trained",
                            revision=f"gen{state.best_generation}"), run_dir / "artifact_pin.json")
    return manifest
