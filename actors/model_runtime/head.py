"""TRINITY's routing head: a bias-free linear ``{10, 1024}`` applied to one hidden state, in float32.

``logits[:num_agents]`` are agent logits, the rest role logits in the raw order Worker, Thinker, Verifier.

Example:
    >>> import torch
    >>> from schemas.sakana import HeadSpec
    >>> head = RoutingHead.random(HeadSpec(cols=8), seed=0)
    >>> agents, roles = head.split(head.apply(torch.ones(1, 8)))
    >>> (len(agents[0]), len(roles[0]))
    (7, 3)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from actors.model_runtime.errors import HeadShapeMismatch
from schemas.sakana import HeadSpec


class RoutingHead:
    """The head's weights (float32, ``{rows, cols}``) and their spec."""

    def __init__(self, weight: torch.Tensor, spec: HeadSpec, source: str = "memory") -> None:
        expected = (spec.rows, spec.cols)
        if tuple(weight.shape) != expected:
            raise HeadShapeMismatch(tuple(weight.shape), expected, source)
        if not bool(torch.isfinite(weight).all()):
            raise HeadShapeMismatch(tuple(weight.shape), expected, f"{source} (non-finite values)")
        self.weight = weight.detach().to(torch.float32).contiguous()
        self.spec = spec
        self.source = source

    @classmethod
    def from_array(cls, values: np.ndarray | torch.Tensor, spec: HeadSpec, source: str = "array") -> RoutingHead:
        """Build from a ``{rows, cols}`` matrix, a flat head (``rows*cols``) or a full TRINITY vector.

        A 1-D array longer than the head (the trained vector: SVF offsets, then the head) contributes its
        last ``rows*cols`` values, row-major.
        """
        t = torch.as_tensor(np.asarray(values) if isinstance(values, np.ndarray) else values).to(torch.float32)
        if t.dim() == 1 and t.numel() >= spec.size:
            t = t[t.numel() - spec.size:].reshape(spec.rows, spec.cols)
        return cls(t, spec, source)

    @classmethod
    def load(cls, path: str | Path, spec: HeadSpec) -> RoutingHead:
        """Load from ``.npy`` or ``.safetensors`` (one tensor, or a tensor named ``head``)."""
        p = Path(path)
        if p.suffix == ".npy":
            return cls.from_array(np.load(p, allow_pickle=False), spec, str(p))
        with safe_open(str(p), framework="pt") as f:
            keys = list(f.keys())
            key = "head" if "head" in keys else keys[0] if len(keys) == 1 else None
            if key is None:
                raise HeadShapeMismatch((len(keys),), (spec.rows, spec.cols),
                                        f"{p} (several tensors and none named 'head')")
            return cls.from_array(f.get_tensor(key), spec, str(p))

    @classmethod
    def random(cls, spec: HeadSpec, seed: int = 0) -> RoutingHead:
        """A seeded random head (unit normal; synthetic, for tests and benchmarks)."""
        gen = torch.Generator().manual_seed(seed)
        return cls(torch.randn(spec.rows, spec.cols, generator=gen), spec, f"random(seed={seed})")

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``{batch, rows}`` in float32 for hidden states ``{batch, cols}``."""
        return hidden.to(device=self.weight.device, dtype=torch.float32) @ self.weight.T

    def to(self, device: torch.device) -> RoutingHead:
        """This head with its weights on ``device``."""
        return RoutingHead(self.weight.to(device), self.spec, self.source)

    def split(self, logits: torch.Tensor) -> tuple[list[list[float]], list[list[float]]]:
        """Agent and role logits per row, as Python floats."""
        rows = logits.detach().to("cpu", torch.float64).tolist()
        n = self.spec.num_agents
        return [r[:n] for r in rows], [r[n:] for r in rows]
