"""crucible.safetensors_io: validated header, whole/row/chunk reads against the safetensors library."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from crucible import errors
from crucible.safetensors_io import (
    DTYPES,
    SafetensorsReader,
    parse_header,
    read_header,
    read_tensor,
    to_numpy,
)


def raw_file(header: dict[str, Any] | str | bytes, data: bytes = b"", *, declared: int | None = None) -> bytes:
    """Assemble a safetensors file by hand (header object, text or bytes; optional wrong length)."""
    if isinstance(header, dict):
        body = json.dumps(header).encode()
    elif isinstance(header, str):
        body = header.encode()
    else:
        body = header
    length = len(body) if declared is None else declared
    return struct.pack("<Q", length) + body + data


def write(tmp_path: Path, content: bytes, name: str = "f.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    tensors = {
        "emb": torch.randn(37, 16, generator=gen),
        "bf": torch.randn(9, 5, generator=gen).to(torch.bfloat16),
        "half": torch.randn(4, 3, 2, generator=gen).to(torch.float16),
        "ids": torch.arange(11, dtype=torch.int64),
        "flag": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "f8": torch.randn(6, generator=gen).to(torch.float8_e4m3fn),
    }
    path = tmp_path / "sample.safetensors"
    save_file(tensors, str(path), metadata={"origin": "test", "n": "8"})
    return path, tensors


def test_header_and_whole_reads_match_library(sample: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, tensors = sample
    header = read_header(path)
    assert set(header.tensors) == set(tensors)
    assert dict(header.metadata) == {"origin": "test", "n": "8"}
    assert header.file_size == path.stat().st_size
    with safe_open(str(path), framework="pt") as lib, SafetensorsReader(path) as reader:
        for name, original in tensors.items():
            ours = reader.read_tensor(name)
            assert ours.dtype == original.dtype
            assert tuple(ours.shape) == tuple(original.shape)
            assert torch.equal(ours.view(-1).view(torch.uint8), lib.get_tensor(name).view(-1).view(torch.uint8))
            info = reader.info(name)
            assert info.nbytes == original.numel() * original.element_size()


def test_row_range_matches_slice_and_reads_only_those_bytes(
    sample: tuple[Path, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, tensors = sample
    with SafetensorsReader(path) as reader:
        counted: list[int] = []
        original = reader._fp.readinto

        def counting(buf: Any) -> int:
            got = original(buf)
            counted.append(got)
            return got

        monkeypatch.setattr(reader._fp, "readinto", counting)
        rows = reader.read_rows("emb", 5, 12)
        assert torch.equal(rows, tensors["emb"][5:12])
        assert counted == [7 * 16 * 4]
        assert torch.equal(reader.read_rows("bf", 0, 9), tensors["bf"])
        assert reader.read_rows("emb", 3, 3).shape == (0, 16)
        assert reader.read_rows("empty", 0, 0).shape == (0, 4)


@pytest.mark.parametrize("limit", [8, 15, 64, 100, 4096])
def test_flat_chunks_are_bounded_and_reassemble(sample: tuple[Path, dict[str, torch.Tensor]], limit: int) -> None:
    path, tensors = sample
    with SafetensorsReader(path) as reader:
        for name in ("emb", "ids", "half", "bf", "flag"):
            chunks = list(reader.iter_chunks(name, limit))
            per_chunk = limit // DTYPES[reader.info(name).dtype][1]
            assert all(c.data.numel() * c.data.element_size() <= limit for c in chunks)
            assert [c.start for c in chunks] == list(range(0, tensors[name].numel(), per_chunk))
            assert torch.equal(torch.cat([c.data for c in chunks]), tensors[name].reshape(-1))
        assert list(reader.iter_chunks("empty", 64)) == []


def test_row_blocks_are_bounded_and_reassemble(sample: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, tensors = sample
    with SafetensorsReader(path) as reader:
        blocks = list(reader.iter_row_blocks("emb", 5 * 64 + 3))  # 5 rows of 64 bytes fit
        assert [b.start for b in blocks] == list(range(0, 37, 5))
        assert all(b.data.shape[0] <= 5 for b in blocks)
        assert torch.equal(torch.cat([b.data for b in blocks]), tensors["emb"])


def test_bf16_and_float8_convert_to_float32_exactly(sample: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, tensors = sample
    with SafetensorsReader(path) as reader:
        bf = to_numpy(reader.read_tensor("bf"))
        f8 = to_numpy(reader.read_tensor("f8"))
    assert bf.dtype == np.float32 and f8.dtype == np.float32
    assert np.array_equal(bf, tensors["bf"].float().numpy())
    assert np.array_equal(f8, tensors["f8"].float().numpy())
    assert torch.equal(torch.from_numpy(bf).to(torch.bfloat16), tensors["bf"])


def test_usage_errors_are_typed(sample: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = sample
    with SafetensorsReader(path) as reader:
        with pytest.raises(errors.TensorNotFound, match="'nope'"):
            reader.read_tensor("nope")
        with pytest.raises(errors.NotAMatrix):
            reader.read_rows("half", 0, 1)
        with pytest.raises(errors.InvalidRowRange):
            reader.read_rows("emb", 30, 38)
        with pytest.raises(errors.InvalidRowRange):
            reader.read_rows("emb", 5, 4)
        with pytest.raises(errors.InvalidChunkSize):
            list(reader.iter_chunks("ids", 7))
        with pytest.raises(errors.InvalidChunkSize):
            list(reader.iter_row_blocks("emb", 63))


def test_anchor_vector_file_reads(tmp_path: Path) -> None:
    anchor = Path("/work/shared/anchors/trinity_router_es_vector.safetensors")
    if not anchor.exists():
        pytest.skip("anchor data not present")
    vec = read_tensor(anchor, "trinity_router_es_vector")
    assert vec.dtype == torch.float32 and vec.shape == (19456,)


def one(shape: Any, offsets: Any, data: bytes = b"", dtype: Any = "F32") -> bytes:
    """A file with a single tensor entry ``t``."""
    return raw_file({"t": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}, data)


F32_2x2 = {"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
DATA16 = bytes(range(16))


MALFORMED: list[tuple[bytes, type[errors.SafetensorsFormatError], str]] = [
    (b"\x01\x02\x03", errors.FileTooSmall, "shorter than"),
    (raw_file(F32_2x2, DATA16, declared=100_000_001), errors.HeaderTooLarge, "exceeds"),
    (raw_file(F32_2x2, DATA16, declared=10_000), errors.TruncatedHeader, "runs past"),
    (raw_file(b'{"t\xff": 1}', b""), errors.InvalidHeaderEncoding, "UTF-8"),
    (raw_file("[1, 2]"), errors.InvalidHeaderJSON, "start with"),
    (raw_file('{"t": '), errors.InvalidHeaderJSON, "not valid JSON"),
    (raw_file('{"t": NaN}'), errors.InvalidHeaderJSON, "not valid JSON"),
    (raw_file('{"a": 1} x'), errors.InvalidHeaderJSON, "not valid JSON"),
    (raw_file('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"), errors.InvalidHeaderJSON, "deeply"),
    (raw_file('{"a": ' + "9" * 5000 + "}"), errors.InvalidHeaderJSON, "not valid JSON"),
    (raw_file('{"t": {}, "t": {}}'), errors.DuplicateKey, "'t' appears twice"),
    (raw_file({"__metadata__": {"a": 1}}), errors.InvalidMetadata, r"__metadata__\['a'\]"),
    (raw_file({"__metadata__": []}), errors.InvalidMetadata, "object of strings"),
    (raw_file({"t": [1]}), errors.InvalidTensorEntry, "must be an object"),
    (raw_file({"t": {"dtype": "F32", "shape": [0]}}), errors.InvalidTensorEntry, "'data_offsets'"),
    (
        raw_file({"t": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0], "x": 1}}),
        errors.InvalidTensorEntry,
        "unknown field 'x'",
    ),
    (one([0], [0, 0], dtype="F33"), errors.UnknownDtype, "'F33'"),
    (one([-1], [0, 0]), errors.InvalidShape, "'t'"),
    (one([1.0], [0, 4], b"abcd"), errors.InvalidShape, "non-negative integers"),
    (one([True], [0, 4], b"abcd"), errors.InvalidShape, "non-negative integers"),
    (one([1], [4, 0], b"abcd"), errors.InvalidDataOffsets, r"\[begin, end\]"),
    (one([1], [0], b"abcd"), errors.InvalidDataOffsets, r"\[begin, end\]"),
    (one([2], [0, 4], b"abcd"), errors.ShapeSizeMismatch, "needs 8"),
    (one([2], [0, 8], b"abcd"), errors.OffsetOutOfBounds, "past"),
    (one([2**62] * 20_000, [0, 4], b"abcd"), errors.ShapeSizeMismatch, r"more than 2\*\*64"),
    (
        raw_file(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            bytes(8),
        ),
        errors.OverlappingTensors,
        "overlaps",
    ),
    (one([1], [4, 8], bytes(8)), errors.DataGap, "start"),
    (
        raw_file(
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
            },
            bytes(12),
        ),
        errors.DataGap,
        "after tensor 'a'",
    ),
    (raw_file(F32_2x2, DATA16 + b"xx"), errors.IncompleteCoverage, "2 trailing"),
]


@pytest.mark.parametrize(
    ("content", "error", "fragment"),
    MALFORMED,
    ids=[f"{i:02d}-{case[1].__name__}" for i, case in enumerate(MALFORMED)],
)
def test_malformed_files_raise_precise_typed_errors(
    tmp_path: Path, content: bytes, error: type[errors.SafetensorsFormatError], fragment: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(error, match=fragment) as caught:
        read_header(path)
    assert isinstance(caught.value, errors.SafetensorsFormatError)
    assert str(path) in str(caught.value)
    with pytest.raises(error):
        SafetensorsReader(path)


def test_error_names_tensor_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, raw_file({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)))
    with pytest.raises(errors.ShapeSizeMismatch) as caught:
        read_header(path)
    assert caught.value.tensor == "w" and caught.value.field == "data_offsets"


def test_header_padding_zero_size_and_empty_files_are_valid(tmp_path: Path) -> None:
    padded = raw_file(json.dumps(F32_2x2) + "     ", DATA16)
    path = write(tmp_path, padded)
    with SafetensorsReader(path) as reader:
        assert reader.read_tensor("t").reshape(-1).view(torch.uint8).tolist() == list(DATA16)
    assert not read_header(write(tmp_path, raw_file("{}"), "empty.safetensors")).tensors
    zero = {
        "z1": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
        "z2": {"dtype": "BF16", "shape": [0], "data_offsets": [0, 0]},
        "t": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
    }
    with SafetensorsReader(write(tmp_path, raw_file(zero, b"ab"), "zero.safetensors")) as reader:
        assert reader.read_tensor("z1").shape == (0, 3)
        assert reader.read_tensor("z2").dtype == torch.bfloat16


def test_custom_header_bound_is_enforced_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, raw_file(F32_2x2, DATA16))
    with pytest.raises(errors.HeaderTooLarge):
        read_header(path, max_header_bytes=10)


def test_file_truncated_after_validation_raises_typed_error(tmp_path: Path) -> None:
    path = write(tmp_path, raw_file(F32_2x2, DATA16))
    with SafetensorsReader(path) as reader:
        with open(path, "r+b") as fp:
            fp.truncate(path.stat().st_size - 4)
        with pytest.raises(errors.TruncatedTensorData, match="'t'"):
            reader.read_rows("t", 0, 2)


def test_parse_header_works_on_in_memory_buffers() -> None:
    import io

    content = raw_file(F32_2x2, DATA16)
    header = parse_header(io.BytesIO(content), len(content))
    assert header.tensors["t"].shape == (2, 2)
    assert header.data_start == 8 + header.header_bytes
