"""Benchmark cheap SVF adapters in the model runtime against a plainly patched model, same run.

On the full-size synthetic Qwen3-0.6B (or ``--tiny``), with the real trained vector when present:

  (a) memory per extra adapter: tensor bytes each adapter holds and the RSS delta of loading N adapters,
      vs the 16 MB goal and vs a dense patched copy (the whole backbone, and just the 8 adapted matrices;
      the copy's RSS delta is measured here too)
  (b) route latency with an adapter / base, one request at a time and as packed batches of 16 (also a
      batch mixing base and two adapters); best of interleaved repeats
  (c) adapter load time (vector read, split, digests, scales, head; factors already in memory) vs
      ``adapt_backbone`` patching a copy in place (factor cache warm: hashing + reconstruction)

The factor build itself (SVD per shape, whole cache vs ``torch.linalg.svd``, time and peak RSS) is
``scripts/bench_factorization.py``. Usage::

    python scripts/bench_adapters.py [--adapters 128] [--repeats 5] [--threads 2] [--tiny]
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.model_runtime.checkpoints import ensure_checkpoint
from actors.model_runtime.engine import RouterEngine
from config.model_runtime import ModelRuntimeSettings
from crucible.registry.adapter import adapt_backbone, synthetic_router_vector
from schemas.common import Message
from schemas.routing import RouteRequest
from scripts.bench_runtime import rss_mb, text_of, timed

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = ROOT.parent / "shared" / "anchors" / "sakana_model_iter_60.npy"
GOAL_BYTES = 16 * 2**20


def _mb(n: float) -> str:
    return f"{n / 2**20:9.3f} MiB"


def _memory(device: torch.device) -> tuple[str, float]:
    """Where tensors live and how many bytes are in use there: RSS on CPU, allocated CUDA memory on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return "CUDA memory", float(torch.cuda.memory_allocated(device))
    return "RSS", rss_mb() * 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=int, default=128, help="extra adapters loaded for the memory measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="the tiny checkpoint (smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at start {os.getloadavg()[0]:.2f} ({os.cpu_count()} cpus, {args.threads} torch threads)")

    settings = ModelRuntimeSettings(num_threads=args.threads, cache_max_tokens=0, max_batch=16).expanded()
    preset = "qwen3-tiny-synthetic" if args.tiny else "qwen3-0.6b-synthetic"
    engine = RouterEngine.load(settings, checkpoint_dir=ensure_checkpoint(preset, settings.checkpoint_cache_dir))
    model_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    real = np.load(ANCHOR) if ANCHOR.is_file() and not args.tiny else synthetic_router_vector(engine.model, seed=0)
    label = "real vector" if ANCHOR.is_file() and not args.tiny else "synthetic vector"

    # -- (c, first half) the first adapter also brings the shared bases in (factor cache on disk) -------------
    t = time.perf_counter()
    first = engine.load_adapter(real)
    first_s = time.perf_counter() - t
    print(f"\nfirst adapter ({label}): {first_s:.2f} s including the shared bases "
          f"({_mb(engine.adapters.shared_nbytes).strip()}, loaded once per base model)")

    # -- (a) memory per extra adapter -------------------------------------------------------------------------
    vectors = [synthetic_router_vector(engine.model, seed=100 + i) for i in range(args.adapters)]
    where, before = _memory(engine.device)
    load_times = [timed(lambda v=v: engine.load_adapter(v)) for v in vectors]  # type: ignore[misc]
    delta = (_memory(engine.device)[1] - before) / args.adapters
    per_adapter = engine.adapter_info(engine.warm_adapters()[-1]).nbytes
    adapted = [engine.model.get_parameter(n) for n in engine.adapters._targets]
    adapted_bytes = sum(p.numel() * p.element_size() for p in adapted)
    print(f"\n(a) memory per extra adapter ({args.adapters} loaded)")
    print(f"    tensor bytes held per adapter  {_mb(per_adapter)}  goal <= 16 MiB: "
          f"ratio {per_adapter / GOAL_BYTES:.5f}")
    print(f"    {where + ' delta per adapter':31s}{_mb(delta)}  (allocator granularity included)")
    before = _memory(engine.device)[1]
    dense = copy.deepcopy(engine.model)
    t = time.perf_counter()
    adapt_backbone(dense, real, factor_cache_dir=settings.factor_cache_dir)
    patch_s = time.perf_counter() - t
    dense_delta = _memory(engine.device)[1] - before
    print(f"    dense patched copy of the model {_mb(model_bytes)} ({where} delta measured {_mb(dense_delta).strip()}, "
          f"patching buffers included): adapter / copy = {per_adapter / model_bytes:.6f}")
    print(f"    dense copies of the 8 adapted matrices only {_mb(adapted_bytes)}: "
          f"adapter / matrices = {per_adapter / adapted_bytes:.6f}")
    del dense

    # -- (c) load time vs patch time ------------------------------------------------------------------------------
    median_load = statistics.median(load_times)
    print("\n(c) adapter load vs adapt_backbone on a copy (factor cache warm)")
    print(f"    load_adapter median {median_load * 1000:8.2f} ms   adapt_backbone {patch_s * 1000:9.1f} ms   "
          f"ratio {median_load / patch_s:.5f}")

    # -- (b) latency --------------------------------------------------------------------------------------------------
    rng = random.Random(0)
    count = engine.tokenizer.encode
    texts = [text_of(rng, rng.randint(24, 64), lambda s: len(count(s)), "user: ") for _ in range(16)]
    a, b = first.token, engine.warm_adapters()[2]

    def requests(adapters: list[str]) -> list[RouteRequest]:
        return [RouteRequest(f"q{i}", 0, [Message("user", x)], adapter=adapters[i % len(adapters)])
                for i, x in enumerate(texts)]

    cases: dict[str, Callable[[], object]] = {
        "single base": lambda: [engine.route(r) for r in requests(["base"])],
        "single adapter": lambda: [engine.route(r) for r in requests([a])],
        "packed base": lambda: engine.run([engine.prepare(r) for r in requests(["base"])]),
        "packed adapter": lambda: engine.run([engine.prepare(r) for r in requests([a])]),
        "packed mixed": lambda: engine.run([engine.prepare(r) for r in requests(["base", a, b])]),
    }
    for fn in cases.values():
        fn()  # warm up
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.repeats):  # interleaved, so that load from other jobs hits every case alike
        for k, fn in cases.items():
            best[k] = min(best[k], timed(fn))
    print(f"\n(b) route latency, 16 transcripts of 24-64 tokens, best of {args.repeats} interleaved")
    for k, v in best.items():
        print(f"    {k:15s} {v * 1000 / 16:8.2f} ms/request")
    print(f"    adapter / base: single {best['single adapter'] / best['single base']:.3f}, "
          f"packed {best['packed adapter'] / best['packed base']:.3f}, "
          f"mixed (base, A, B) / base {best['packed mixed'] / best['packed base']:.3f}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
