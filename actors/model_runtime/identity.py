"""The base model identity a runtime reports: a digest of the weights it serves, not a path.

Placement matches runtimes by ``(backend, base model, adapter)``. A path says nothing about the weights
behind it (two hosts mount different files at one path; one file is reachable by many paths), so the
identity is the sha256 over the backbone's architecture, every parameter (name, dtype, shape, bytes, in
name order) and the base routing head. Equal weights give equal identities on every host; synthetic
checkpoints of different seeds differ. Hashing runs once at start (about a second per GB on CPU).

Example:
    >>> base_model_identity(engine.model, engine.head.weight)  # doctest: +SKIP
    'qwen3-3f9c0c6d2a1b4e5f8a7b6c5d4e3f2a1b'
"""

from __future__ import annotations

import hashlib
import json

import torch

from crucible.hashing import update_with_tensor

#: Config keys that describe a build, not the architecture (left out of the identity).
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "trinity_synthetic",
                         "architectures", "_commit_hash", "use_cache")


def base_model_identity(model: torch.nn.Module, head_weight: torch.Tensor, *, digits: int = 32) -> str:
    """``<model_type>-<sha256 prefix>`` of the architecture, every parameter of ``model`` and the head.

    Tied parameters are hashed once (``state_dict`` keeps one entry per name; identical storage under two
    names hashes the same bytes twice, which is still deterministic).
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    arch = {k: v for k, v in (config.to_dict() if config is not None else {}).items()
            if k not in _VOLATILE_CONFIG_KEYS}
    digest.update(json.dumps(arch, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        update_with_tensor(digest, tensor)
    digest.update(f"\0head\0{tuple(head_weight.shape)}\0".encode())
    update_with_tensor(digest, head_weight.to(torch.float32))
    model_type = str(arch.get("model_type") or "model")
    return f"{model_type}-{digest.hexdigest()[:digits]}"
