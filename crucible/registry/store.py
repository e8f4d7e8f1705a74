"""The artifact store: fetch pinned files from a source, verify each by sha256, keep verified copies.

Layout under ``RegistrySettings.cache_dir``::

    artifacts/<owner>--<name>/<revision>/<pinned path>     verified files only
    artifacts/<owner>--<name>/<revision>.pin.json          the pin they were verified against
    artifacts/<owner>--<name>/<revision>.verified.json     size + mtime + sha256 per file (skips re-hashing)
    staging/<owner>--<name>/<revision>/                    downloads in progress (huggingface_hub local_dir)
    hf-hub/                                                huggingface_hub's own cache (kept hermetic)
    lineage/                                               lineage records (see crucible.registry.lineage)

A file reaches ``artifacts/`` only after its sha256 matched the pin; a mismatching download is removed
and refused with :class:`ChecksumMismatch`. In offline mode the source is never contacted: pinned files
that are not cached and verified raise :class:`OfflineMiss`.

Sources: :class:`HubSource` (``huggingface_hub.hf_hub_download`` per pinned file at the pinned revision,
with the endpoint and token from settings) and :class:`LocalSource` (a local folder laid out like the
repository).

Example::

    store = ArtifactStore(RegistrySettings(), HubSource(RegistrySettings()))
    result = store.fetch(load_pin("artifact_pin.json"), progress=print)
    result.path("manifest.json")     # a verified local file
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec

from config.registry import RegistrySettings
from crucible.hashing import file_sha256
from crucible.registry.errors import (
    ChecksumMismatch,
    FetchError,
    MissingFile,
    OfflineMiss,
    RegistryError,
    RemoteNotFound,
    RemoteServerError,
    TransferError,
    Unauthorized,
    UnsafePath,
)
from crucible.registry.paths import check_relative_path, resolve_inside
from crucible.registry.pins import write_pin
from schemas.sakana import ArtifactPin, PinnedFile

Progress = Callable[[str], None]


def repo_folder(repo_id: str) -> str:
    """Folder name of a repository: ``owner--name``."""
    owner, name = repo_id.split("/")
    check_relative_path(owner)
    check_relative_path(name)
    return f"{owner}--{name}"


def revision_folder(revision: str) -> str:
    """Folder name of a revision (percent-encoded, so ``refs/pr/1`` stays one component)."""
    name = urllib.parse.quote(revision, safe="")
    if name in (".", ".."):
        raise UnsafePath(f"revision {revision!r} cannot name a folder")
    return name


class Source(Protocol):
    """Where pinned files come from."""

    #: Short label for messages (``hub:<endpoint>``, ``local:<dir>``).
    label: str

    def retrieve(self, pin: ArtifactPin, pinned: PinnedFile, staging: Path, progress: Progress | None) -> Path:
        """Put ``pinned`` into ``staging`` (at its relative path) and return the staged file."""
        ...


class LocalSource:
    """A local folder holding the artifact's files at their pinned paths (a mirror, a USB copy, an export)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.label = f"local:{self.root}"

    def retrieve(self, pin: ArtifactPin, pinned: PinnedFile, staging: Path, progress: Progress | None) -> Path:
        """Copy the file into ``staging`` (symlinks that leave the source folder are refused)."""
        src = resolve_inside(self.root, pinned.path)
        if not src.is_file():
            raise MissingFile(f"{src}: pinned file {pinned.path!r} is not in the local source {self.root}")
        dest = resolve_inside(staging, pinned.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return dest


def _status_of(error: BaseException) -> int | None:
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
        e = e.__cause__ or e.__context__
    return None


def _hub_error(error: Exception, what: str) -> FetchError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = _status_of(error)
    if isinstance(error, OfflineModeIsEnabled):
        return TransferError(f"{what}: huggingface_hub is in offline mode (HF_HUB_OFFLINE is set in the process "
                             "environment); unset it or use registry.offline", status=status)
    if status in (401, 403) or isinstance(error, GatedRepoError):
        return Unauthorized(f"{what}: HTTP {status}: the endpoint refused access; set registry.token to a token "
                            "that can read this repository", status=status)
    if isinstance(error, EntryNotFoundError | RevisionNotFoundError | RepositoryNotFoundError) or status == 404:
        return RemoteNotFound(f"{what}: HTTP 404: {type(error).__name__}: the repository, the pinned revision or the "
                              "file does not exist at the endpoint; check the pin's repo_id/revision", status=status)
    if status is not None and status >= 500:
        return RemoteServerError(f"{what}: HTTP {status}: the endpoint failed after retries; try again later",
                                 status=status)
    return TransferError(f"{what}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
                         "(download interrupted or endpoint unreachable; run fetch again to resume)", status=status)


class HubSource:
    """Files from a Hugging Face Hub endpoint via ``huggingface_hub.hf_hub_download`` (one call per file).

    The endpoint and token come from :class:`RegistrySettings` only; without a token none is sent (the
    library's stored token is never used). Downloads land in the store's staging folder (``local_dir``)
    and resume there after an interruption.
    """

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings.expanded()
        self.label = f"hub:{self.settings.endpoint}"

    def retrieve(self, pin: ArtifactPin, pinned: PinnedFile, staging: Path, progress: Progress | None) -> Path:
        """Download one pinned file at the pinned revision into ``staging``."""
        import httpx2  # huggingface_hub's HTTP client
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        dest = resolve_inside(staging, pinned.path)
        dest.unlink(missing_ok=True)  # never let the library hand back a stale staged copy
        token: str | bool = self.settings.token.get() if self.settings.token else False
        what = f"{pin.repo_id}@{pin.revision}/{pinned.path} from {self.settings.endpoint}"
        try:
            got = hf_hub_download(
                pin.repo_id, pinned.path, revision=pin.revision, local_dir=staging,
                cache_dir=Path(self.settings.cache_dir) / "hf-hub", endpoint=self.settings.endpoint,
                token=token, etag_timeout=self.settings.etag_timeout_s,
            )
        except (HfHubHTTPError, LocalEntryNotFoundError, httpx2.HTTPError, OSError, ValueError) as e:
            raise _hub_error(e, what) from e
        path = Path(str(got))
        if path.resolve() != dest.resolve():
            raise UnsafePath(f"{pinned.path!r}: huggingface_hub returned {path}, not the staged path {dest}")
        return dest


@dataclass(frozen=True, slots=True)
class FetchedFile:
    """One verified file: where it is and whether it was already cached."""

    path: str
    sha256: str
    local_path: Path
    origin: str  # "cache" or the source label


@dataclass(frozen=True, slots=True)
class FetchResult:
    """All pinned files, verified, under :attr:`root`."""

    pin: ArtifactPin
    root: Path
    files: tuple[FetchedFile, ...]

    def path(self, rel: str) -> Path:
        """Local path of a pinned file."""
        for f in self.files:
            if f.path == rel:
                return f.local_path
        raise KeyError(f"{rel!r} is not pinned by {self.pin.repo_id}@{self.pin.revision}")

    @property
    def downloaded(self) -> int:
        """How many files came from the source in this fetch (the rest were cached)."""
        return sum(f.origin != "cache" for f in self.files)


class ArtifactStore:
    """Verified artifact cache in front of a :class:`Source` (see module docs)."""

    def __init__(self, settings: RegistrySettings, source: Source | None = None) -> None:
        self.settings = settings.expanded()
        self.root = Path(self.settings.cache_dir)
        self.source = source if source is not None else HubSource(self.settings)

    # -- layout ---------------------------------------------------------------------------------------------

    def artifact_dir(self, pin: ArtifactPin) -> Path:
        """Folder of the verified files of ``pin``."""
        return self.root / "artifacts" / repo_folder(pin.repo_id) / revision_folder(pin.revision)

    def staging_dir(self, pin: ArtifactPin) -> Path:
        """Folder where ``pin``'s downloads are staged before verification."""
        return self.root / "staging" / repo_folder(pin.repo_id) / revision_folder(pin.revision)

    def _record_path(self, pin: ArtifactPin) -> Path:
        d = self.artifact_dir(pin)
        return d.with_name(d.name + ".verified.json")

    def _read_record(self, pin: ArtifactPin) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self._record_path(pin).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_record(self, pin: ArtifactPin, record: dict[str, dict[str, object]]) -> None:
        path = self._record_path(pin)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, path)

    # -- checks ---------------------------------------------------------------------------------------------

    @staticmethod
    def _stamp(path: Path, sha256: str) -> dict[str, object]:
        st = path.stat()
        return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def _cached_ok(self, path: Path, pinned: PinnedFile, record: dict[str, dict[str, object]],
                   progress: Progress | None, *, rehash: bool) -> bool:
        if not path.is_file():
            return False
        st = path.stat()
        known = record.get(pinned.path)
        if (not rehash and known is not None and known.get("sha256") == pinned.sha256
                and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns):
            return True
        if progress is not None:
            progress(f"re-hashing cached {pinned.path}")
        actual = file_sha256(path)
        if actual == pinned.sha256:
            record[pinned.path] = self._stamp(path, actual)
            return True
        return False

    # -- fetch ----------------------------------------------------------------------------------------------

    def fetch(self, pin: ArtifactPin, *, progress: Progress | None = None, rehash: bool = False) -> FetchResult:
        """Make every pinned file available, verified; returns where they are.

        Cached files whose size and mtime match their verification record are not re-hashed unless
        ``rehash``. A cached file that no longer matches its pin is removed and fetched again (online) or
        reported (offline).

        Raises:
            OfflineMiss: offline and some files are not cached (all of them are named).
            ChecksumMismatch: a fetched file's sha256 differs from the pin (the file was removed).
            UnsafePath: a pinned path leaves the artifact folder.
            FetchError: (subclasses) the source failed: 404, 401/403, 5xx, interrupted transfer.
            MissingFile: the local source lacks a file.
        """
        root = self.artifact_dir(pin)
        record = self._read_record(pin)
        files: list[FetchedFile] = []
        todo: list[tuple[PinnedFile, Path]] = []
        for pinned in pin.files:
            dest = resolve_inside(root, pinned.path) if root.exists() else root.joinpath(*pinned.path.split("/"))
            check_relative_path(pinned.path)
            if self._cached_ok(dest, pinned, record, progress, rehash=rehash):
                files.append(FetchedFile(pinned.path, pinned.sha256, dest, "cache"))
                continue
            if dest.exists() or dest.is_symlink():
                if progress is not None:
                    progress(f"removing cached {pinned.path}: it no longer matches its pin")
                dest.unlink()
                record.pop(pinned.path, None)
            todo.append((pinned, dest))
        if todo and self.settings.offline:
            self._write_record(pin, record)
            names = ", ".join(p.path for p, _ in todo)
            raise OfflineMiss(f"offline: {len(todo)} pinned file(s) of {pin.repo_id}@{pin.revision} are not cached "
                              f"as verified copies: {names}; fetch them online first or copy them with a local source")
        staging = self.staging_dir(pin)
        try:
            for i, (pinned, dest) in enumerate(todo):
                if progress is not None:
                    progress(f"[{i + 1}/{len(todo)}] fetching {pinned.path} from {self.source.label}")
                staged = self.source.retrieve(pin, pinned, staging, progress)
                actual = file_sha256(staged)
                if actual != pinned.sha256:
                    staged.unlink(missing_ok=True)
                    raise ChecksumMismatch(f"{self.source.label}/{pinned.path}", pinned.sha256, actual, removed=True)
                dest = resolve_inside(self._ensure_root(root), pinned.path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, dest)
                record[pinned.path] = self._stamp(dest, actual)
                files.append(FetchedFile(pinned.path, pinned.sha256, dest, self.source.label))
        finally:
            self._write_record(pin, record)
        if not todo:
            self._ensure_root(root)
        write_pin(pin, root.with_name(root.name + ".pin.json"))
        order = {f.path: i for i, f in enumerate(pin.files)}
        return FetchResult(pin, root, tuple(sorted(files, key=lambda f: order[f.path])))

    @staticmethod
    def _ensure_root(root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        return root

    def cached(self, pin: ArtifactPin) -> FetchResult:
        """The verified cached copy of ``pin`` without contacting any source (offline fetch)."""
        offline = ArtifactStore(msgspec.structs.replace(self.settings, offline=True), self.source)
        return offline.fetch(pin)


__all__ = [
    "ArtifactStore",
    "FetchResult",
    "FetchedFile",
    "HubSource",
    "LocalSource",
    "RegistryError",
    "Source",
    "repo_folder",
    "revision_folder",
]
