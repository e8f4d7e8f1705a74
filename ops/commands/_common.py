"""Helpers shared by the operator commands: registry settings from flags, anchors, progress on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from config.registry import RegistrySettings
from config.secrets import Secret
from ops.commands import UsageError

REPO_ROOT = Path(__file__).resolve().parents[2]


def progress(prefix: str) -> Any:
    """A progress callback printing ``prefix: message`` to stderr."""

    def say(message: str) -> None:
        print(f"{prefix}: {message}", file=sys.stderr, flush=True)

    return say


def add_registry_flags(p: argparse.ArgumentParser) -> None:
    """Flags overriding the registry settings."""
    g = p.add_argument_group("registry")
    g.add_argument("--endpoint", help="Hub endpoint (overrides registry.endpoint)")
    g.add_argument("--token-file", metavar="FILE", help="file holding the Hub token (overrides registry.token)")
    g.add_argument("--cache-dir", metavar="DIR", help="artifact cache (overrides registry.cache_dir)")
    g.add_argument("--offline", action="store_true", help="serve only verified cached files; no network")


def registry_settings(settings: Any, args: argparse.Namespace | None = None) -> RegistrySettings:
    """``settings.registry`` (defaults when the node settings have no such section) with flag overrides."""
    base = getattr(settings, "registry", None)
    s = base if isinstance(base, RegistrySettings) else RegistrySettings()
    if args is None:
        return s.expanded()
    changes: dict[str, Any] = {}
    if getattr(args, "endpoint", None):
        changes["endpoint"] = args.endpoint.rstrip("/")
    if getattr(args, "cache_dir", None):
        changes["cache_dir"] = args.cache_dir
    if getattr(args, "offline", False):
        changes["offline"] = True
    if getattr(args, "token_file", None):
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise UsageError(f"--token-file {args.token_file}: {e.strerror}") from None
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty")
        changes["token"] = Secret(token)
    try:
        return msgspec.structs.replace(s, **changes).expanded() if changes else s.expanded()
    except ValueError as e:
        raise UsageError(str(e)) from None


def anchors_dir(settings: Any) -> Path:
    """The anchors folder: ``registry.anchors_dir`` or ``../shared/anchors`` beside the repository."""
    configured = registry_settings(settings).anchors_dir
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "anchors"


def existing_file(value: str | None, flag: str) -> Path | None:
    """``value`` as a path that must be an existing file (``UsageError`` otherwise)."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if not p.is_file():
        raise UsageError(f"{flag} {value}: no such file")
    return p


def existing_dir(value: str | None, flag: str) -> Path | None:
    """``value`` as a path that must be an existing folder."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if not p.is_dir():
        raise UsageError(f"{flag} {value}: no such folder")
    return p


def add_router_flags(p: argparse.ArgumentParser) -> None:
    """Flags choosing the checkpoint and the head of the in-process router."""
    g = p.add_argument_group("router")
    g.add_argument("--checkpoint", metavar="DIR", help="Qwen3 checkpoint folder (default: model_runtime settings; "
                   "the cached full-size synthetic checkpoint)")
    g.add_argument("--tiny", action="store_true", help="use the tiny synthetic checkpoint (fast; random weights)")
    g.add_argument("--vector", metavar="FILE", help="TRINITY vector (.npy/.safetensors): SVF offsets + head")
    g.add_argument("--head", metavar="FILE", help="routing head file (.npy/.safetensors) instead of a vector")
    g.add_argument("--no-adapt", action="store_true", help="with --vector: use its head only, no SVF adapter")
    g.add_argument("--factor-cache", metavar="DIR", default="~/.cache/trinity-nats/svf-factors",
                   help="SVF factor cache (default ~/.cache/trinity-nats/svf-factors)")


def check_router_flags(args: argparse.Namespace) -> None:
    """Validate router flags (exclusive choices, existing files)."""
    if args.checkpoint and args.tiny:
        raise UsageError("--checkpoint and --tiny are exclusive")
    if args.vector and args.head:
        raise UsageError("--vector and --head are exclusive")
    if args.no_adapt and not args.vector:
        raise UsageError("--no-adapt only applies with --vector")
    existing_dir(args.checkpoint, "--checkpoint")
    existing_file(args.vector, "--vector")
    existing_file(args.head, "--head")


def vector_routing_profile(vector: str | None) -> str | None:
    """The profile a released vector (by file name) was trained under (``sakana`` for Sakana's), else ``None``
    (no opinion); a command's own flag wins."""
    from schemas.profiles import trained_profile

    return trained_profile(vector)


def with_routing_profile(settings: Any, routing: str) -> Any:
    """``settings`` whose model runtime runs ``routing`` (that profile's dtype and tied-embedding defaults
    when it differs from the configured one)."""
    mr = settings.model_runtime
    if routing == mr.routing_profile:
        return settings
    from config.model_runtime import ModelRuntimeSettings

    fields = {**msgspec.structs.asdict(mr), "routing_profile": routing, "dtype": None, "tied_embedding": None}
    return msgspec.structs.replace(settings, model_runtime=ModelRuntimeSettings(**fields))


def load_cli_router(args: argparse.Namespace, settings: Any, prefix: str) -> Any:
    """Load the router the flags describe (``CommandError`` on failure)."""
    from ops.commands import CommandError
    from ops.gate.errors import RouterLoadError
    from ops.gate.router import load_router

    try:
        return load_router(settings.model_runtime, checkpoint=args.checkpoint, tiny=args.tiny, vector=args.vector,
                           head=args.head, adapt=not args.no_adapt, factor_cache_dir=args.factor_cache,
                           progress=progress(prefix))
    except RouterLoadError as e:
        raise CommandError(str(e)) from None
