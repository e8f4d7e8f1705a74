"""Re-hash files against a pin.

Example::

    report = verify_directory("bundle/", load_pin("bundle/artifact_pin.json"))
    print(report.summary())          # "11/11 files verified"
    report.ok                        # True when every pinned file is present with its sha256
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from crucible.hashing import file_sha256
from crucible.registry.errors import UnsafePath
from crucible.registry.paths import resolve_inside
from schemas.sakana import ArtifactPin, PinnedFile

#: Folders and files that tools keep inside artifact folders and that are never part of an artifact.
IGNORED_PREFIXES = (".cache/", ".git/")


class FileState(enum.StrEnum):
    """Outcome of checking one pinned file."""

    OK = "ok"
    MISSING = "missing"
    MISMATCH = "mismatch"
    UNSAFE = "unsafe"


@dataclass(frozen=True, slots=True)
class FileCheck:
    """One pinned file checked: its state, the pinned and the actual sha256 (``None`` when not hashed)."""

    path: str
    state: FileState
    expected: str
    actual: str | None = None
    size: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Every pinned file's check, plus files under the root that the pin does not list."""

    root: Path
    pin: ArtifactPin
    files: tuple[FileCheck, ...]
    unpinned: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every pinned file is present and matches."""
        return all(f.state is FileState.OK for f in self.files)

    @property
    def failures(self) -> tuple[FileCheck, ...]:
        """The checks that did not pass."""
        return tuple(f for f in self.files if f.state is not FileState.OK)

    def summary(self) -> str:
        """One line: ``"k/n files verified"`` plus counts of each failure kind."""
        n_ok = sum(f.state is FileState.OK for f in self.files)
        parts = [f"{n_ok}/{len(self.files)} files verified"]
        for state in (FileState.MISSING, FileState.MISMATCH, FileState.UNSAFE):
            count = sum(f.state is state for f in self.files)
            if count:
                parts.append(f"{count} {state.value}")
        if self.unpinned:
            parts.append(f"{len(self.unpinned)} unpinned file(s) ignored")
        return ", ".join(parts)


def check_file(root: str | os.PathLike[str], pinned: PinnedFile) -> FileCheck:
    """Hash ``root / pinned.path`` and compare with the pin."""
    try:
        full = resolve_inside(root, pinned.path)
    except UnsafePath as e:
        return FileCheck(pinned.path, FileState.UNSAFE, pinned.sha256, detail=str(e))
    if not full.is_file():
        return FileCheck(pinned.path, FileState.MISSING, pinned.sha256, detail=f"{full} is not a file")
    actual = file_sha256(full)
    state = FileState.OK if actual == pinned.sha256 else FileState.MISMATCH
    return FileCheck(pinned.path, state, pinned.sha256, actual, full.stat().st_size)


def _unpinned(root: Path, pin: ArtifactPin, ignore: tuple[str, ...]) -> tuple[str, ...]:
    if not root.is_dir():
        return ()
    pinned = {f.path for f in pin.files}
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in pinned and not rel.startswith(IGNORED_PREFIXES) and rel not in ignore:
                found.append(rel)
    return tuple(sorted(found))


def verify_directory(root: str | os.PathLike[str], pin: ArtifactPin, *,
                     progress: Callable[[str], None] | None = None, ignore: tuple[str, ...] = ()) -> VerifyReport:
    """Re-hash every pinned file under ``root``; never raises for a bad file (see :attr:`VerifyReport.ok`).

    ``ignore`` lists relative paths not reported as unpinned (e.g. the pin file itself).
    """
    checks = []
    for i, f in enumerate(pin.files):
        if progress is not None:
            progress(f"[{i + 1}/{len(pin.files)}] hashing {f.path}")
        checks.append(check_file(root, f))
    base = Path(root)
    return VerifyReport(base, pin, tuple(checks), _unpinned(base, pin, ignore))
