"""Path safety: pinned paths must stay inside the artifact folder.

A pinned path is relative POSIX (``a/b.safetensors``): no ``..`` component, no absolute path, no
backslash, no drive letter, no empty or ``.`` component. :func:`resolve_inside` also refuses a path whose
existing parts are symlinks that lead outside the root.

Example:
    >>> check_relative_path("checkpoints/0001.safetensors")
    'checkpoints/0001.safetensors'
    >>> check_relative_path("../etc/passwd")
    Traceback (most recent call last):
    ...
    crucible.registry.errors.UnsafePath: '../etc/passwd': '..' components are not allowed in pinned paths
"""

from __future__ import annotations

import os
from pathlib import Path

from crucible.registry.errors import UnsafePath


def check_relative_path(path: str) -> str:
    """Return ``path`` when it is a safe relative POSIX path, else raise :class:`UnsafePath`."""
    if not path or "\x00" in path:
        raise UnsafePath(f"{path!r}: a pinned path must be a non-empty string without NUL bytes")
    if path.startswith("/") or "\\" in path or (len(path) > 1 and path[1] == ":"):
        raise UnsafePath(f"{path!r}: absolute paths are not allowed in pinned paths; use a path relative to "
                         "the artifact root")
    parts = path.split("/")
    if ".." in parts:
        raise UnsafePath(f"{path!r}: '..' components are not allowed in pinned paths")
    if any(p in ("", ".") for p in parts):
        raise UnsafePath(f"{path!r}: empty or '.' components are not allowed; write the normalised path")
    return path


def resolve_inside(root: str | os.PathLike[str], path: str) -> Path:
    """``root / path`` after checking ``path`` and that no symlink takes it outside ``root``.

    The root itself may be a symlink; every component below it is resolved and must stay inside it.
    """
    check_relative_path(path)
    base = Path(root).resolve()
    target = base.joinpath(*path.split("/"))
    resolved = target.resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafePath(f"{path!r}: resolves to {resolved}, outside the artifact root {base} (symlink escape)")
    return target
