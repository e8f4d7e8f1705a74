"""Typed errors raised by :mod:`crucible`.

Every failure mode has its own class so callers (and tests) can react to the exact kind of problem,
and every message names the file, tensor, field or path involved and says what to do about it.

Hierarchy::

    CrucibleError
    ├── SafetensorsFormatError          a file is not a valid safetensors file (one subclass per defect)
    ├── SafetensorsUsageError           a valid file was asked for something it does not hold
    ├── FactorizationError              thin SVD / SVF inputs that cannot be used
    ├── RouterVectorError               the TRINITY vector or its layout is unusable
    ├── FactorCacheError                the on-disk SVD factor cache is unusable
    └── TensorPatchError                parameter paths, dtype policy and in-place patches
"""

from __future__ import annotations


class CrucibleError(Exception):
    """Base class of every error raised by :mod:`crucible`."""


# --------------------------------------------------------------------------------------------------
# safetensors: malformed files
# --------------------------------------------------------------------------------------------------


class SafetensorsFormatError(CrucibleError):
    """The file is not a well-formed safetensors file.

    Attributes:
        path: the file, when known (``None`` for in-memory buffers).
        tensor: the tensor entry at fault, when the defect belongs to one.
        field: the header field at fault (``"dtype"``, ``"shape"``, ``"data_offsets"``, ...), when known.
    """

    def __init__(
        self, message: str, *, path: str | None = None, tensor: str | None = None, field: str | None = None
    ) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{message}")
        self.path = path
        self.tensor = tensor
        self.field = field


class FileTooSmall(SafetensorsFormatError):
    """The file is shorter than the 8-byte header-length prefix."""


class HeaderTooLarge(SafetensorsFormatError):
    """The declared JSON header length exceeds the configured bound (100 MB by default)."""


class TruncatedHeader(SafetensorsFormatError):
    """The declared JSON header length runs past the end of the file."""


class InvalidHeaderEncoding(SafetensorsFormatError):
    """The JSON header is not valid UTF-8."""


class InvalidHeaderJSON(SafetensorsFormatError):
    """The header is not a JSON object (syntax error, wrong start byte, non-finite number, too deep)."""


class DuplicateKey(SafetensorsFormatError):
    """A JSON object in the header holds the same key twice (tensor name or entry field)."""


class InvalidMetadata(SafetensorsFormatError):
    """``__metadata__`` is not a JSON object mapping strings to strings."""


class InvalidTensorEntry(SafetensorsFormatError):
    """A tensor entry is not an object with exactly ``dtype``, ``shape`` and ``data_offsets``."""


class UnknownDtype(SafetensorsFormatError):
    """A tensor's ``dtype`` is not one this reader supports."""


class InvalidShape(SafetensorsFormatError):
    """A tensor's ``shape`` is not a list of non-negative integers."""


class InvalidDataOffsets(SafetensorsFormatError):
    """A tensor's ``data_offsets`` is not ``[begin, end]`` with integers ``0 <= begin <= end``."""


class ShapeSizeMismatch(SafetensorsFormatError):
    """``end - begin`` differs from ``prod(shape) * itemsize``."""


class OffsetOutOfBounds(SafetensorsFormatError):
    """A tensor's byte range ends past the end of the data buffer."""


class OverlappingTensors(SafetensorsFormatError):
    """Two tensors' byte ranges overlap."""


class DataGap(SafetensorsFormatError):
    """Bytes of the data buffer between tensors belong to no tensor (the spec forbids holes)."""


class IncompleteCoverage(SafetensorsFormatError):
    """The data buffer holds trailing bytes after the last tensor (the spec requires full coverage)."""


class TruncatedTensorData(SafetensorsFormatError):
    """Reading a tensor returned fewer bytes than the header promised (the file changed or shrank)."""


class LibraryRejectedFile(SafetensorsFormatError):
    """The ``safetensors`` library refused a file that passed this module's validation."""


