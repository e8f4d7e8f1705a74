"""Strictly validated, lazy safetensors reading: header only, one tensor, a row range, bounded chunks.

The ``safetensors`` package reads whole tensors well (:func:`safetensors.safe_open`) and is used here for
that. What it lacks, and what this module adds:

* **Typed validation errors.** The library raises one ``SafetensorError`` with a message string; here
  every defect has its own subclass of :class:`~crucible.errors.SafetensorsFormatError` naming the
  tensor and field (see :mod:`crucible.errors`). The header is validated completely before any tensor
  byte is touched, with at least the strictness of the reference implementation (so a file accepted
  here is never refused by the library; the fuzz test checks that).
* **Bounded allocations.** The header length is checked against a bound (100 MB by default, the
  spec's limit) *and* the file size before it is read; every tensor's byte range is checked against
  the file size, so no read allocates more than the file holds.
* **Row ranges** of a 2-D tensor (``seek`` + ``readinto`` of exactly those rows' bytes) and **chunked
  streaming** in pieces of at most ``max_chunk_bytes`` bytes, flat or as whole-row blocks.

Layout (safetensors spec): 8-byte little-endian u64 ``N``; ``N`` bytes of UTF-8 JSON starting with
``{`` (may be right-padded with spaces); then the data buffer. The JSON maps tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the buffer) plus an optional
``"__metadata__"`` string-to-string map. Tensors must tile the buffer exactly: no overlaps, no holes,
no trailing bytes.

Return types: tensors are ``torch.Tensor`` in the file's dtype, bf16 and float8 included (numpy has no
bf16). :func:`to_numpy` converts; it upcasts bf16/f16/float8 to float32 exactly (every such value is
representable in float32). Data is little-endian; this module assumes a little-endian host.

Example::

    with SafetensorsReader("model.safetensors") as st:
        emb = st.info("model.embed_tokens.weight")           # TensorInfo, no data read
        rows = st.read_rows("model.embed_tokens.weight", 100, 164)
        for block in st.iter_row_blocks("model.embed_tokens.weight", max_chunk_bytes=64 << 20):
            ...
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, BinaryIO, Final

import safetensors
import torch
from numpy.typing import NDArray

from crucible.errors import (
    DataGap,
    DuplicateKey,
    FileTooSmall,
    HeaderTooLarge,
    IncompleteCoverage,
    InvalidChunkSize,
    InvalidDataOffsets,
    InvalidHeaderEncoding,
    InvalidHeaderJSON,
    InvalidMetadata,
    InvalidRowRange,
    InvalidShape,
    InvalidTensorEntry,
    LibraryRejectedFile,
    NotAMatrix,
    OffsetOutOfBounds,
    OverlappingTensors,
    ShapeSizeMismatch,
    TensorNotFound,
    TruncatedHeader,
    TruncatedTensorData,
    UnknownDtype,
)

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("crucible.safetensors_io assumes a little-endian host")

#: The spec's bound on the JSON header (the reference implementation refuses anything larger).
MAX_HEADER_BYTES: Final = 100_000_000
#: Length of the little-endian u64 header-length prefix.
PREFIX_BYTES: Final = 8
METADATA_KEY: Final = "__metadata__"
_ENTRY_FIELDS: Final = frozenset({"dtype", "shape", "data_offsets"})
#: Byte counts above this cannot be real (offsets are u64 in the reference implementation).
_NBYTES_LIMIT: Final = 2**64

#: safetensors dtype name -> (torch dtype, bytes per element). Sub-byte float formats are not supported.
DTYPES: Final[Mapping[str, tuple[torch.dtype, int]]] = MappingProxyType(
    {
        "BOOL": (torch.bool, 1),
        "U8": (torch.uint8, 1),
        "I8": (torch.int8, 1),
        "F8_E4M3": (torch.float8_e4m3fn, 1),
        "F8_E5M2": (torch.float8_e5m2, 1),
        "I16": (torch.int16, 2),
        "U16": (torch.uint16, 2),
        "F16": (torch.float16, 2),
        "BF16": (torch.bfloat16, 2),
        "I32": (torch.int32, 4),
        "U32": (torch.uint32, 4),
        "F32": (torch.float32, 4),
        "I64": (torch.int64, 8),
        "U64": (torch.uint64, 8),
        "F64": (torch.float64, 8),
    }
)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One validated header entry. Offsets are relative to the start of the data buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype the tensor is read as."""
        return DTYPES[self.dtype][0]

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return DTYPES[self.dtype][1]

    @property
    def nbytes(self) -> int:
        """Bytes the tensor occupies in the file."""
        return self.end - self.begin

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """A fully validated header.

    Attributes:
        header_bytes: the JSON header length ``N``.
        data_start: absolute file offset of the data buffer (``8 + N``).
        file_size: total file size in bytes.
        tensors: validated entries by name, in header order.
        metadata: the ``__metadata__`` map (empty when absent).
    """

    header_bytes: int
    data_start: int
    file_size: int
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]


