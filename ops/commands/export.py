"""``run.py export``: write the adapted bundle (9 SVF-adapted matrices + head + manifest + pin) and its lineage."""

from __future__ import annotations

import argparse
from typing import Any

from ops.commands import CommandError, UsageError
from ops.commands._common import existing_dir, existing_file, progress, registry_settings

NAME = "export"
HELP = "export the adapted bundle from a base checkpoint and a TRINITY vector (manifest, head, 9 matrices, pin)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``export``."""
    p.add_argument("--vector", required=True, metavar="FILE", help="TRINITY vector (.npy or .safetensors)")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
    p.add_argument("--checkpoint", metavar="DIR", help="base Qwen3 checkpoint (default: model_runtime settings; the "
                   "cached full-size synthetic checkpoint)")
    p.add_argument("--tiny", action="store_true", help="use the tiny synthetic checkpoint (needs a tiny vector)")
    p.add_argument("--repo-id", default="local/trinity-adapted", help="repository named in the pin")
    p.add_argument("--revision", default="v1", help="revision named in the pin")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype of the adapted matrices (default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--tied-embedding", choices=["per-matrix", "embed-wins", "lm_head-wins"], default="per-matrix",
                   help="tied embedding/LM head files: each its own offsets (per-matrix, the Sakana/Elixir layout), "
                        "or both the embedding's (embed-wins) or both lm_head's (lm_head-wins)")
    p.add_argument("--factor-cache", metavar="DIR", default="~/.cache/trinity-nats/svf-factors",
                   help="SVF factor cache (default ~/.cache/trinity-nats/svf-factors)")
    p.add_argument("--cache-dir", metavar="DIR", help="registry cache receiving the lineage record (overrides "
                   "registry.cache_dir)")


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Export; exit 0 with the bundle written and verified by its own pin."""
    import asyncio

    from actors.model_runtime.checkpoints import ensure_checkpoint, resolve_checkpoint
    from actors.model_runtime.errors import ModelRuntimeError
    from crucible.errors import CrucibleError
    from crucible.registry.export import export_bundle
    from crucible.registry.verify import verify_directory

    if args.checkpoint and args.tiny:
        raise UsageError("--checkpoint and --tiny are exclusive")
    vector = existing_file(args.vector, "--vector")
    ckpt_arg = existing_dir(args.checkpoint, "--checkpoint")
    mr = settings.model_runtime.expanded()
    say = progress("export")
    try:
        if ckpt_arg is not None:
            ckpt = ckpt_arg
        elif args.tiny:
            ckpt = ensure_checkpoint("qwen3-tiny-synthetic", mr.checkpoint_cache_dir, seed=mr.checkpoint_seed)
        else:
            say("using the full-size synthetic checkpoint (built once; factoring its embedding takes minutes)")
            ckpt = resolve_checkpoint(mr)
        result = await asyncio.to_thread(
            export_bundle, ckpt, str(vector), args.out, repo_id=args.repo_id, revision=args.revision,
            factor_cache_dir=args.factor_cache, dtype=args.dtype, overwrite=args.overwrite,
            lineage_cache_dir=registry_settings(settings, args).cache_dir, progress=say,
            tied_embedding=args.tied_embedding)
    except (CrucibleError, ModelRuntimeError, ValueError, OSError) as e:
        raise CommandError(f"export failed: {e}") from None
    report = verify_directory(result.out_dir, result.pin, ignore=("artifact_pin.json",))
    print(f"bundle {result.out_dir}: {report.summary()}")
    print(f"adapter {result.adapter_ref.token} (digest {result.adapter_ref.digest})")
    print(f"tied embedding: {result.tied_embedding or 'untied checkpoint (each matrix its own offsets)'}")
    print(f"pin {result.out_dir / 'artifact_pin.json'} manifest_sha256 {result.pin.manifest_sha256}")
    if result.lineage_path is not None:
        print(f"lineage {result.lineage_path}")
    return 0 if report.ok else 1
