"""sha256 digests of files and tensors, computed without copying large buffers.

A tensor's digest is the sha256 of its bytes as safetensors would store them: row-major (C order),
little-endian, no header. Two tensors with equal dtype, shape and values therefore have equal digests,
and the digest of a tensor read from a safetensors file equals the digest of its byte range there.
"""

from __future__ import annotations

import hashlib
import os

import torch

_FILE_CHUNK = 8 << 20
#: Tensors are hashed in slices of this many bytes so a non-contiguous tensor is never copied whole.
_TENSOR_CHUNK = 64 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Lowercase hex sha256 of a file, read in 8 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while chunk := fp.read(_FILE_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def update_with_tensor(digest: hashlib._Hash, tensor: torch.Tensor) -> None:
    """Feed a tensor's row-major bytes into ``digest`` (CPU copies are made slice by slice)."""
    tensor = tensor.detach()
    if tensor.dim() > 1 and not tensor.is_contiguous():
        for sub in tensor:  # row by row, so a transposed view is never materialised whole
            update_with_tensor(digest, sub)
        return
    flat = tensor.reshape(-1)  # a view: 0-D/1-D always, N-D because contiguous
    if flat.numel() == 0:
        return
    per_slice = max(1, _TENSOR_CHUNK // flat.element_size())
    for start in range(0, flat.numel(), per_slice):
        part = flat[start : start + per_slice].to("cpu").contiguous()
        digest.update(part.view(torch.uint8).numpy().data)


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Lowercase hex sha256 of a tensor's row-major little-endian bytes (dtype and shape not included)."""
    digest = hashlib.sha256()
    update_with_tensor(digest, tensor)
    return digest.hexdigest()
