"""``run.py env-check``: versions, device, threads, memory, NATS reachability, artifacts and binaries."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ops.commands import UsageError
from ops.commands._common import anchors_dir

NAME = "env-check"
HELP = "report Python/torch/transformers/nats-py versions, device, threads, memory, NATS, artifacts, nats-server"

REQUIRED_PACKAGES = ("torch", "transformers", "nats-py", "msgspec", "safetensors", "huggingface_hub", "numpy")
ANCHOR_FILES = ("artifact_pin.json", "qwen_router_prompt_eval_cases.json", "qwen_router_prompt_eval_logits.json",
                "sakana_model_iter_60.npy", "sakana_python_reference_manifest.json")


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: ``ok``, ``warn`` (optional thing missing) or ``fail`` (required)."""

    name: str
    status: str
    detail: str


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``env-check``."""
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too (NATS down, no checkpoint...)")
    p.add_argument("--nats-timeout", type=float, default=1.0, metavar="SECONDS",
                   help="TCP connect timeout per NATS server (default 1)")


def _versions() -> list[Check]:
    out = [Check("python", "ok" if sys.version_info >= (3, 11) else "fail",
                 f"{platform.python_version()} ({sys.executable})")]
    for pkg in REQUIRED_PACKAGES:
        try:
            out.append(Check(pkg, "ok", importlib.metadata.version(pkg)))
        except importlib.metadata.PackageNotFoundError:
            out.append(Check(pkg, "fail", "not installed"))
    return out


def _device(settings: Any) -> list[Check]:
    try:
        from actors.model_runtime.engine import pick_device
    except ImportError as e:
        return [Check("device", "fail", f"the model runtime does not import (torch/transformers): {e}")]
    mr = settings.model_runtime
    device = pick_device(mr.device)
    threads = mr.num_threads if mr.num_threads is not None else "torch default"
    return [Check("device", "ok", f"{device} (model_runtime.device={mr.device!r})"),
            Check("threads", "ok", f"model_runtime.num_threads {threads}, CPUs {os.cpu_count()}")]


def _memory() -> Check:
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(fields["MemTotal"].split()[0]) / 1024**2
        avail = int(fields["MemAvailable"].split()[0]) / 1024**2
        return Check("memory", "ok" if avail >= 4 else "warn", f"{avail:.1f} GiB available of {total:.1f} GiB")
    except (OSError, KeyError, ValueError):
        return Check("memory", "warn", "unknown (no /proc/meminfo)")


async def _nats(servers: list[str], timeout: float) -> list[Check]:
    out = []
    for url in servers:
        u = urlparse(url if "://" in url else f"nats://{url}")
        host, port = u.hostname or "127.0.0.1", u.port or 4222
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            line = await asyncio.wait_for(reader.readline(), timeout)
            writer.close()
            await writer.wait_closed()
            info = line.decode(errors="replace").strip()
            if not info.startswith("INFO "):
                out.append(Check(f"nats {url}", "warn", f"connected but no NATS INFO line: {info[:60]!r}"))
                continue
            data = json.loads(info[5:])
            out.append(Check(f"nats {url}", "ok", f"nats-server {data.get('version', '?')}, jetstream "
                                                  f"{'on' if data.get('jetstream') else 'off'}"))
        except (OSError, TimeoutError, json.JSONDecodeError) as e:
            out.append(Check(f"nats {url}", "warn", f"unreachable ({type(e).__name__}: {e or 'timeout'}); "
                                                    "`run.py node` starts an embedded server when none is reachable"))
    return out


def _artifacts(settings: Any) -> list[Check]:
    out = []
    anchors = anchors_dir(settings)
    missing = [f for f in ANCHOR_FILES if not (anchors / f).is_file()]
    found = f" (missing {', '.join(missing)})" if missing else f" ({len(ANCHOR_FILES)} files)"
    out.append(Check("anchors", "warn" if missing else "ok", f"{anchors}{found}"))
    mr = settings.model_runtime.expanded()
    cache = Path(mr.checkpoint_cache_dir)
    built = sorted(p.name for p in cache.glob("*") if (p / "trinity_checkpoint.json").is_file()) if cache.is_dir() \
        else []
    if mr.checkpoint_dir:
        ok = (Path(mr.checkpoint_dir) / "config.json").is_file()
        out.append(Check("checkpoint", "ok" if ok else "fail", f"{mr.checkpoint_dir}"
                         + ("" if ok else " has no config.json")))
    out.append(Check("cached checkpoints", "ok" if built else "warn",
                     f"{cache}: {', '.join(built)}" if built else f"{cache}: none built yet (built on first use)"))
    from actors.model_runtime.errors import TokenizerNotFound
    from actors.model_runtime.tokenizer import resolve_tokenizer_path

    try:
        tok = resolve_tokenizer_path(mr.tokenizer_path, mr.checkpoint_dir)
        out.append(Check("tokenizer", "ok", str(tok)))
    except (TokenizerNotFound, OSError) as e:
        out.append(Check("tokenizer", "fail", f"not found: {e}"))
    return out


def _binary(settings: Any) -> Check:
    from bus.embedded import locate_nats_server
    from bus.errors import NatsServerNotFound

    try:
        found = locate_nats_server(settings.nats.nats_server_binary)
    except NatsServerNotFound as e:
        return Check("nats-server binary", "warn", f"needed only for an embedded server: {e}")
    return Check("nats-server binary", "ok" if found.version else "warn", found.describe())


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Print every check; exit 1 on a failed required check (or on a warning with --strict)."""
    if args.nats_timeout <= 0:
        raise UsageError(f"--nats-timeout must be positive, got {args.nats_timeout}")
    checks = [*_versions(), *_device(settings), _memory(), *await _nats(list(settings.nats.servers), args.nats_timeout),
              *_artifacts(settings), _binary(settings)]
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            print(f"{c.status:<4}  {c.name:<22} {c.detail}")
    bad = {"fail", "warn"} if args.strict else {"fail"}
    failed = [c for c in checks if c.status in bad]
    if failed and not args.json:
        print(f"{len(failed)} check(s) {'failed or warned' if args.strict else 'failed'}: "
              + ", ".join(c.name for c in failed), file=sys.stderr)
    return 1 if failed else 0