# --------------------------------------------------------------------------------------------------
# safetensors: valid file, invalid request
# --------------------------------------------------------------------------------------------------


class SafetensorsUsageError(CrucibleError):
    """A well-formed file was asked for something it cannot give."""


class TensorNotFound(SafetensorsUsageError):
    """The requested tensor name is not in the file."""


class InvalidRowRange(SafetensorsUsageError):
    """A row range is outside ``[0, rows]`` or reversed."""


class NotAMatrix(SafetensorsUsageError):
    """A row-range read was asked of a tensor that is not 2-D."""


class InvalidChunkSize(SafetensorsUsageError):
    """The chunk bound is too small to hold one element (or one row, for row chunks)."""


# --------------------------------------------------------------------------------------------------
# factorization / SVF
# --------------------------------------------------------------------------------------------------


class FactorizationError(CrucibleError):
    """Base class of thin-SVD and SVF errors."""


class InvalidMatrix(FactorizationError):
    """The matrix is not 2-D, not floating point, empty, or holds NaN/inf."""


class OffsetLengthMismatch(FactorizationError):
    """The SVF offsets ``d`` do not have one value per singular value."""


class NonFiniteOffsets(FactorizationError):
    """The SVF offsets ``d`` hold NaN or inf."""


class DegenerateScale(FactorizationError):
    """``sum(S * (1 + d))`` is zero or negative, so the SVF energy rescale is undefined."""


class FactorShapeMismatch(FactorizationError):
    """Cached factors belong to a matrix of another shape."""


# --------------------------------------------------------------------------------------------------
# TRINITY router vector
# --------------------------------------------------------------------------------------------------


class RouterVectorError(CrucibleError):
    """Base class of router-vector loading and splitting errors."""


class UnsupportedVectorFile(RouterVectorError):
    """The vector file's suffix is neither ``.npy`` nor ``.safetensors``."""


class VectorKeyNotFound(RouterVectorError):
    """The safetensors file does not hold the expected vector key."""


class InvalidVector(RouterVectorError):
    """The vector is not a 1-D floating-point array of the expected length, or holds NaN/inf."""


class InvalidLayout(RouterVectorError):
    """The SVF slot layout is inconsistent (overlaps, gaps, wrong sizes, head does not fit)."""


class DigestMismatch(RouterVectorError):
    """A file's sha256 differs from the digest it is pinned to."""


# --------------------------------------------------------------------------------------------------
# factor cache
# --------------------------------------------------------------------------------------------------


class FactorCacheError(CrucibleError):
    """Base class of SVD factor cache errors."""


class CacheCorrupt(FactorCacheError):
    """A cache file exists for the key but its contents do not match what the key promises."""


class InvalidCacheRequest(FactorCacheError):
    """The matrices handed to the cache are unusable (duplicate names, non-2-D, empty)."""


# --------------------------------------------------------------------------------------------------
# tensor patches
# --------------------------------------------------------------------------------------------------


class TensorPatchError(CrucibleError):
    """Base class of parameter-path, dtype-policy and patch errors."""


class InvalidParamPath(TensorPatchError):
    """A dotted parameter path is malformed."""


class ParameterNotFound(TensorPatchError):
    """A parameter path does not resolve to a parameter or buffer."""


class PatchShapeMismatch(TensorPatchError):
    """The new value's shape differs from the target parameter's shape."""


class UnsupportedDtype(TensorPatchError):
    """The compute or target dtype is not a supported floating-point dtype."""


class NonFiniteResult(TensorPatchError):
    """The patched value holds NaN or inf after casting to the target dtype."""


class AliasedParameter(TensorPatchError):
    """The target shares storage with other parameters (tied weights) and aliasing was not allowed."""


class InvalidPatchLabel(TensorPatchError):
    """A formula id or adapter ref is empty, too long or holds forbidden characters."""


class IncompleteAdapter(TensorPatchError):
    """An adapter application names a matrix for which offsets or factors are missing."""
