"""Errors of the model registry: one class per failure kind, each message says what to do next.

All derive from :class:`RegistryError` (itself a :class:`crucible.errors.CrucibleError`).
"""

from __future__ import annotations

from crucible.errors import CrucibleError


class RegistryError(CrucibleError):
    """Base class of model-registry errors."""


class PinError(RegistryError):
    """A pin file is missing, is not JSON, or breaks the ``ArtifactPin`` contract."""


class ManifestError(RegistryError):
    """A manifest file is missing, unreadable, or breaks the ``SakanaManifest`` contract."""


class UnsafePath(RegistryError):
    """A pinned path would leave the artifact folder (``..``, absolute path, symlink escape)."""


class ChecksumMismatch(RegistryError):
    """A file's sha256 differs from its pin; the file was refused (and removed where it was downloaded)."""

    def __init__(self, path: str, expected: str, actual: str, *, removed: bool) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        self.removed = removed
        what = "the download was removed" if removed else "the file was left in place"
        super().__init__(f"{path}: sha256 {actual} differs from the pinned {expected}; {what}. The source "
                         "serves different bytes than the pin names: check the pin's revision or the source")


class MissingFile(RegistryError):
    """A pinned file is absent from a local source or directory."""


class OfflineMiss(RegistryError):
    """Offline mode and a pinned file is not in the cache as a verified copy."""


class FetchError(RegistryError):
    """A download failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class RemoteNotFound(FetchError):
    """The repository, revision or file does not exist on the source (HTTP 404)."""


class Unauthorized(FetchError):
    """The source refused the credentials (HTTP 401/403): set ``registry.token`` to a token with read access."""


class RemoteServerError(FetchError):
    """The source failed (HTTP 5xx) even after the client's retries."""


class TransferError(FetchError):
    """The connection failed or the body was cut short and could not be resumed."""


class LineageError(RegistryError):
    """A lineage record cannot be read or written."""


class ExportError(RegistryError):
    """An adapted bundle cannot be exported from the given base checkpoint and vector."""
