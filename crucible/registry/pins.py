"""Artifact pins and manifests: load, build and write them (``schemas.ArtifactPin``, ``schemas.SakanaManifest``).

A pin names a repository, a revision and the sha256 of every file of an artifact; ``manifest.json`` is one
of the files and its digest is repeated as ``manifest_sha256``.

Example::

    pin = load_pin("/work/shared/anchors/artifact_pin.json")
    pin.file("manifest.json").sha256 == pin.manifest_sha256      # True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from crucible.hashing import file_sha256
from crucible.registry.errors import ManifestError, MissingFile, PinError
from crucible.registry.paths import check_relative_path, resolve_inside
from schemas.sakana import ArtifactPin, PinnedFile, SakanaManifest

MANIFEST_FILE = "manifest.json"


def decode_pin(data: bytes, source: str = "pin") -> ArtifactPin:
    """Decode pin JSON; raises :class:`PinError` naming the source and the field."""
    try:
        pin = msgspec.json.decode(data, type=ArtifactPin)
    except msgspec.DecodeError as e:
        raise PinError(f"{source}: not a valid artifact pin: {e}") from None
    for f in pin.files:
        check_relative_path(f.path)
    return pin


def load_pin(path: str | os.PathLike[str]) -> ArtifactPin:
    """Read a pin file (``artifact_pin.json``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise PinError(f"{p}: pin file does not exist") from None
    except OSError as e:
        raise PinError(f"{p}: cannot read the pin file: {e}") from None
    return decode_pin(data, str(p))


def encode_pin(pin: ArtifactPin) -> bytes:
    """Pin JSON, indented, keys in contract order."""
    return msgspec.json.format(msgspec.json.encode(pin), indent=2) + b"\n"


def write_pin(pin: ArtifactPin, path: str | os.PathLike[str]) -> Path:
    """Write ``pin`` to ``path`` atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_bytes(encode_pin(pin))
    os.replace(tmp, p)
    return p


def build_pin(root: str | os.PathLike[str], paths: Sequence[str], *, repo_id: str, revision: str,
              progress: Callable[[str], None] | None = None) -> ArtifactPin:
    """Hash ``paths`` under ``root`` into a pin; ``manifest.json`` must be among them.

    Raises:
        MissingFile: a listed file does not exist.
        PinError: the result breaks the pin contract (no manifest, bad repo id...).
    """
    files: list[PinnedFile] = []
    manifest_sha = None
    for rel in paths:
        full = resolve_inside(root, rel)
        if not full.is_file():
            raise MissingFile(f"{full}: listed for the pin but not a file")
        if progress is not None:
            progress(f"hashing {rel}")
        digest = file_sha256(full)
        files.append(PinnedFile(rel, digest))
        if rel == MANIFEST_FILE:
            manifest_sha = digest
    if manifest_sha is None:
        raise PinError(f"a pin must include {MANIFEST_FILE}; got {list(paths)}")
    try:
        return ArtifactPin(version=1, repo_id=repo_id, revision=revision, manifest_sha256=manifest_sha, files=files)
    except ValueError as e:
        raise PinError(f"cannot pin {root}: {e}") from None


def load_manifest(path: str | os.PathLike[str]) -> SakanaManifest:
    """Read and validate a ``SakanaManifest`` JSON file."""
    p = Path(path)
    try:
        return msgspec.json.decode(p.read_bytes(), type=SakanaManifest)
    except FileNotFoundError:
        raise ManifestError(f"{p}: manifest does not exist") from None
    except msgspec.DecodeError as e:
        raise ManifestError(f"{p}: not a valid TRINITY manifest: {e}") from None


def encode_manifest(manifest: SakanaManifest) -> bytes:
    """Manifest JSON as written into a bundle (indented; optional fields left out when unset)."""
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"
