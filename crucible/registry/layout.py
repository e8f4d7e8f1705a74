"""TRINITY's SVF layout for any Qwen3 checkpoint: which nine matrices, their shapes and offset ranges.

TRINITY adapts ``model.embed_tokens.weight``, layer ``L``'s seven attention/MLP projections and
``lm_head.weight`` (``L`` = 26 for Qwen3-0.6B's 28 layers, i.e. the second-to-last layer). The same rule
on a smaller Qwen3 gives a layout of the same form (used by tests on tiny checkpoints).

Example:
    >>> slots = trinity_slots({"model.embed_tokens.weight": (8, 4), "lm_head.weight": (8, 4),
    ...     **{f"model.layers.0.{p}.weight": (4, 4) for p in PROJECTIONS}}, num_layers=2)
    >>> [(s[0], s[2], s[3]) for s in slots][:2]
    [('model.embed_tokens.weight', 0, 4), ('model.layers.0.self_attn.q_proj.weight', 4, 8)]
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from crucible.registry.errors import ExportError
from crucible.router_vector import Slot

#: The seven projections of the adapted layer, in the trained vector's order.
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_ELIXIR = {"self_attn.q_proj": "self_attention.query", "self_attn.k_proj": "self_attention.key",
           "self_attn.v_proj": "self_attention.value", "self_attn.o_proj": "self_attention.output",
           "mlp.gate_proj": "ffn.gate", "mlp.up_proj": "ffn.intermediate", "mlp.down_proj": "ffn.output"}


def adapted_layer(num_layers: int) -> int:
    """The layer TRINITY adapts: the second-to-last (26 of Qwen3-0.6B's 28); 0 for a one-layer model."""
    return max(num_layers - 2, 0)


def trinity_names(num_layers: int) -> tuple[str, ...]:
    """The nine adapted matrices (HF ``Qwen3ForCausalLM`` names) in vector order."""
    layer = adapted_layer(num_layers)
    return ("model.embed_tokens.weight", *(f"model.layers.{layer}.{p}.weight" for p in PROJECTIONS),
            "lm_head.weight")


def trinity_slots(shapes: Mapping[str, tuple[int, int]], num_layers: int) -> tuple[Slot, ...]:
    """Slots ``(name, shape, start, end)`` with ``min(shape)`` offsets per matrix, contiguous from 0.

    Raises:
        ExportError: a matrix is missing from ``shapes``.
    """
    slots: list[Slot] = []
    cursor = 0
    for name in trinity_names(num_layers):
        if name not in shapes:
            raise ExportError(f"{name}: not in the checkpoint; TRINITY's layout needs it")
        rows, cols = shapes[name]
        k = min(rows, cols)
        slots.append((name, (rows, cols), cursor, cursor + k))
        cursor += k
    return tuple(slots)


def elixir_name(source_name: str) -> str:
    """The Elixir/Axon port's parameter name (used in bundle file names), e.g.
    ``model.layers.26.mlp.up_proj.weight`` -> ``decoder.blocks.26.ffn.intermediate.kernel``."""
    if source_name == "model.embed_tokens.weight":
        return "embedder.token_embedding.kernel"
    if source_name == "lm_head.weight":
        return "language_modeling_head.output.kernel"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight", source_name)
    if m is None:
        raise ExportError(f"{source_name}: no Elixir name for this tensor")
    return f"decoder.blocks.{m.group(1)}.{_ELIXIR[m.group(2)]}.kernel"
