"""Deterministic fuzzing of crucible.safetensors_io: 12,000 mutated files.

Each mutated file must either validate and then read back exactly the bytes its header points at
(whole tensor through the safetensors library, flat chunks and row ranges through seek + read), or
raise a subclass of ``SafetensorsFormatError``. Any other exception fails the test, with the case
number and mutation attached as a note. The library must never refuse a file this module accepted.
"""

from __future__ import annotations

import json
import random
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from crucible import errors
from crucible.safetensors_io import DTYPES, SafetensorsReader

CASES_PER_MUTATOR = 2000
SEED = 0x5AFE7E


def seed_files() -> list[bytes]:
    gen = torch.Generator().manual_seed(3)
    return [
        save(
            {
                "w": torch.randn(6, 4, generator=gen),
                "b": torch.randn(5, generator=gen).to(torch.bfloat16),
                "i": torch.arange(3, dtype=torch.int64),
            },
            metadata={"k": "v", "format": "pt"},
        ),
        save(
            {
                "e": torch.randn(3, 2, 2, generator=gen).to(torch.float16),
                "z": torch.zeros(0, 3),
                "u": torch.arange(7, dtype=torch.uint8),
                "flag": torch.tensor([True, False]),
            }
        ),
        save({"m": torch.randn(2, 2, generator=gen).double()}),
        save({"r": torch.randn(9, 3, generator=gen).to(torch.bfloat16), "s": torch.randn(4, 2, generator=gen)}),
    ]


def split(content: bytes) -> tuple[int, bytes, bytes]:
    (length,) = struct.unpack("<Q", content[:8])
    return length, content[8 : 8 + length], content[8 + length :]


def assemble(header: bytes, data: bytes, declared: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if declared is None else declared) + header + data


# --------------------------------------------------------------------------------------------------
# mutators: (rng, valid seed file) -> (description, mutated bytes)
# --------------------------------------------------------------------------------------------------


def flip_bytes(rng: random.Random, content: bytes) -> tuple[str, bytes]:
    buf = bytearray(content)
    picks = [rng.randrange(len(buf)) for _ in range(rng.randint(1, 4))]
    for pos in picks:
        buf[pos] ^= rng.randint(1, 255)
    return f"flip@{picks}", bytes(buf)


def truncate_or_extend(rng: random.Random, content: bytes) -> tuple[str, bytes]:
    if rng.random() < 0.7:
        cut = rng.randrange(len(content))
        return f"truncate@{cut}", content[:cut]
    extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return f"extend+{len(extra)}", content + extra


def corrupt_length_field(rng: random.Random, content: bytes) -> tuple[str, bytes]:
    length, header, data = split(content)
    choices = [
        0,
        1,
        length - 1,
        length + 1,
        length + rng.randint(2, 64),
        max(0, length - rng.randint(2, 64)),
        len(content),
        len(content) - 8,
        100_000_001,
        2**63,
        2**64 - 1,
        rng.randrange(2**64),
    ]
    declared = rng.choice(choices)
    return f"length={declared}", assemble(header, data, declared)


ALPHABET = '{}[]:,"0123456789-.eE tfnaluFIUB_\\x'


def mutate_header_text(rng: random.Random, content: bytes) -> tuple[str, bytes]:
    _, header, data = split(content)
    text = bytearray(header)
    op = rng.choice(["replace", "insert", "delete", "dup", "bytes", "digits", "nest"])
    pos = rng.randrange(len(text))
    if op == "replace":
        text[pos] = ord(rng.choice(ALPHABET))
    elif op == "insert":
        text[pos:pos] = rng.choice(ALPHABET).encode()
    elif op == "delete":
        del text[pos]
    elif op == "dup":  # duplicate the first tensor entry: a duplicate key
        parsed = json.loads(header)
        name = next(k for k in parsed if k != "__metadata__")
        text = bytearray(b'{"' + name.encode() + b'": ' + json.dumps(parsed[name]).encode() + b", " + header[1:])
    elif op == "bytes":
        text[pos] = rng.randrange(128, 256)  # invalid UTF-8 more often than not
    elif op == "digits":  # an integer literal longer than Python's int-parsing limit
        text[pos:pos] = b"9" * rng.choice([10, 400, 5000])
    else:
        depth = rng.choice([10, 5000])
        text[pos:pos] = b"[" * depth + b"]" * depth
    return f"text:{op}@{pos}", assemble(bytes(text), data)


def _entry_names(header: dict[str, Any]) -> list[str]:
    return [k for k in header if k != "__metadata__"]


def _mutate_value(rng: random.Random, value: Any) -> Any:
    return rng.choice([None, True, -1, 1.5, "7", [], {}, 10**20, value])


