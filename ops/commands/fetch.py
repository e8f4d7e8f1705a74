"""``run.py fetch``: download a pinned artifact, verifying every file by sha256 (or serve it from the cache)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ops.commands import CommandError
from ops.commands._common import (
    add_registry_flags,
    anchors_dir,
    existing_dir,
    existing_file,
    progress,
    registry_settings,
)

NAME = "fetch"
HELP = "fetch a pinned artifact (pin file, default the anchors' pin) into the verified cache"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``fetch``."""
    p.add_argument("--pin", metavar="FILE", help="artifact pin JSON (default: the anchors' artifact_pin.json)")
    p.add_argument("--local-dir", metavar="DIR", help="take files from this folder instead of the Hub")
    p.add_argument("--rehash", action="store_true", help="re-hash cached files even when their record matches")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_registry_flags(p)


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Fetch and verify; exit 0 when every pinned file is available and verified."""
    from crucible.registry.errors import RegistryError
    from crucible.registry.pins import load_pin
    from crucible.registry.store import ArtifactStore, HubSource, LocalSource, Source

    pin_path = existing_file(args.pin, "--pin") or anchors_dir(settings) / "artifact_pin.json"
    local = existing_dir(args.local_dir, "--local-dir")
    reg = registry_settings(settings, args)
    try:
        pin = load_pin(pin_path)
        source: Source = LocalSource(local) if local is not None else HubSource(reg)
        result = ArtifactStore(reg, source).fetch(pin, progress=progress("fetch"), rehash=args.rehash)
    except RegistryError as e:
        raise CommandError(str(e)) from None
    if args.json:
        print(json.dumps({"repo_id": pin.repo_id, "revision": pin.revision, "root": str(result.root),
                          "files": [{"path": f.path, "sha256": f.sha256, "origin": f.origin,
                                     "local_path": str(f.local_path)} for f in result.files]}, indent=2))
    else:
        for f in result.files:
            print(f"ok  {f.sha256[:12]}  {f.path}  ({f.origin})")
        print(f"{len(result.files)}/{len(pin.files)} files verified for {pin.repo_id}@{pin.revision} in "
              f"{result.root} ({result.downloaded} fetched)")
    return 0
