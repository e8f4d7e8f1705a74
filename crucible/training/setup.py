"""Build what a training run needs from its :class:`~crucible.training.trainer.TrainConfig`: the router
backbone (an engine), the agent pool, the episode runner. ``run.py train`` and ``--resume`` both use it, so a
resumed run rebuilds exactly the evaluator it started with.

Backbones (``config.backbone["kind"]``):

* ``tiny`` — the tiny synthetic Qwen3 (hidden 64, random weights): fast, features are noise-like; tests.
* ``synthetic`` — the full-size synthetic Qwen3-0.6B (random weights; hidden 1024).
* ``dir`` — any Qwen3 or Llama-family checkpoint folder (``backbone["path"]``), e.g. the converted real
  SmolLM2-135M-Instruct under ``~/.cache/trinity-nats/smollm2/`` (hidden 576): meaningful features.

Agents (``config.agents``): ``offline-world`` (all seven agents of the preset; SmolLM2 calls take seconds),
``offline-world-tools`` (the tool agents only; ids 0 and 4, SmolLM2, are masked and never called), or
``configured`` (the ``provider_agents`` settings of the process: HTTP providers such as OpenAI-compatible
servers, priced per token; keys stay in each process's own settings and never travel in a job).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crucible.training.episodes import AdapterRouter, EpisodeRunner, HiddenMemo
from crucible.training.fitness import FitnessWeights
from crucible.training.layout import VectorLayout, block_sizes, make_layout

AGENT_SETS = ("offline-world", "offline-world-tools", "configured")
BACKBONES = ("tiny", "synthetic", "dir")


class SetupError(Exception):
    """The configured backbone or agents cannot be built (message says what to change)."""


def find_smollm2(cache_dir: str | Path = "~/.cache/trinity-nats/smollm2") -> Path | None:
    """The converted SmolLM2 checkpoint folder in the cache (``None`` when it was never built)."""
    root = Path(cache_dir).expanduser()
    found = sorted(p.parent for p in root.glob("*/config.json")) if root.is_dir() else []
    return found[0] if found else None


def load_engine(backbone: dict[str, Any], routing_profile: str) -> Any:
    """A :class:`RouterEngine` for ``backbone`` (base adapter, random head: the trainer supplies heads).

    Torch runs on ``backbone["threads"]`` threads (default 1): the trainer's forwards are small, and on a busy
    machine several spinning threads made each one ~25x slower than one thread (measured on 2 shared cores).
    """
    threads = int(backbone.get("threads", 1))
    from actors.model_runtime.engine import RouterEngine
    from actors.model_runtime.errors import ModelRuntimeError
    from config.model_runtime import ModelRuntimeSettings

    kind = backbone.get("kind", "tiny")
    try:
        if kind == "tiny":
            s = ModelRuntimeSettings(checkpoint_preset="qwen3-tiny-synthetic", routing_profile=routing_profile,
                                     dtype="float32", num_threads=threads)
        elif kind == "synthetic":
            s = ModelRuntimeSettings(checkpoint_preset="qwen3-0.6b-synthetic", routing_profile=routing_profile,
                                     dtype="float32", num_threads=threads)
        elif kind == "dir":
            path = backbone.get("path")
            if not path or not (Path(path).expanduser() / "config.json").is_file():
                raise SetupError(f"backbone dir {path!r}: no config.json there")
            s = ModelRuntimeSettings(checkpoint_dir=str(Path(path).expanduser()), routing_profile=routing_profile,
                                     dtype="float32", num_threads=threads)
        else:
            raise SetupError(f"unknown backbone kind {kind!r}; choose one of {', '.join(BACKBONES)}")
        return RouterEngine.load(s)
    except (ModelRuntimeError, ValueError, OSError) as e:
        raise SetupError(f"cannot load the {kind} backbone: {e}") from None


@dataclass
class Built:
    """The pieces of a run; ``await close()`` when done."""

    runner: EpisodeRunner
    engine: Any
    pool: Any

    async def close(self) -> None:
        """Stop the agent pool."""
        await self.pool.aclose()


def agent_settings(agents: str, providers: Any = None) -> Any:
    """The :class:`~config.provider_agents.ProviderAgentsSettings` of agent set ``agents`` (``configured``:
    ``providers``, the process's own settings)."""
    from config.provider_agents import ProviderAgentsSettings, ProviderKind

    if agents not in AGENT_SETS:
        raise SetupError(f"unknown agents {agents!r}; choose one of {', '.join(AGENT_SETS)}")
    if agents == "configured":
        if providers is None:
            raise SetupError("agents 'configured' need the provider_agents settings of this process (set "
                             "provider_agents.providers/agents in the TOML file or the environment)")
        return providers
    s = ProviderAgentsSettings.offline_world()
    if agents == "offline-world-tools":
        s = ProviderAgentsSettings(providers=[p for p in s.providers if p.kind is not ProviderKind.LOCAL],
                                   agents=[a for a in s.agents
                                           if s.provider(a.provider).kind is not ProviderKind.LOCAL],
                                   local=s.local)
    return s


def agent_pool(agents: str, providers: Any = None) -> tuple[Any, set[int], list[int]]:
    """The provider pool for ``agents``, the deterministic agent ids, and the ids that may be routed to.

    Deterministic (replies memoized): tool agents, and every other agent whose temperature is unset or 0 (the
    trainer's calls ask for temperature 0; an agent's own temperature overrides it)."""
    from actors.provider_agents.pool import AgentPool

    s = agent_settings(agents, providers)
    kinds = {p.name: p.kind for p in s.providers}
    deterministic = {a.agent_id for a in s.agents if kinds[a.provider].is_tool or not (a.temperature or 0.0) > 0}
    return AgentPool.from_settings(s), deterministic, sorted(a.agent_id for a in s.agents)


async def build(config: Any, providers: Any = None) -> Built:
    """Engine, pool and runner for ``config`` (a :class:`TrainConfig`); the layout must fit the engine.
    ``providers``: the process's ``provider_agents`` settings (used by ``agents = "configured"``)."""
    engine = load_engine(config.backbone, config.routing_profile)
    hidden = int(engine.model.config.hidden_size)
    layout = VectorLayout.from_dict(config.layout)
    if layout.hidden != hidden:
        raise SetupError(f"layout {layout.name} is {layout.hidden} wide; the backbone's hidden size is {hidden}")
    pool, deterministic, served = agent_pool(config.agents, providers)
    mask = sorted(set(served) & set(config.agent_mask)) if config.agent_mask is not None else served
    await pool.start()
    runner = EpisodeRunner(layout, pool.call, deterministic=deterministic,
                           features=HiddenMemo(engine) if layout.head_only else None,
                           adapter_router=None if layout.head_only else AdapterRouter(engine),
                           routing_profile=config.routing_profile, route_rule=config.route_rule,
                           max_turns=config.max_turns, agent_mask=mask, agent_max_tokens=config.agent_max_tokens,
                           weights=FitnessWeights(**config.weights))
    return Built(runner, engine, pool)


def layout_for(preset: str, backbone: dict[str, Any], routing_profile: str, n_agents: int = 7) -> VectorLayout:
    """The layout ``preset`` sized for ``backbone`` (reads its config only)."""
    import json

    kind = backbone.get("kind", "tiny")
    if kind == "dir":
        cfg = json.loads((Path(backbone["path"]).expanduser() / "config.json").read_text())
    else:
        from actors.model_runtime.checkpoints import preset_config

        cfg = preset_config("qwen3-tiny-synthetic" if kind == "tiny" else "qwen3-0.6b-synthetic").to_dict()
    hidden, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    return make_layout(preset, n_agents=n_agents, hidden=hidden, num_layers=layers, sizes=block_sizes(cfg))
