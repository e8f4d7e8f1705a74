"""Synthetic Qwen3 checkpoints: real shapes, seeded random weights, labelled synthetic.

Real Qwen3-0.6B weights cannot be downloaded here, so tests, benchmarks and the single-node app run on
checkpoints of the real architecture filled with seeded normal(0, 0.02) weights (RMSNorm weights 1). The
builder never runs transformers' slow default init: it takes the parameter names and shapes from a model
built on the ``meta`` device and fills each tensor from its own generator, seeded by (seed, tensor index),
so the weights do not depend on how the checkpoint is sharded.

A checkpoint directory holds ``config.json`` (with ``trinity_synthetic`` metadata), one or more safetensors
files (``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``)
and ``trinity_checkpoint.json`` describing how it was built.

Example (CLI)::

    python -m actors.model_runtime.checkpoints --preset qwen3-0.6b-synthetic \\
        --cache-dir ~/.cache/trinity-nats/checkpoints
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

from actors.model_runtime.errors import CheckpointError
from config.model_runtime import CHECKPOINT_PRESETS, ModelRuntimeSettings

log = logging.getLogger(__name__)

#: File written last into a complete checkpoint; its presence marks the build as finished.
METADATA_FILE = "trinity_checkpoint.json"
INIT_STD = 0.02
_CHUNK_ELEMENTS = 1 << 24
_BUILDER_VERSION = 1


def qwen3_0_6b_config() -> Qwen3Config:
    """The Qwen/Qwen3-0.6B architecture (hidden 1024, 28 layers, 16 q / 8 kv heads, vocab 151936, tied)."""
    return Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True, attention_bias=False,
        bos_token_id=151643, eos_token_id=151645, hidden_act="silu",
    )


def qwen3_tiny_config(vocab_size: int = 151936) -> Qwen3Config:
    """A tiny Qwen3 (hidden 64, 2 layers) with the real vocabulary, so the real tokenizer works."""
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True, attention_bias=False,
        bos_token_id=151643, eos_token_id=151645, hidden_act="silu",
    )


def preset_config(preset: str) -> Qwen3Config:
    """Config of a named preset (see ``config.model_runtime.CHECKPOINT_PRESETS``)."""
    if preset == "qwen3-0.6b-synthetic":
        return qwen3_0_6b_config()
    if preset == "qwen3-tiny-synthetic":
        return qwen3_tiny_config()
    raise ValueError(f"unknown checkpoint preset {preset!r}; expected one of {', '.join(CHECKPOINT_PRESETS)}")


def _parameter_shapes(config: Qwen3Config) -> list[tuple[str, tuple[int, ...]]]:
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    shapes = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    if config.tie_word_embeddings:
        shapes = [(n, s) for n, s in shapes if n != "lm_head.weight"]
    return shapes


def _fill(name: str, shape: tuple[int, ...], seed: int, index: int) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.float32)
    out = torch.empty(shape, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    flat = out.view(-1)
    for start in range(0, flat.numel(), _CHUNK_ELEMENTS):
        flat[start:start + _CHUNK_ELEMENTS].normal_(0.0, INIT_STD, generator=gen)
    return out


def _shards(shapes: list[tuple[str, tuple[int, ...]]], max_shard_bytes: int | None) -> list[list[int]]:
    groups: list[list[int]] = [[]]
    size = 0
    for i, (_, shape) in enumerate(shapes):
        nbytes = 4 * int(torch.Size(shape).numel())
        if max_shard_bytes is not None and groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += nbytes
    return groups


def build_checkpoint(dest: str | Path, config: Qwen3Config, *, seed: int = 0, preset: str = "custom",
                     max_shard_bytes: int | None = None) -> Path:
    """Write a synthetic float32 checkpoint of ``config`` to ``dest`` (replaced if present).

    ``max_shard_bytes`` splits the weights into several safetensors files with an index, as the Hub does.
    The build goes to a temporary sibling folder first and is renamed into place when complete.
    """
    dest = Path(dest)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shapes = _parameter_shapes(config)
    groups = _shards(shapes, max_shard_bytes)
    meta = {"format": "pt", "trinity_synthetic": "true", "seed": str(seed), "preset": preset}
    weight_map: dict[str, str] = {}
    total = 0
    t0 = time.monotonic()
    want = sum(4 * int(torch.Size(shape).numel()) for _, shape in shapes)
    log.info("building synthetic checkpoint %s (%s, %.2f GB float32, %d files) in %s", preset, dest.name,
             want / 1e9, len(groups), dest.parent)
    for k, group in enumerate(groups):
        fname = "model.safetensors" if len(groups) == 1 else f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {shapes[i][0]: _fill(shapes[i][0], shapes[i][1], seed, i) for i in group}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(tmp / fname), metadata=meta)
        weight_map.update({name: fname for name in tensors})
        del tensors
        log.info("building synthetic checkpoint %s: %d%% (%s written, %.1f s)", preset, round(100 * total / want),
                 fname, time.monotonic() - t0)
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    cfg = config.to_dict()
    cfg["torch_dtype"] = "float32"
    cfg["trinity_synthetic"] = {"synthetic": True, "seed": seed, "preset": preset, "init_std": INIT_STD}
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    info = {"synthetic": True, "preset": preset, "seed": seed, "builder_version": _BUILDER_VERSION,
            "init": f"normal(0, {INIT_STD}) per tensor, generator seed = seed * 1000003 + tensor index; "
                    "RMSNorm weights 1",
            "dtype": "float32", "total_bytes": total, "files": sorted(set(weight_map.values()))}
    (tmp / METADATA_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    log.info("built synthetic checkpoint %s in %.1f s", dest, time.monotonic() - t0)
    return dest


def checkpoint_path(cache_dir: str | Path, preset: str, seed: int = 0) -> Path:
    """Where :func:`ensure_checkpoint` keeps ``preset`` built with ``seed``."""
    return Path(cache_dir).expanduser() / f"{preset}-seed{seed}"


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``trinity_checkpoint.json`` of a checkpoint (``{}`` for a real, non-synthetic checkpoint)."""
    f = Path(path) / METADATA_FILE
    if not f.is_file():
        return {}
    data: dict[str, Any] = json.loads(f.read_text())
    return data


