"""Fixtures for crucible tests: the anchor data (real TRINITY vector and manifest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crucible.router_vector import RouterVectorParts, load_router_vector, split_router_vector

_CANDIDATES = (
    Path("/work/shared/anchors"),
    Path(__file__).resolve().parents[1] / "data" / "anchors",  # a vendored copy, if the repo carries one
)


@pytest.fixture(scope="session")
def anchors_dir() -> Path:
    """The directory holding sakana_model_iter_60.npy and friends."""
    for candidate in _CANDIDATES:
        if (candidate / "sakana_model_iter_60.npy").exists():
            return candidate
    pytest.skip(f"TRINITY anchor data not found in any of {[str(c) for c in _CANDIDATES]}")


@pytest.fixture(scope="session")
def manifest(anchors_dir: Path) -> dict[str, Any]:
    """sakana_python_reference_manifest.json."""
    loaded: dict[str, Any] = json.loads((anchors_dir / "sakana_python_reference_manifest.json").read_text())
    return loaded


@pytest.fixture(scope="session")
def real_parts(anchors_dir: Path) -> RouterVectorParts:
    """The released vector, split into SVF offsets and head."""
    return split_router_vector(load_router_vector(anchors_dir / "sakana_model_iter_60.npy"))