def mutate_header_json(rng: random.Random, content: bytes) -> tuple[str, bytes]:
    _, header_bytes, data = split(content)
    header: dict[str, Any] = json.loads(header_bytes)
    names = _entry_names(header)
    name = rng.choice(names)
    entry: dict[str, Any] = header[name]
    op = rng.choice(
        ["dtype", "shape", "offsets", "offsets", "drop", "extra", "entry", "metadata", "swap", "overlap", "rename"]
    )
    if op == "dtype":
        entry["dtype"] = rng.choice([*DTYPES, *DTYPES, "F33", "", "f32", "F4", 1, None])
    elif op == "shape":
        shape = list(entry["shape"])
        kind = rng.choice(["append", "drop", "elem", "whole"])
        if kind == "append":
            shape.insert(rng.randrange(len(shape) + 1), rng.choice([0, 1, 2, 3]))
        elif kind == "drop" and shape:
            shape.pop(rng.randrange(len(shape)))
        elif kind == "elem" and shape:
            shape[rng.randrange(len(shape))] = _mutate_value(rng, rng.choice([0, 1, 2, 2**62]))
        else:
            shape = _mutate_value(rng, shape)
        entry["shape"] = shape
    elif op == "offsets":
        begin, end = entry["data_offsets"]
        kind = rng.choice(["swap", "shift", "end", "begin", "short", "long", "elem"])
        delta = rng.choice([1, 2, 4, 8, 1000])
        if kind == "swap":
            offsets: Any = [end, begin]
        elif kind == "shift":
            offsets = [begin + delta, end + delta]
        elif kind == "end":
            offsets = [begin, end + rng.choice([-delta, delta])]
        elif kind == "begin":
            offsets = [begin - rng.choice([delta, begin + 1]), end]
        elif kind == "short":
            offsets = [begin]
        elif kind == "long":
            offsets = [begin, end, end]
        else:
            offsets = [begin, _mutate_value(rng, end)]
        entry["data_offsets"] = offsets
    elif op == "drop":
        del entry[rng.choice(["dtype", "shape", "data_offsets"])]
    elif op == "extra":
        entry[rng.choice(["x", "offsets", "DTYPE"])] = 1
    elif op == "entry":
        header[name] = _mutate_value(rng, None)
    elif op == "metadata":
        header["__metadata__"] = rng.choice([{"a": 1}, {"a": None}, [], "x", None, {"ok": "yes"}, {}])
    elif op == "swap" and len(names) > 1:  # exchange data_offsets of two entries (valid iff sizes agree)
        other = header[rng.choice([n for n in names if n != name])]
        entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
    elif op == "overlap":  # a second tensor over the same bytes
        header[name + "_copy"] = dict(entry)
    else:
        header[name + "_renamed"] = header.pop(name)
    text = json.dumps(header, separators=rng.choice([(",", ":"), (", ", ": ")])).encode()
    text += b" " * rng.choice([0, 0, 3, (-len(text)) % 8])
    return f"json:{op}:{name}", assemble(text, data)


MUTATORS: list[Callable[[random.Random, bytes], tuple[str, bytes]]] = [
    flip_bytes,
    truncate_or_extend,
    corrupt_length_field,
    mutate_header_text,
    mutate_header_json,
    mutate_header_json,
]


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


def check_reads(path: Path, content: bytes, rng: random.Random) -> int:
    """Read every tensor three ways and compare with the raw bytes the header points at."""
    with SafetensorsReader(path) as reader:
        start = reader.header.data_start
        for name in reader.names:
            info = reader.info(name)
            expected = content[start + info.begin : start + info.end]
            assert tensor_bytes(reader.read_tensor(name)) == expected, name
            limit = info.itemsize * rng.randint(1, 9)
            flat = b"".join(tensor_bytes(c.data) for c in reader.iter_chunks(name, limit))
            assert flat == expected, name
            if len(info.shape) == 2 and info.shape[0] > 0:
                a = rng.randrange(info.shape[0])
                b = rng.randint(a, info.shape[0])
                row_bytes = info.shape[1] * info.itemsize
                got = tensor_bytes(reader.read_rows(name, a, b))
                assert got == expected[a * row_bytes : b * row_bytes], name
        return len(reader.names)


def test_ten_thousand_mutated_files_parse_or_raise_typed_errors(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    seeds = seed_files()
    outcomes: Counter[str] = Counter()
    tensors_read = 0
    total = 0
    for mutator in MUTATORS:
        for _ in range(CASES_PER_MUTATOR):
            description, content = mutator(rng, rng.choice(seeds))
            total += 1
            # A fresh name per case: rewriting one file in place makes ext4 flush on every truncate.
            path = tmp_path / f"case{total}.safetensors"
            path.write_bytes(content)
            try:
                tensors_read += check_reads(path, content, rng)
                outcomes["valid"] += 1
            except errors.SafetensorsFormatError as exc:
                outcomes[type(exc).__name__] += 1
            except BaseException as exc:
                exc.add_note(f"fuzz case {total}: {mutator.__name__} {description}")
                raise
            finally:
                path.unlink()
    print(f"{total} cases: {dict(outcomes.most_common())}")
    assert total >= 10_000
    assert outcomes["LibraryRejectedFile"] == 0, "validation accepted a file the safetensors library refuses"
    assert outcomes["valid"] >= 500, outcomes  # mutations that keep the file valid are exercised too
    assert tensors_read > outcomes["valid"]
    expected_kinds = {
        "FileTooSmall",
        "HeaderTooLarge",
        "TruncatedHeader",
        "InvalidHeaderEncoding",
        "InvalidHeaderJSON",
        "DuplicateKey",
        "InvalidMetadata",
        "InvalidTensorEntry",
        "UnknownDtype",
        "InvalidShape",
        "InvalidDataOffsets",
        "ShapeSizeMismatch",
        "OffsetOutOfBounds",
        "OverlappingTensors",
        "DataGap",
        "IncompleteCoverage",
    }
    assert expected_kinds <= set(outcomes), expected_kinds - set(outcomes)