def ensure_checkpoint(preset: str, cache_dir: str | Path, *, seed: int = 0) -> Path:
    """Build ``preset`` once under ``cache_dir`` and return its folder (reused when already complete)."""
    dest = checkpoint_path(cache_dir, preset, seed)
    meta = read_metadata(dest)
    if meta.get("builder_version") == _BUILDER_VERSION and meta.get("seed") == seed:
        return dest
    max_shard = 1 << 30 if preset == "qwen3-0.6b-synthetic" else None
    return build_checkpoint(dest, preset_config(preset), seed=seed, preset=preset, max_shard_bytes=max_shard)


def resolve_checkpoint(settings: ModelRuntimeSettings) -> Path:
    """The checkpoint a runtime with ``settings`` loads (building the synthetic preset if needed)."""
    s = settings.expanded()
    if s.checkpoint_dir is not None:
        p = Path(s.checkpoint_dir)
        if not (p / "config.json").is_file():
            raise CheckpointError(str(p), "no config.json; point checkpoint_dir at a Qwen3 checkpoint folder")
        return p
    return ensure_checkpoint(s.checkpoint_preset, s.checkpoint_cache_dir, seed=s.checkpoint_seed)


def safetensors_files(path: str | Path) -> Iterator[Path]:
    """The safetensors files of a checkpoint (from its index when sharded)."""
    p = Path(path)
    index = p / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        yield from (p / n for n in names)
    elif (p / "model.safetensors").is_file():
        yield p / "model.safetensors"
    else:
        raise CheckpointError(str(p), "no model.safetensors or model.safetensors.index.json")


def main(argv: list[str] | None = None) -> int:
    """CLI: build (or reuse) a synthetic checkpoint and print its folder."""
    defaults = ModelRuntimeSettings()
    ap = argparse.ArgumentParser(description="Build a synthetic (random-weight) Qwen3 checkpoint of real shapes.")
    ap.add_argument("--preset", choices=CHECKPOINT_PRESETS, default=defaults.checkpoint_preset)
    ap.add_argument("--cache-dir", default=defaults.checkpoint_cache_dir)
    ap.add_argument("--seed", type=int, default=defaults.checkpoint_seed)
    args = ap.parse_args(argv)
    print(ensure_checkpoint(args.preset, os.path.expanduser(args.cache_dir), seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
