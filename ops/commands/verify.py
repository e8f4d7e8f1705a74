"""``run.py verify``: re-hash a folder against an artifact pin."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ops.commands import CommandError
from ops.commands._common import existing_dir, existing_file, progress

NAME = "verify"
HELP = "re-hash a folder's files against an artifact pin (exit 1 on any missing or mismatching file)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``verify``."""
    p.add_argument("directory", help="folder holding the artifact's files at their pinned paths")
    p.add_argument("--pin", metavar="FILE", help="artifact pin JSON (default: DIRECTORY/artifact_pin.json)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Verify; exit 0 only when every pinned file is present with its sha256."""
    from crucible.registry.errors import RegistryError
    from crucible.registry.pins import load_pin
    from crucible.registry.verify import verify_directory

    root = existing_dir(args.directory, "directory")
    assert root is not None
    pin_path = existing_file(args.pin, "--pin") or root / "artifact_pin.json"
    try:
        pin = load_pin(pin_path)
    except RegistryError as e:
        raise CommandError(str(e)) from None
    ignore = (Path(pin_path).resolve().relative_to(root.resolve()).as_posix(),) \
        if Path(pin_path).resolve().is_relative_to(root.resolve()) else ()
    report = verify_directory(root, pin, progress=progress("verify"), ignore=ignore)
    if args.json:
        print(json.dumps({"ok": report.ok, "root": str(root), "files": [
            {"path": f.path, "state": f.state.value, "expected": f.expected, "actual": f.actual, "detail": f.detail}
            for f in report.files], "unpinned": list(report.unpinned)}, indent=2))
    else:
        for f in report.files:
            line = f"{f.state.value:<8} {f.path}"
            if f.state.value == "mismatch":
                line += f"  (expected {f.expected[:12]}, got {(f.actual or '')[:12]})"
            print(line)
        print(report.summary())
    return 0 if report.ok else 1
