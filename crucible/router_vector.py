"""Load the TRINITY router vector and split it into SVF offsets and the routing head.

The released vector (``model_iter_60.npy``, 19,456 values) is laid out as nine blocks of 1,024 SVF
offsets (one per singular value of each adapted matrix, in manifest order) followed by the bias-free
routing head ``{10, 1024}`` in row-major order.

Two copies exist and both load here, always as float64 numpy arrays:

* ``.npy`` (float64): loaded with ``allow_pickle=False``.
* ``.safetensors``: one tensor under the key ``"trinity_router_es_vector"`` (:data:`SAFETENSORS_KEY`),
  stored as **F32**. It equals the ``.npy`` rounded to float32 exactly (checked by the tests), so the
  two copies are not bit-identical in float64: the ``.npy`` is the master.

The layout is passed as plain tuples ``(name, shape, offset_start, offset_end)`` so this module does not
depend on any manifest schema; :data:`TRINITY_SVF_SLOTS` holds the released layout.

Example::

    vector = load_router_vector("sakana_model_iter_60.npy")
    parts = split_router_vector(vector)
    d_embed = parts.offsets["model.embed_tokens.weight"]     # (1024,) float64
    head = parts.head                                         # (10, 1024) float64
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from crucible.errors import (
    DigestMismatch,
    InvalidLayout,
    InvalidVector,
    UnsupportedVectorFile,
    VectorKeyNotFound,
)
from crucible.hashing import file_sha256
from crucible.safetensors_io import SafetensorsReader, to_numpy

#: The tensor name inside ``trinity_router_es_vector.safetensors``.
SAFETENSORS_KEY: Final = "trinity_router_es_vector"
#: ``(name, shape, offset_start, offset_end)``.
Slot = tuple[str, tuple[int, int], int, int]

#: The released TRINITY layout (Qwen3-0.6B), in vector order.
TRINITY_SVF_SLOTS: Final[tuple[Slot, ...]] = (
    ("model.embed_tokens.weight", (151936, 1024), 0, 1024),
    ("model.layers.26.self_attn.q_proj.weight", (2048, 1024), 1024, 2048),
    ("model.layers.26.self_attn.k_proj.weight", (1024, 1024), 2048, 3072),
    ("model.layers.26.self_attn.v_proj.weight", (1024, 1024), 3072, 4096),
    ("model.layers.26.self_attn.o_proj.weight", (1024, 2048), 4096, 5120),
    ("model.layers.26.mlp.gate_proj.weight", (3072, 1024), 5120, 6144),
    ("model.layers.26.mlp.up_proj.weight", (3072, 1024), 6144, 7168),
    ("model.layers.26.mlp.down_proj.weight", (1024, 3072), 7168, 8192),
    ("lm_head.weight", (151936, 1024), 8192, 9216),
)
#: Shape of the routing head: 7 agent logits then 3 role logits, over the 1024-wide hidden state.
TRINITY_HEAD_SHAPE: Final = (10, 1024)
TRINITY_VECTOR_LENGTH: Final = 19456

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class RouterVectorParts:
    """A split router vector.

    Attributes:
        offsets: SVF offsets per matrix name, each float64 ``(k,)``, in layout order.
        shapes: the matrix shape per name, as given in the layout.
        head: the routing head, float64 ``head_shape``.
    """

    offsets: Mapping[str, FloatArray]
    shapes: Mapping[str, tuple[int, int]]
    head: FloatArray


def _as_vector(raw: NDArray[Any], source: str) -> FloatArray:
    if raw.ndim != 1:
        raise InvalidVector(f"{source}: vector must be 1-D, got shape {raw.shape}")
    if raw.dtype.kind != "f":
        raise InvalidVector(f"{source}: vector must be floating point, got dtype {raw.dtype}")
    vector = raw.astype(np.float64)
    if not np.isfinite(vector).all():
        raise InvalidVector(f"{source}: vector holds {int((~np.isfinite(vector)).sum())} NaN/inf value(s)")
    return vector


def load_router_vector(
    path: str | os.PathLike[str],
    *,
    key: str = SAFETENSORS_KEY,
    expected_sha256: str | None = None,
) -> FloatArray:
    """Load the vector from ``.npy`` or ``.safetensors`` as a float64 1-D array.

    Args:
        path: the file.
        key: tensor name for ``.safetensors`` files.
        expected_sha256: when given, the file's sha256 must match (e.g. the manifest's
            ``source_vector_sha256`` for the safetensors copy).

    Raises:
        UnsupportedVectorFile: unknown suffix or unreadable ``.npy``.
        VectorKeyNotFound: the safetensors file lacks ``key``.
        SafetensorsFormatError: the safetensors file is malformed.
        InvalidVector: not a finite 1-D float array.
        DigestMismatch: sha256 differs from ``expected_sha256``.
    """
    file = Path(path)
    if expected_sha256 is not None:
        actual = file_sha256(file)
        if actual != expected_sha256.lower():
            raise DigestMismatch(
                f"{file}: sha256 {actual} differs from the pinned {expected_sha256}; the file is not the "
                "released vector"
            )
    suffix = file.suffix.lower()
    if suffix == ".npy":
        try:
            raw = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UnsupportedVectorFile(f"{file}: not a readable .npy array ({exc})") from exc
        return _as_vector(raw, str(file))
    if suffix == ".safetensors":
        with SafetensorsReader(file) as reader:
            if key not in reader.header.tensors:
                raise VectorKeyNotFound(
                    f"{file}: no tensor {key!r}; the file holds {list(reader.names)!r:.300}"
                )
            tensor = reader.read_tensor(key)
        if not tensor.dtype.is_floating_point:
            raise InvalidVector(f"{file}: tensor {key!r} has dtype {tensor.dtype}; expected floating point")
        return _as_vector(to_numpy(tensor), f"{file}[{key}]")
    raise UnsupportedVectorFile(f"{file}: expected a .npy or .safetensors file, got suffix {suffix!r}")


def validate_layout(
    slots: Sequence[Slot], head_shape: tuple[int, int], vector_length: int
) -> None:
    """Check that slots tile ``[0, head_start)`` contiguously in order, with ``min(shape)`` values each,
    and that the head fills the rest of the vector exactly.

    Raises:
        InvalidLayout: naming the slot at fault.
    """
    if not slots:
        raise InvalidLayout("layout has no SVF slots")
    names: set[str] = set()
    cursor = 0
    for index, slot in enumerate(slots):
        try:
            name, shape, start, end = slot
            rows, cols = shape
        except (TypeError, ValueError):
            raise InvalidLayout(
                f"slot {index}: expected (name, (rows, cols), start, end), got {slot!r:.200}"
            ) from None
        if not isinstance(name, str) or not name:
            raise InvalidLayout(f"slot {index}: name must be a non-empty string, got {name!r}")
        if name in names:
            raise InvalidLayout(f"slot {index}: name {name!r} appears twice")
        names.add(name)
        if not all(type(v) is int for v in (rows, cols, start, end)) or rows < 1 or cols < 1:
            raise InvalidLayout(f"slot {name!r}: shape and offsets must be positive integers, got {slot!r}")
        if start != cursor:
            kind = "overlaps the previous slot" if start < cursor else "leaves a gap after the previous slot"
            raise InvalidLayout(f"slot {name!r}: offset_start {start} {kind} (expected {cursor})")
        if end - start != min(rows, cols):
            raise InvalidLayout(
                f"slot {name!r}: {end - start} offsets for shape {shape}, which has {min(rows, cols)} "
                "singular values"
            )
        cursor = end
    head_rows, head_cols = head_shape
    if cursor + head_rows * head_cols != vector_length:
        raise InvalidLayout(
            f"SVF slots end at {cursor}; with a {head_shape} head the vector needs "
            f"{cursor + head_rows * head_cols} values, not {vector_length}"
        )


def split_router_vector(
    vector: FloatArray,
    slots: Sequence[Slot] = TRINITY_SVF_SLOTS,
    *,
    head_shape: tuple[int, int] = TRINITY_HEAD_SHAPE,
) -> RouterVectorParts:
    """Split a loaded vector into per-matrix SVF offsets and the head (copies, float64).

    Raises:
        InvalidVector: the vector is not a finite 1-D float array.
        InvalidLayout: the layout does not fit the vector.
    """
    vector = _as_vector(np.asarray(vector), "router vector")
    validate_layout(slots, head_shape, int(vector.shape[0]))
    offsets = {name: vector[start:end].copy() for name, _, start, end in slots}
    shapes = {name: (shape[0], shape[1]) for name, shape, _, _ in slots}
    head_start = slots[-1][3]
    head = vector[head_start:].reshape(head_shape).copy()
    return RouterVectorParts(offsets=MappingProxyType(offsets), shapes=MappingProxyType(shapes), head=head)


def slots_from_manifest(entries: Sequence[Mapping[str, Any]]) -> tuple[Slot, ...]:
    """Build slots from manifest-like mappings with ``source_name``, ``shape``, ``offset_start``,
    ``offset_end`` (the fields of ``sakana_python_reference_manifest.json``'s ``selected_tensors``).

    Raises:
        InvalidLayout: a field is missing or has the wrong type.
    """
    slots: list[Slot] = []
    for index, entry in enumerate(entries):
        try:
            name = entry["source_name"]
            rows, cols = entry["shape"]
            slots.append((name, (rows, cols), entry["offset_start"], entry["offset_end"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidLayout(f"manifest entry {index}: {type(exc).__name__}: {exc}") from None
    return tuple(slots)


__all__ = [
    "SAFETENSORS_KEY",
    "TRINITY_HEAD_SHAPE",
    "TRINITY_SVF_SLOTS",
    "TRINITY_VECTOR_LENGTH",
    "RouterVectorParts",
    "Slot",
    "load_router_vector",
    "slots_from_manifest",
    "split_router_vector",
    "validate_layout",
]
