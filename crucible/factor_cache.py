"""On-disk cache of SVF factors for a base model's adapted matrices.

Factoring the nine TRINITY matrices (two of them 151936 x 1024) is the expensive step of applying an
adapter; it depends only on the base weights. This cache computes :class:`~crucible.factorization.SvfFactors`
once per set of base weights and stores them in one safetensors file, so a new adapter vector costs
only :func:`~crucible.factorization.svf_reconstruct`.

**Key.** ``weights_key`` is the sha256 over the factor format version and, per matrix in order, its
name, dtype, shape and the sha256 of its bytes (:func:`crucible.hashing.tensor_sha256`). Callers that
already hold pinned digests of the checkpoint files can pass their own ``key`` instead (it must change
whenever the weights do) and skip hashing.

**File.** ``<root>/svf-factors-<key>.safetensors``, written atomically (temp file + rename). Tensors are
stored once per distinct matrix (tied weights such as Qwen3's ``embed_tokens``/``lm_head`` share one
entry) as ``"<digest>:<m>x<n>.singular_values"`` and ``"<digest>:<m>x<n>.basis"`` (float64); the
metadata holds the format version, the key and the name -> entry map. On load everything is checked
against the request; a mismatch raises :class:`~crucible.errors.CacheCorrupt` (delete the file to
recompute) rather than silently serving wrong factors.

Example::

    cache = FactorCache(Path("~/.cache/trinity-nats/svf").expanduser())
    factor_set = cache.get_or_compute([(name, model.get_parameter(name)) for name in names])
    factor_set.factors["model.embed_tokens.weight"]      # SvfFactors
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

import torch
from safetensors.torch import save_file

from crucible.dtype_policy import dtype_name
from crucible.errors import CacheCorrupt, CrucibleError, InvalidCacheRequest
from crucible.factorization import SvfFactors, compute_factors
from crucible.hashing import tensor_sha256
from crucible.safetensors_io import SafetensorsReader

#: Bump when the factorization or the file layout changes; it is part of every key.
FACTOR_FORMAT_VERSION: Final = "crucible-svf-factors-v1"

Factorizer = Callable[[torch.Tensor], SvfFactors]
NamedMatrices = Sequence[tuple[str, torch.Tensor]]


@dataclass(frozen=True, slots=True)
class FactorSet:
    """Factors of a named set of matrices.

    Attributes:
        key: the cache key.
        path: the cache file.
        factors: per matrix name, in request order.
        from_cache: True when loaded from disk, False when computed by this call.
        factorizations: how many factorizations this call ran (0 on a cache hit).
    """

    key: str
    path: Path
    factors: Mapping[str, SvfFactors]
    from_cache: bool
    factorizations: int


def _entry_id(digest: str, shape: tuple[int, int]) -> str:
    return f"{digest}:{shape[0]}x{shape[1]}"


def _identity_entries(checked: list[tuple[str, torch.Tensor, tuple[int, int]]]) -> dict[str, str]:
    """Entry ids without hashing: matrices that are the same storage view (tied weights) share one."""
    first_by_view: dict[tuple[object, ...], str] = {}
    entries: dict[str, str] = {}
    for name, tensor, shape in checked:
        storage = tensor.untyped_storage().data_ptr()
        view = (storage, tensor.storage_offset(), shape, tensor.stride(), tensor.dtype)
        first = first_by_view.setdefault(view, name)
        entries[name] = f"{first}:{shape[0]}x{shape[1]}"
    return entries


def _check_request(named: NamedMatrices) -> list[tuple[str, torch.Tensor, tuple[int, int]]]:
    if not named:
        raise InvalidCacheRequest("no matrices to factor")
    seen: set[str] = set()
    checked: list[tuple[str, torch.Tensor, tuple[int, int]]] = []
    for name, tensor in named:
        if name in seen:
            raise InvalidCacheRequest(f"matrix name {name!r} appears twice")
        seen.add(name)
        if tensor.dim() != 2 or tensor.numel() == 0 or not tensor.dtype.is_floating_point:
            raise InvalidCacheRequest(
                f"{name!r}: need a non-empty floating 2-D matrix, got {tuple(tensor.shape)} {tensor.dtype}"
            )
        checked.append((name, tensor, (int(tensor.shape[0]), int(tensor.shape[1]))))
    return checked


def weights_key(named: NamedMatrices, digests: Mapping[str, str] | None = None) -> str:
    """The cache key of a named set of matrices (see module docs). ``digests`` may supply precomputed
    per-tensor sha256s by name."""
    outer = hashlib.sha256(FACTOR_FORMAT_VERSION.encode())
    for name, tensor, shape in _check_request(named):
        digest = digests[name] if digests is not None else tensor_sha256(tensor)
        outer.update(json.dumps([name, dtype_name(tensor.dtype), list(shape), digest]).encode())
    return outer.hexdigest()


class FactorCache:
    """Compute-once, load-after SVF factors on disk.

    Args:
        root: directory for cache files (created on first write). Keep it outside the git tree,
            e.g. ``~/.cache/trinity-nats/svf-factors``.
        factorizer: the function that factors one matrix (default
            :func:`crucible.factorization.compute_factors`); injectable for tests and benchmarks.
    """

    def __init__(self, root: str | os.PathLike[str], *, factorizer: Factorizer = compute_factors) -> None:
        self.root = Path(root)
        self._factorizer = factorizer

    def path_for(self, key: str) -> Path:
        """The cache file for ``key``."""
        return self.root / f"svf-factors-{key}.safetensors"

    def get_or_compute(self, named: NamedMatrices, *, key: str | None = None) -> FactorSet:
        """Load the factors of ``named`` from the cache, or compute, store and return them.

        Args:
            named: ``(name, matrix)`` pairs; order is kept in the result.
            key: a caller-supplied key that determines the matrices' contents (e.g. derived from
                pinned checkpoint sha256s); skips hashing the matrices, and tied weights are then
                recognised by shared storage instead of equal digests. Default :func:`weights_key`.

        Raises:
            InvalidCacheRequest: duplicate names, non-2-D or non-float matrices.
            CacheCorrupt: a file exists for the key but does not hold what the key promises.
        """
        checked = _check_request(named)
        if key is None:
            digests = {name: tensor_sha256(tensor) for name, tensor, _ in checked}
            key = weights_key(named, digests)
            entries = {name: _entry_id(digests[name], shape) for name, _, shape in checked}
        else:
            entries = _identity_entries(checked)
        shapes = {name: shape for name, _, shape in checked}
        path = self.path_for(key)
        if path.exists():
            loaded = self._load(path, key, entries, shapes)
            return FactorSet(key=key, path=path, factors=loaded, from_cache=True, factorizations=0)
        by_entry: dict[str, SvfFactors] = {}
        for name, tensor, _ in checked:
            entry = entries[name]
            if entry not in by_entry:  # tied weights: factor once
                by_entry[entry] = self._factorizer(tensor)
        self._store(path, key, entries, by_entry)
        factors = MappingProxyType({name: by_entry[entries[name]] for name, _, _ in checked})
        return FactorSet(key=key, path=path, factors=factors, from_cache=False, factorizations=len(by_entry))

    def _store(
        self, path: Path, key: str, entries: Mapping[str, str], by_entry: Mapping[str, SvfFactors]
    ) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for entry, factors in by_entry.items():
            tensors[f"{entry}.singular_values"] = factors.singular_values.to("cpu", torch.float64).contiguous()
            tensors[f"{entry}.basis"] = factors.basis.to("cpu", torch.float64).contiguous()
        metadata = {"format": FACTOR_FORMAT_VERSION, "key": key, "entries": json.dumps(dict(entries))}
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".svf-factors-", suffix=".tmp", dir=self.root)
        os.close(fd)
        try:
            save_file(tensors, tmp_name, metadata=metadata)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def _load(
        self,
        path: Path,
        key: str,
        entries: Mapping[str, str],
        shapes: Mapping[str, tuple[int, int]],
    ) -> Mapping[str, SvfFactors]:
        def corrupt(why: str) -> CacheCorrupt:
            return CacheCorrupt(f"{path}: {why}; delete the file to recompute the factors")

        try:
            with SafetensorsReader(path) as reader:
                meta = reader.metadata
                if meta.get("format") != FACTOR_FORMAT_VERSION or meta.get("key") != key:
                    raise corrupt(f"metadata {dict(meta)!r:.200} does not match format/key {key}")
                if json.loads(meta.get("entries", "null")) != dict(entries):
                    raise corrupt("its name -> matrix map differs from the request")
                by_entry: dict[str, SvfFactors] = {}
                for name, entry in entries.items():
                    if entry in by_entry:
                        continue
                    shape = shapes[name]
                    k = min(shape)
                    s = reader.read_tensor(f"{entry}.singular_values")
                    basis = reader.read_tensor(f"{entry}.basis")
                    if s.dtype != torch.float64 or tuple(s.shape) != (k,):
                        raise corrupt(f"{entry}.singular_values is {s.dtype} {tuple(s.shape)}, need ({k},) f64")
                    if basis.dtype != torch.float64 or tuple(basis.shape) != (k, k):
                        raise corrupt(f"{entry}.basis is {basis.dtype} {tuple(basis.shape)}, need ({k}, {k}) f64")
                    if not (bool(torch.isfinite(s).all()) and bool(torch.isfinite(basis).all())):
                        raise corrupt(f"{entry} holds NaN/inf")
                    by_entry[entry] = SvfFactors(shape=shape, singular_values=s, basis=basis)
        except CacheCorrupt:
            raise
        except (CrucibleError, json.JSONDecodeError) as exc:
            raise corrupt(f"{type(exc).__name__}: {exc}") from exc
        return MappingProxyType({name: by_entry[entry] for name, entry in entries.items()})
