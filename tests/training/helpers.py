"""Shared pieces of the trainer tests: a keyword feature map (fast, exact) and the tool agents' pool."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from crucible.training.episodes import EpisodeRunner
from crucible.training.layout import make_layout
from crucible.training.setup import agent_pool
from schemas.common import Message

FAMILY_WORDS = {"arithmetic": ("plus", "minus", "times", "divided", "+", "*", "/"),
                "geography": ("capital", "continent", "currency", "country"),
                "text": ("reverse", "letters", "letter", "alphabetical", "upper", "sort")}


class KeywordFeatures:
    """Features of a router text: a bias, one indicator per family keyword set, and the number of replies.

    Stands in for a backbone whose states separate the task families, so a head that routes perfectly exists."""

    hidden = 6

    def __init__(self) -> None:
        self.calls = 0

    def text(self, messages: Sequence[Message]) -> str:
        return "\n".join(f"{m.role}: {m.content}" for m in messages)

    def states(self, texts: Sequence[str]) -> NDArray[np.float64]:
        self.calls += len(texts)
        out = []
        for t in texts:
            query = t.split("\n")[0].lower()
            fam = [float(any(w in query for w in words)) for words in FAMILY_WORDS.values()]
            out.append([1.0, *fam, 0.0, float(t.count("\nassistant:"))])
        return np.array(out, dtype=np.float64)


async def tool_runner(features: object | None = None, **kw: object) -> tuple[EpisodeRunner, object]:
    """A head-only runner over the tool agents (ids 1, 2, 3, 5, 6) with ``features`` (default keyword)."""
    pool, deterministic, served = agent_pool("offline-world-tools")
    await pool.start()
    feats = features or KeywordFeatures()
    layout = make_layout("head-only", n_agents=7, hidden=feats.hidden)  # type: ignore[attr-defined]
    runner = EpisodeRunner(layout, pool.call, deterministic=deterministic, features=feats,  # type: ignore[arg-type]
                           agent_mask=served, **kw)  # type: ignore[arg-type]
    return runner, pool