# --------------------------------------------------------------------------------------------------
# header validation
# --------------------------------------------------------------------------------------------------


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-finite number {token} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(f"key {key!r} appears twice in one JSON object of the header", field=key)
        out[key] = value
    return out


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass: exclude it explicitly


def _parse_json(raw: bytes | bytearray, path: str | None) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidHeaderEncoding(
            f"header is not valid UTF-8 at byte {exc.start}; regenerate the file with a safetensors writer",
            path=path,
        ) from exc
    if not text.startswith("{"):
        raise InvalidHeaderJSON(
            f"header must start with '{{', found {text[:1]!r}; this is not a safetensors file", path=path
        )
    try:
        parsed = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except DuplicateKey as exc:
        raise DuplicateKey(str(exc), path=path, field=exc.field) from None
    except RecursionError:
        raise InvalidHeaderJSON("header JSON is nested too deeply", path=path) from None
    except ValueError as exc:  # json.JSONDecodeError, over-long integer literals, NaN/Infinity
        raise InvalidHeaderJSON(f"header is not valid JSON: {exc}", path=path) from None
    if not isinstance(parsed, dict):
        raise InvalidHeaderJSON("header JSON must be an object", path=path)
    return parsed


def _validate_metadata(value: object, path: str | None) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidMetadata(
            f"{METADATA_KEY} must be an object of strings, got {type(value).__name__}", path=path
        )
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidMetadata(
                f"{METADATA_KEY}[{key!r}] must be a string, got {type(item).__name__}", path=path, field=key
            )
    return dict(value)


def _bounded_nbytes(shape: list[int], itemsize: int, limit: int) -> int | None:
    """``prod(shape) * itemsize``, or ``None`` as soon as it exceeds ``limit``.

    Stops early so a hostile header (a million huge dimensions) cannot make the product a giant integer.
    """
    if 0 in shape:
        return 0
    total = itemsize
    for dim in shape:
        total *= dim
        if total > limit:
            return None
    return total


