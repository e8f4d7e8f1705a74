"""Attention for packed batches: each transcript of a packed row attends only to itself, with no dense mask.

The engine packs fresh transcripts of a batch into one row (no padding). A dense block-diagonal causal mask
over the whole row makes PyTorch's SDPA take its generic masked path and compute every cross-transcript
score only to throw it away. Instead the engine passes a :class:`PackedSegments` in place of the mask, and
:func:`packed_sdpa_forward` runs SDPA with ``is_causal`` on each segment separately (the fused causal
kernel), then concatenates the outputs. Anything else (a real mask, ``None``, a cached continuation) goes
to transformers' own SDPA attention unchanged.

The function is registered with transformers under :data:`ATTN_IMPLEMENTATION` (together with SDPA's mask
builder, so un-packed calls build exactly the masks SDPA would); the engine loads the backbone with it.

Example:
    >>> mask = {"full_attention": PackedSegments((5, 7))}  # doctest: +SKIP
    >>> model(input_ids=ids, attention_mask=mask, position_ids=pos)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

#: The ``attn_implementation`` name the engine loads Qwen3 with.
ATTN_IMPLEMENTATION = "trinity_packed_sdpa"


@dataclass(frozen=True)
class PackedSegments:
    """Lengths of the transcripts packed one after another into a single row (they sum to its length)."""

    lengths: tuple[int, ...]


class PackedAttentionError(RuntimeError):
    """A packed row's segments do not match the attention inputs (an engine bug, not bad input)."""


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA per packed segment when ``attention_mask`` is a :class:`PackedSegments`, plain SDPA otherwise.

    Shapes as transformers' attention functions: ``query`` ``[1, heads, T, d]``, ``key``/``value``
    ``[1, kv_heads, T, d]``; returns ``[1, T, heads, d]``.
    """
    if not isinstance(attention_mask, PackedSegments):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    total = sum(attention_mask.lengths)
    if query.shape[0] != 1 or query.shape[2] != total or key.shape[2] != total:
        raise PackedAttentionError(f"packed segments cover {total} tokens but attention got query "
                                   f"{tuple(query.shape)} and key {tuple(key.shape)}; packed rows must be fresh "
                                   "(no cached prefix) and batch size 1")
    outputs = []
    start = 0
    for n in attention_mask.lengths:
        end = start + n
        out, _ = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end],
                                        value[:, :, start:end], None, dropout=dropout, scaling=scaling, **kwargs)
        outputs.append(out)
        start = end
    return torch.cat(outputs, dim=1), None


AttentionInterface.register(ATTN_IMPLEMENTATION, packed_sdpa_forward)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
