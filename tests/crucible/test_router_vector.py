"""crucible.router_vector: the two anchor copies agree, the split follows the manifest, errors are typed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from crucible import errors
from crucible.hashing import file_sha256
from crucible.router_vector import (
    SAFETENSORS_KEY,
    TRINITY_HEAD_SHAPE,
    TRINITY_SVF_SLOTS,
    TRINITY_VECTOR_LENGTH,
    Slot,
    load_router_vector,
    slots_from_manifest,
    split_router_vector,
    validate_layout,
)
from crucible.safetensors_io import read_header


def test_safetensors_copy_key_dtype_and_digest(anchors_dir: Path, manifest: dict[str, Any]) -> None:
    path = anchors_dir / "trinity_router_es_vector.safetensors"
    header = read_header(path)
    assert list(header.tensors) == [SAFETENSORS_KEY]
    assert header.tensors[SAFETENSORS_KEY].dtype == "F32"
    assert header.tensors[SAFETENSORS_KEY].shape == (TRINITY_VECTOR_LENGTH,)
    assert file_sha256(path) == manifest["source_vector_sha256"]
    load_router_vector(path, expected_sha256=manifest["source_vector_sha256"])  # no DigestMismatch


def test_npy_and_safetensors_copies_agree_exactly_at_float32(anchors_dir: Path) -> None:
    npy = load_router_vector(anchors_dir / "sakana_model_iter_60.npy")
    st = load_router_vector(anchors_dir / "trinity_router_es_vector.safetensors")
    assert npy.dtype == st.dtype == np.float64
    assert npy.shape == st.shape == (TRINITY_VECTOR_LENGTH,)
    # The safetensors copy is F32: exactly the .npy rounded to float32, element for element.
    assert np.array_equal(npy.astype(np.float32), st.astype(np.float32))
    assert np.array_equal(npy.astype(np.float32).astype(np.float64), st)
    assert not np.array_equal(npy, st)  # so the float64 .npy is the master copy
    assert float(np.abs(npy - st).max()) < 2e-8


def test_layout_constant_matches_manifest(manifest: dict[str, Any]) -> None:
    slots = slots_from_manifest(manifest["selected_tensors"])
    assert slots == TRINITY_SVF_SLOTS
    assert manifest["selected_singular_value_count"] == TRINITY_SVF_SLOTS[-1][3] == 9216
    validate_layout(slots, TRINITY_HEAD_SHAPE, TRINITY_VECTOR_LENGTH)


def test_split_follows_manifest_order_and_row_major_head(anchors_dir: Path) -> None:
    vector = load_router_vector(anchors_dir / "sakana_model_iter_60.npy")
    parts = split_router_vector(vector)
    assert list(parts.offsets) == [slot[0] for slot in TRINITY_SVF_SLOTS]
    for name, _, start, end in TRINITY_SVF_SLOTS:
        assert np.array_equal(parts.offsets[name], vector[start:end])
        assert parts.offsets[name].shape == (1024,)
    assert parts.head.shape == (10, 1024)
    assert np.array_equal(parts.head[3], vector[9216 + 3 * 1024 : 9216 + 4 * 1024])
    assert parts.shapes["model.layers.26.self_attn.o_proj.weight"] == (1024, 2048)
    parts.offsets["lm_head.weight"][0] = 99.0  # copies: the loaded vector is untouched
    assert vector[8192] != 99.0


def small_layout() -> tuple[Slot, ...]:
    return (("a", (4, 3), 0, 3), ("b", (2, 5), 3, 5))


def test_split_custom_layout() -> None:
    vector = np.arange(5 + 2 * 3, dtype=np.float64)
    parts = split_router_vector(vector, small_layout(), head_shape=(2, 3))
    assert parts.offsets["a"].tolist() == [0, 1, 2] and parts.offsets["b"].tolist() == [3, 4]
    assert parts.head.tolist() == [[5, 6, 7], [8, 9, 10]]


@pytest.mark.parametrize(
    ("slots", "fragment"),
    [
        ((), "no SVF slots"),
        ((("a", (4, 3), 0, 3), ("b", (2, 5), 2, 4)), "overlaps"),
        ((("a", (4, 3), 0, 3), ("b", (2, 5), 4, 6)), "gap"),
        ((("a", (4, 3), 0, 4), ("b", (2, 5), 4, 6)), "4 offsets for shape"),
        ((("a", (4, 3), 0, 3), ("a", (2, 5), 3, 5)), "twice"),
        ((("a", (4, 3), 0, 3), ("b", (2, 5), 3, 5), ("c", (1, 1), 5, 6)), "needs 12"),
        ((("a", (4,), 0, 3),), "expected"),
        ((("a", (0, 3), 0, 0),), "positive"),
    ],
)
def test_layout_errors(slots: tuple[Slot, ...], fragment: str) -> None:
    with pytest.raises(errors.InvalidLayout, match=fragment):
        split_router_vector(np.zeros(11), slots, head_shape=(2, 3))


def test_vector_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidVector, match="1-D"):
        split_router_vector(np.zeros((2, 3)))
    with pytest.raises(errors.InvalidVector, match="NaN"):
        split_router_vector(np.array([1.0, np.nan]))
    with pytest.raises(errors.InvalidLayout, match="19456"):
        split_router_vector(np.zeros(100))
    np.save(tmp_path / "ints.npy", np.arange(4))
    with pytest.raises(errors.InvalidVector, match="floating"):
        load_router_vector(tmp_path / "ints.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(errors.UnsupportedVectorFile, match="not a readable"):
        load_router_vector(tmp_path / "obj.npy")
    (tmp_path / "v.txt").write_text("1 2 3")
    with pytest.raises(errors.UnsupportedVectorFile, match="suffix"):
        load_router_vector(tmp_path / "v.txt")
    save_file({"other": torch.zeros(3)}, str(tmp_path / "v.safetensors"))
    with pytest.raises(errors.VectorKeyNotFound, match="other"):
        load_router_vector(tmp_path / "v.safetensors")
    assert load_router_vector(tmp_path / "v.safetensors", key="other").tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(errors.DigestMismatch, match="pinned"):
        load_router_vector(tmp_path / "v.safetensors", key="other", expected_sha256="0" * 64)
    (tmp_path / "bad.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00[]")
    with pytest.raises(errors.InvalidHeaderJSON):
        load_router_vector(tmp_path / "bad.safetensors")


def test_bf16_vector_loads_as_float64(tmp_path: Path) -> None:
    values = torch.tensor([0.5, -1.25, 3.0], dtype=torch.bfloat16)
    save_file({SAFETENSORS_KEY: values}, str(tmp_path / "v.safetensors"))
    loaded = load_router_vector(tmp_path / "v.safetensors")
    assert loaded.dtype == np.float64 and loaded.tolist() == [0.5, -1.25, 3.0]


def test_slots_from_manifest_errors() -> None:
    with pytest.raises(errors.InvalidLayout, match="entry 0: KeyError"):
        slots_from_manifest([{"shape": [1, 1]}])
