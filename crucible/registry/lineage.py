"""Lineage records: which pin and base model produced which adapter export.

One JSON file per adapter export under ``<cache_dir>/lineage/<adapter token>.json`` (beside the artifact
cache), written atomically; :func:`read_lineage` lists them back.

Example::

    record = LineageRecord(adapter=ref, base=BaseModel(path=str(ckpt), files=digests), ...)
    write_lineage(cache_dir, record)
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import msgspec

from crucible.registry.errors import LineageError
from schemas.sakana import AdapterRef


class BaseModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The base checkpoint an adapter was applied to: where it was, its files' sha256, whether synthetic."""

    path: str
    files: dict[str, str]
    weights_sha256: str
    synthetic: bool = False


class VectorSource(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The router vector file an adapter came from."""

    path: str
    sha256: str
    length: int


class PinRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The artifact pin an export was published under (repository, revision, manifest digest)."""

    repo_id: str
    revision: str
    manifest_sha256: str


class LineageRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One adapter export: inputs (base model, vector), identity (adapter ref), output (pin, bundle folder)."""

    adapter: AdapterRef
    base: BaseModel
    vector: VectorSource
    pin: PinRef
    bundle_dir: str
    dtype: str
    created_at: str = msgspec.field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    tool: str = "trinity-nats export"
    kind: str = "trinity-lineage/1"


def lineage_dir(cache_dir: str | os.PathLike[str]) -> Path:
    """Folder of the lineage records of a registry cache."""
    return Path(cache_dir).expanduser() / "lineage"


def write_lineage(cache_dir: str | os.PathLike[str], record: LineageRecord) -> Path:
    """Write ``record`` as ``lineage/<adapter token>.json`` (replacing an older record of the same adapter)."""
    folder = lineage_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record.adapter.token}.json"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(record), indent=2) + b"\n")
    os.replace(tmp, path)
    return path


def read_lineage(cache_dir: str | os.PathLike[str]) -> list[LineageRecord]:
    """Every lineage record of a cache, oldest first."""
    out = []
    for path in sorted(lineage_dir(cache_dir).glob("*.json")):
        try:
            out.append(msgspec.json.decode(path.read_bytes(), type=LineageRecord))
        except msgspec.DecodeError as e:
            raise LineageError(f"{path}: not a lineage record ({e}); delete it or fix it by hand") from None
    return sorted(out, key=lambda r: r.created_at)
