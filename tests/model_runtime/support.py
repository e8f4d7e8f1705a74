"""Helpers of the model runtime tests: the reference path and the engine factory type."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import Qwen3ForCausalLM

from actors.model_runtime.engine import RouterEngine

EngineFactory = Callable[..., RouterEngine]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two vectors, computed in float64."""
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


class Reference:
    """The plain reference path: Qwen3ForCausalLM, output_hidden_states, ``hidden_states[-1][0, -2]``."""

    def __init__(self, path: Path) -> None:
        self.model = Qwen3ForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        self.model.train(False)

    @torch.inference_mode()
    def hidden(self, ids: list[int]) -> torch.Tensor:
        """Final-norm state at position -2 of the full token sequence."""
        out = self.model(torch.tensor([ids]), output_hidden_states=True, logits_to_keep=1)
        state: torch.Tensor = out.hidden_states[-1][0, -2]
        return state


def argmaxes(logits: list[float], num_agents: int = 7) -> tuple[int, int]:
    """Independent agent and role argmax of a head output."""
    agents, roles = logits[:num_agents], logits[num_agents:]
    return max(range(len(agents)), key=agents.__getitem__), max(range(len(roles)), key=roles.__getitem__)