def _validate_entry(name: str, entry: object, buffer_len: int, path: str | None) -> TensorInfo:
    if not isinstance(entry, dict):
        raise InvalidTensorEntry(
            f"tensor {name!r}: entry must be an object, got {type(entry).__name__}", path=path, tensor=name
        )
    missing = sorted(_ENTRY_FIELDS - entry.keys())
    if missing:
        raise InvalidTensorEntry(
            f"tensor {name!r}: missing field {missing[0]!r}", path=path, tensor=name, field=missing[0]
        )
    extra = sorted(entry.keys() - _ENTRY_FIELDS)
    if extra:
        raise InvalidTensorEntry(
            f"tensor {name!r}: unknown field {extra[0]!r}", path=path, tensor=name, field=extra[0]
        )
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise UnknownDtype(
            f"tensor {name!r}: dtype {dtype!r} is not supported (supported: {', '.join(DTYPES)})",
            path=path,
            tensor=name,
            field="dtype",
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise InvalidShape(
            f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r:.200}",
            path=path,
            tensor=name,
            field="shape",
        )
    offsets = entry["data_offsets"]
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(o) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise InvalidDataOffsets(
            f"tensor {name!r}: data_offsets must be [begin, end] with integers 0 <= begin <= end, "
            f"got {offsets!r:.200}",
            path=path,
            tensor=name,
            field="data_offsets",
        )
    begin, end = offsets
    itemsize = DTYPES[dtype][1]
    expected = _bounded_nbytes(shape, itemsize, limit=_NBYTES_LIMIT)
    if expected is None or end - begin != expected:
        needs = "more than 2**64" if expected is None else str(expected)
        raise ShapeSizeMismatch(
            f"tensor {name!r}: data_offsets span {end - begin} bytes but shape {shape!r:.200} x {itemsize} "
            f"bytes ({dtype}) needs {needs}",
            path=path,
            tensor=name,
            field="data_offsets",
        )
    if end > buffer_len:
        raise OffsetOutOfBounds(
            f"tensor {name!r}: data_offsets end {end} is past the data buffer's {buffer_len} bytes "
            "(file truncated?)",
            path=path,
            tensor=name,
            field="data_offsets",
        )
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _validate_coverage(tensors: Mapping[str, TensorInfo], buffer_len: int, path: str | None) -> None:
    cursor = 0
    previous: str | None = None
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end, t.name)):
        if info.begin < cursor:
            raise OverlappingTensors(
                f"tensor {info.name!r} (bytes {info.begin}..{info.end}) overlaps tensor {previous!r} "
                f"(which ends at {cursor})",
                path=path,
                tensor=info.name,
                field="data_offsets",
            )
        if info.begin > cursor:
            after = f"after tensor {previous!r}" if previous is not None else "at the start of the buffer"
            raise DataGap(
                f"bytes {cursor}..{info.begin} {after} belong to no tensor (next is {info.name!r})",
                path=path,
                tensor=info.name,
                field="data_offsets",
            )
        cursor = info.end
        previous = info.name
    if cursor != buffer_len:
        raise IncompleteCoverage(
            f"data buffer has {buffer_len - cursor} trailing bytes after the last tensor "
            f"(tensors cover {cursor} of {buffer_len})",
            path=path,
        )


def _readinto_exact(fp: BinaryIO | io.RawIOBase, buf: bytearray) -> int:
    """Fill ``buf`` from ``fp`` (reads of regular files may come back short, e.g. above 2 GiB on Linux);
    returns the number of bytes read, less than ``len(buf)`` only at end of file."""
    view = memoryview(buf)
    filled = 0
    while filled < len(buf):
        got = fp.readinto(view[filled:])  # type: ignore[union-attr]
        if not got:
            break
        filled += got
    return filled


def _read_exact(fp: BinaryIO | io.RawIOBase, count: int) -> bytearray:
    """Read up to ``count`` bytes (fewer only at end of file). ``count`` is bounded by the caller."""
    buf = bytearray(count)
    del buf[_readinto_exact(fp, buf) :]
    return buf


def parse_header(
    fp: BinaryIO | io.RawIOBase, file_size: int, *, path: str | None = None, max_header_bytes: int = MAX_HEADER_BYTES
) -> SafetensorsHeader:
    """Read and fully validate the header of a safetensors stream positioned anywhere.

    Args:
        fp: a seekable binary file object holding the whole file.
        file_size: the total size of the file in bytes.
        path: used in error messages only.
        max_header_bytes: bound on the JSON header length, checked before anything is allocated.

    Raises:
        SafetensorsFormatError: one subclass per defect (see :mod:`crucible.errors`).
    """
    if file_size < PREFIX_BYTES:
        raise FileTooSmall(
            f"file is {file_size} bytes, shorter than the {PREFIX_BYTES}-byte header length prefix", path=path
        )
    fp.seek(0)
    prefix = _read_exact(fp, PREFIX_BYTES)
    if len(prefix) != PREFIX_BYTES:
        raise FileTooSmall(f"could read only {len(prefix)} of the {PREFIX_BYTES} prefix bytes", path=path)
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > max_header_bytes:
        raise HeaderTooLarge(
            f"declared header length {header_len} exceeds the bound of {max_header_bytes} bytes", path=path
        )
    if header_len > file_size - PREFIX_BYTES:
        raise TruncatedHeader(
            f"declared header length {header_len} runs past the end of the {file_size}-byte file", path=path
        )
    raw = _read_exact(fp, header_len)
    if len(raw) != header_len:
        raise TruncatedHeader(f"could read only {len(raw)} of {header_len} header bytes", path=path)
    parsed = _parse_json(raw, path)
    data_start = PREFIX_BYTES + header_len
    buffer_len = file_size - data_start
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in parsed.items():
        if name == METADATA_KEY:
            metadata = _validate_metadata(entry, path)
        else:
            tensors[name] = _validate_entry(name, entry, buffer_len, path)
    _validate_coverage(tensors, buffer_len, path)
    return SafetensorsHeader(
        header_bytes=header_len,
        data_start=data_start,
        file_size=file_size,
        tensors=MappingProxyType(tensors),
        metadata=MappingProxyType(metadata),
    )


