"""Vector layouts the trainer optimizes: the routing head, optionally preceded by SVF offsets.

A layout is ``svf_blocks`` (``(parameter name, length)`` in vector order, one offset per singular value) then
the head ``{n_agents + 3, hidden}`` row-major, exactly as a TRINITY vector (:mod:`crucible.router_vector`).

Presets:

* ``head-only`` — just the head (``(n_agents + 3) * hidden`` values). The backbone is untouched, so the hidden
  state of a transcript does not depend on the candidate: the evaluator computes it once per router text.
* ``sakana`` — Sakana's layout: nine blocks of ``hidden`` offsets (``embed_tokens``, layer ``L``'s q/k/v/o and
  gate/up/down projections, ``lm_head``; ``L`` = the second-to-last layer, 26 on Qwen3-0.6B) then the head.

Example:
    >>> lay = make_layout("head-only", n_agents=7, hidden=64)
    >>> lay.size, lay.head_shape
    (640, (10, 64))
    >>> make_layout("sakana", n_agents=7, hidden=1024, num_layers=28).size
    19456
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

PRESETS: tuple[str, ...] = ("head-only", "sakana")
_SAKANA_LAYER_MATRICES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class LayoutError(ValueError):
    """A layout cannot be built or a vector does not fit it."""


@dataclass(frozen=True)
class VectorLayout:
    """``svf_blocks`` then a head of ``n_agents + 3`` rows over ``hidden`` columns."""

    name: str
    n_agents: int
    hidden: int
    svf_blocks: tuple[tuple[str, int], ...] = ()

    @property
    def head_shape(self) -> tuple[int, int]:
        """Rows (agents then Worker, Thinker, Verifier) and columns of the head."""
        return (self.n_agents + 3, self.hidden)

    @property
    def svf_size(self) -> int:
        """Number of SVF offsets (0 for ``head-only``)."""
        return sum(n for _, n in self.svf_blocks)

    @property
    def size(self) -> int:
        """Length of the whole vector."""
        return self.svf_size + self.head_shape[0] * self.head_shape[1]

    @property
    def head_only(self) -> bool:
        """True when the vector leaves the backbone untouched."""
        return not self.svf_blocks

    def check(self, x: NDArray[np.floating]) -> None:
        """Raise :class:`LayoutError` unless ``x`` is a finite 1-D vector of :attr:`size` values."""
        if x.ndim != 1 or x.shape[0] != self.size:
            raise LayoutError(f"layout {self.name} takes a vector of {self.size} values, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise LayoutError(f"layout {self.name}: the vector holds NaN or inf")

    def head(self, x: NDArray[np.floating]) -> NDArray[np.float64]:
        """The head matrix ``{n_agents + 3, hidden}`` of vector ``x``."""
        self.check(x)
        return np.asarray(x[self.svf_size:], dtype=np.float64).reshape(self.head_shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (for manifests and checkpoints)."""
        return {"name": self.name, "n_agents": self.n_agents, "hidden": self.hidden, "size": self.size,
                "svf_blocks": [[n, k] for n, k in self.svf_blocks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VectorLayout:
        """Inverse of :meth:`to_dict`."""
        return cls(str(d["name"]), int(d["n_agents"]), int(d["hidden"]),
                   tuple((str(n), int(k)) for n, k in d.get("svf_blocks", [])))


def sakana_blocks(hidden: int, layer: int, sizes: tuple[int, ...] | None = None) -> tuple[tuple[str, int], ...]:
    """Sakana's nine SVF blocks for a backbone of width ``hidden`` adapting layer ``layer``.

    A block holds one offset per singular value, ``min(rows, cols)`` of its matrix: ``hidden`` for all nine on
    Qwen3-0.6B, but fewer where k/v projections are narrower than ``hidden`` (grouped-query attention with few
    KV heads: SmolLM2-135M's are 192 x 576). ``sizes`` gives the nine counts (default: ``hidden`` each); see
    :func:`block_sizes`."""
    names = ["model.embed_tokens.weight",
             *(f"model.layers.{layer}.{m}.weight" for m in _SAKANA_LAYER_MATRICES), "lm_head.weight"]
    counts = sizes if sizes is not None else (hidden,) * len(names)
    if len(counts) != len(names):
        raise LayoutError(f"layout sakana has {len(names)} blocks, got {len(counts)} sizes")
    return tuple(zip(names, counts, strict=True))


def block_sizes(cfg: dict[str, Any]) -> tuple[int, ...]:
    """The nine SVF block lengths (``min(rows, cols)``) of a Qwen3/Llama config dict (``config.json`` keys)."""
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    kv = int(cfg.get("num_key_value_heads") or heads) * head_dim
    q = heads * head_dim
    inter = int(cfg["intermediate_size"])
    vocab = int(cfg["vocab_size"])
    return (min(vocab, hidden), min(q, hidden), min(kv, hidden), min(kv, hidden), min(hidden, q),
            min(inter, hidden), min(inter, hidden), min(hidden, inter), min(vocab, hidden))


def make_layout(preset: str, *, n_agents: int, hidden: int, num_layers: int | None = None,
                layer: int | None = None, sizes: tuple[int, ...] | None = None) -> VectorLayout:
    """The layout ``preset`` (:data:`PRESETS`) for a backbone of width ``hidden``.

    ``sakana`` adapts ``layer`` (default: ``num_layers - 2``, Sakana's layer 26 of 28); ``sizes``: its nine
    block lengths (:func:`block_sizes`; default ``hidden`` each, right for Qwen3-0.6B).
    """
    if n_agents < 1 or hidden < 1:
        raise LayoutError(f"n_agents and hidden must be >= 1, got {n_agents} and {hidden}")
    if preset == "head-only":
        return VectorLayout("head-only", n_agents, hidden)
    if preset == "sakana":
        if layer is None:
            if num_layers is None or num_layers < 2:
                raise LayoutError("layout sakana needs num_layers >= 2 (or an explicit layer)")
            layer = num_layers - 2
        return VectorLayout("sakana", n_agents, hidden, sakana_blocks(hidden, layer, sizes))
    raise LayoutError(f"unknown layout {preset!r}; choose one of {', '.join(PRESETS)}")
