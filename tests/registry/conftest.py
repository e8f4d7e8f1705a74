"""Fixtures of the registry tests: a small artifact (manifest + two binary files), its pin, a fake Hub."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.registry import RegistrySettings
from schemas.sakana import ArtifactPin, PinnedFile
from tests.registry.hub_server import FakeHub, serve

REPO = "acme/trinity-bundle"
REVISION = "v1.0.0"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def artifact() -> dict[str, bytes]:
    """Files of a small artifact; one is 300 KB so a cut body is mid-stream."""
    return {
        "manifest.json": b'{"fake": "manifest"}\n',
        "router_head.safetensors": bytes(range(256)) * 64,
        "checkpoints/0001_embedder.safetensors": bytes((i * 7) % 251 for i in range(300_000)),
    }


@pytest.fixture
def pin(artifact: dict[str, bytes]) -> ArtifactPin:
    """The pin of :func:`artifact`."""
    return ArtifactPin(version=1, repo_id=REPO, revision=REVISION, manifest_sha256=_sha(artifact["manifest.json"]),
                       files=[PinnedFile(p, _sha(d)) for p, d in artifact.items()])


@pytest.fixture
def hub(artifact: dict[str, bytes]) -> Iterator[FakeHub]:
    """The fake Hub serving :func:`artifact` at ``REPO@REVISION``."""
    with serve(FakeHub(REPO, REVISION, dict(artifact))) as h:
        yield h


@pytest.fixture
def settings(tmp_path: Path, hub: FakeHub) -> RegistrySettings:
    """Registry settings pointing at the fake Hub with a per-test cache."""
    return RegistrySettings(endpoint=hub.url, cache_dir=str(tmp_path / "cache"), etag_timeout_s=5.0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic Qwen3 checkpoint (hidden 64, 2 layers, real vocabulary; tied embeddings)."""
    from actors.model_runtime.checkpoints import build_checkpoint, qwen3_tiny_config

    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", qwen3_tiny_config(), seed=7,
                            preset="qwen3-tiny-synthetic")


@pytest.fixture(scope="session")
def tiny_vector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TRINITY-layout vector for the tiny checkpoint: 512 offsets (9 matrices) + a {10, 64} head, .npy."""
    import numpy as np

    rng = np.random.default_rng(11)
    offsets = rng.normal(0.0, 0.2, 512)
    head = rng.normal(0.0, 1.0, 640)
    path = tmp_path_factory.mktemp("vec") / "tiny_vector.npy"
    np.save(path, np.concatenate([offsets, head]))
    return path