def read_header(path: str | os.PathLike[str], *, max_header_bytes: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """Validate and return the header of the safetensors file at ``path`` without reading tensor data."""
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        return parse_header(fp, size, path=os.fspath(path), max_header_bytes=max_header_bytes)


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TensorChunk:
    """A piece of a tensor streamed by :meth:`SafetensorsReader.iter_chunks`.

    Attributes:
        start: index of the first element (flat, row-major) or first row (row blocks).
        data: the elements (1-D for flat chunks, ``[rows, ...]`` for row blocks).
    """

    start: int
    data: torch.Tensor


def to_numpy(tensor: torch.Tensor) -> NDArray[Any]:
    """Convert a tensor read by this module to numpy; bf16 and float8 become float32.

    bf16 and float8 have no numpy dtype; their values are exactly representable in float32, so the
    upcast loses nothing.
    """
    if tensor.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        tensor = tensor.to(torch.float32)
    return tensor.numpy()


class SafetensorsReader:
    """Lazy reader over one safetensors file; validates the header on open.

    Use as a context manager (or call :meth:`close`). Only the header is read on open; each read
    method touches exactly the bytes it returns (whole-tensor reads go through
    :func:`safetensors.safe_open`, which memory-maps the file).

    Args:
        path: the file.
        max_header_bytes: bound on the JSON header length.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.path = os.fspath(path)
        # Unbuffered: every read is an exact seek + readinto, and nothing is read ahead of validation.
        self._fp: io.FileIO = open(self.path, "rb", buffering=0)  # closed by close() / __exit__
        self._library: Any = None
        try:
            size = os.fstat(self._fp.fileno()).st_size
            self.header = parse_header(self._fp, size, path=self.path, max_header_bytes=max_header_bytes)
        except BaseException:
            self._fp.close()
            raise

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the file handle and the library's memory map."""
        self._library = None
        self._fp.close()

    @property
    def names(self) -> tuple[str, ...]:
        """Tensor names in header order."""
        return tuple(self.header.tensors)

    @property
    def metadata(self) -> Mapping[str, str]:
        """The ``__metadata__`` map (empty when absent)."""
        return self.header.metadata

    def info(self, name: str) -> TensorInfo:
        """The validated entry for ``name``.

        Raises:
            TensorNotFound: the file has no tensor of that name.
        """
        try:
            return self.header.tensors[name]
        except KeyError:
            shown = ", ".join(repr(n) for n in list(self.header.tensors)[:8])
            raise TensorNotFound(f"{self.path}: no tensor named {name!r} (file holds: {shown})") from None

    def read_tensor(self, name: str) -> torch.Tensor:
        """Read a whole tensor (a fresh CPU tensor in the file's dtype).

        Raises:
            TensorNotFound: unknown name.
            LibraryRejectedFile: ``safetensors`` refused the file although it validated here.
        """
        info = self.info(name)
        if info.numel == 0:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        try:
            if self._library is None:
                self._library = safetensors.safe_open(self.path, framework="pt")
            tensor: torch.Tensor = self._library.get_tensor(name)
        except safetensors.SafetensorError as exc:
            raise LibraryRejectedFile(
                f"safetensors refused tensor {name!r}: {exc}", path=self.path, tensor=name
            ) from exc
        return tensor

    def _read_bytes(self, info: TensorInfo, offset: int, count: int) -> torch.Tensor:
        """Read ``count`` bytes at ``offset`` inside ``info``'s byte range as a 1-D uint8 tensor."""
        if count == 0:
            return torch.empty(0, dtype=torch.uint8)
        buf = bytearray(count)
        self._fp.seek(self.header.data_start + info.begin + offset)
        got = _readinto_exact(self._fp, buf)
        if got != count:
            raise TruncatedTensorData(
                f"tensor {info.name!r}: read {got} of {count} bytes at offset {offset}; the file changed "
                "or was truncated after its header was validated",
                path=self.path,
                tensor=info.name,
            )
        return torch.frombuffer(buf, dtype=torch.uint8)

    def _decode(self, raw: torch.Tensor, info: TensorInfo, shape: tuple[int, ...]) -> torch.Tensor:
        if raw.numel() == 0:
            return torch.empty(shape, dtype=info.torch_dtype)
        return raw.view(info.torch_dtype).reshape(shape)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Read rows ``[start, stop)`` of a 2-D tensor, touching only those rows' bytes.

        Raises:
            TensorNotFound: unknown name.
            NotAMatrix: the tensor is not 2-D.
            InvalidRowRange: not ``0 <= start <= stop <= rows``.
        """
        info = self.info(name)
        if len(info.shape) != 2:
            raise NotAMatrix(f"{self.path}: tensor {name!r} has shape {info.shape}; row reads need 2-D")
        rows, cols = info.shape
        if not (_is_int(start) and _is_int(stop) and 0 <= start <= stop <= rows):
            raise InvalidRowRange(
                f"{self.path}: rows [{start}, {stop}) are outside tensor {name!r} with {rows} rows"
            )
        row_bytes = cols * info.itemsize
        raw = self._read_bytes(info, start * row_bytes, (stop - start) * row_bytes)
        return self._decode(raw, info, (stop - start, cols))

    def iter_chunks(self, name: str, max_chunk_bytes: int) -> Iterator[TensorChunk]:
        """Stream a tensor as flat 1-D pieces of at most ``max_chunk_bytes`` bytes (whole elements).

        Raises:
            TensorNotFound: unknown name.
            InvalidChunkSize: ``max_chunk_bytes`` is smaller than one element.
        """
        info = self.info(name)
        per_chunk = _elements_per_chunk(info, max_chunk_bytes, self.path)
        for first in range(0, info.numel, per_chunk):
            count = min(per_chunk, info.numel - first)
            raw = self._read_bytes(info, first * info.itemsize, count * info.itemsize)
            yield TensorChunk(start=first, data=self._decode(raw, info, (count,)))

    def iter_row_blocks(self, name: str, max_chunk_bytes: int) -> Iterator[TensorChunk]:
        """Stream a 2-D tensor as blocks of whole rows, each at most ``max_chunk_bytes`` bytes.

        Raises:
            TensorNotFound: unknown name.
            NotAMatrix: the tensor is not 2-D.
            InvalidChunkSize: one row is larger than ``max_chunk_bytes``.
        """
        info = self.info(name)
        if len(info.shape) != 2:
            raise NotAMatrix(f"{self.path}: tensor {name!r} has shape {info.shape}; row blocks need 2-D")
        rows, cols = info.shape
        row_bytes = max(cols * info.itemsize, 1)
        if not _is_int(max_chunk_bytes) or max_chunk_bytes < row_bytes:
            raise InvalidChunkSize(
                f"{self.path}: max_chunk_bytes={max_chunk_bytes!r} cannot hold one {row_bytes}-byte row "
                f"of {name!r}"
            )
        per_block = max_chunk_bytes // row_bytes
        for first in range(0, rows, per_block):
            last = min(first + per_block, rows)
            yield TensorChunk(start=first, data=self.read_rows(name, first, last))


def _elements_per_chunk(info: TensorInfo, max_chunk_bytes: int, path: str) -> int:
    if not _is_int(max_chunk_bytes) or max_chunk_bytes < info.itemsize:
        raise InvalidChunkSize(
            f"{path}: max_chunk_bytes={max_chunk_bytes!r} cannot hold one {info.itemsize}-byte "
            f"{info.dtype} element of {info.name!r}"
        )
    return max_chunk_bytes // info.itemsize


def read_tensor(path: str | os.PathLike[str], name: str) -> torch.Tensor:
    """Validate the file at ``path`` and read one tensor from it."""
    with SafetensorsReader(path) as reader:
        return reader.read_tensor(name)
