"""Benchmark the model runtime against the plain reference path on the full-size synthetic Qwen3-0.6B.

Plain reference path = what a straightforward implementation does: ``Qwen3ForCausalLM`` forward over the
whole transcript with ``output_hidden_states=True`` (LM head over every position), ``hidden_states[-1][0, -2]``
through the head. Everything is measured in this run, interleaved, best of repeats (robust to other load on a
shared machine; the load average is printed); ratios are printed.

  (a) route latency at 64 / 256 / 1024 / 4096 tokens, runtime / reference            goal <= 0.8
  (b) a 5-turn run (~500-token agent replies) routed turn by turn with the prefix cache,
      total / plain reference prefill of the last turn                               goal <= 1.3
  (c) 16 concurrent route requests: batched throughput / one-at-a-time throughput     goal >= 1.5
  (d) peak RSS

Usage::

    python scripts/bench_runtime.py [--threads 2] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.model_runtime.checkpoints import ensure_checkpoint
from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.formatting import format_transcript
from actors.model_runtime.runtime import RouterRuntime
from config.model_runtime import ModelRuntimeSettings
from schemas.common import Message
from schemas.routing import RouteRequest

WORDS = ("the model routes each turn to an agent and a role while the verifier checks answers from workers "
         "thinkers plan steps proofs code tests latency budget cache tokens batch queue prefix state head "
         "logits margin floor adapter runtime coordinator transcript reply query system user assistant").split()


def text_of(rng: random.Random, tokens: int, tokenizer_len: Callable[[str], int], prefix: str = "") -> str:
    """Random prose of about ``tokens`` tokens (measured with the real tokenizer)."""
    words: list[str] = []
    while tokenizer_len(prefix + " ".join(words)) < tokens:
        words.extend(rng.choice(WORDS) for _ in range(max(1, (tokens - tokenizer_len(prefix + " ".join(words))) // 2)))
    while len(words) > 1 and tokenizer_len(prefix + " ".join(words[:-1])) >= tokens:
        words.pop()
    return " ".join(words)


def rss_mb() -> float:
    """Current resident set size in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(0)

    settings = ModelRuntimeSettings(num_threads=args.threads, max_batch=16, batch_window_ms=5.0).expanded()
    path = ensure_checkpoint(settings.checkpoint_preset, settings.checkpoint_cache_dir, seed=settings.checkpoint_seed)
    rss0 = rss_mb()
    engine = RouterEngine.load(settings, checkpoint_dir=path)
    rss_engine = rss_mb() - rss0
    import msgspec

    nocache = RouterEngine(engine.model, engine.tokenizer, engine.head,
                           msgspec.structs.replace(settings, cache_max_tokens=0))
    ref = Qwen3ForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    ref.train(False)

    def tok_len(text: str) -> int:
        return len(engine.tokenizer.encode(text))

    @torch.inference_mode()
    def ref_route(msgs: list[Message], keep_all_logits: bool = True) -> list[float]:
        ids = torch.tensor([engine.tokenizer.encode(format_transcript(msgs))])
        out = ref(ids, output_hidden_states=True, logits_to_keep=0 if keep_all_logits else 1)
        result: list[float] = engine.head.apply(out.hidden_states[-1][:, -2])[0].tolist()
        return result

    print(f"load average at start: {os.getloadavg()}")
    print(f"checkpoint: {path} (synthetic Qwen3-0.6B shapes, float32), threads={args.threads}, "
          f"device={engine.device}")
    # warm-up
    warm = [Message("user", text_of(rng, 32, tok_len, "user: "))]
    ref_route(warm)
    nocache.route(RouteRequest("w", 0, warm))

    # (a) latency by length
    print("\n(a) route latency, runtime vs plain reference (best of repeats)")
    print(f"{'tokens':>7} {'reference s':>12} {'ref no-LM-head s':>17} {'runtime s':>10} {'ratio':>6} "
          f"{'ratio vs no-LM-head':>20}")
    sizes = [64, 256] if args.quick else [64, 256, 1024, 4096]
    for n in sizes:
        msgs = [Message("user", text_of(rng, n, tok_len, "user: "))]
        req = RouteRequest("a", 0, msgs)
        reps = args.repeats if n <= 256 else min(2, args.repeats) if n <= 1024 else 1
        tr, tr1, tg = [], [], []
        for _ in range(reps):
            tr.append(timed(lambda: ref_route(msgs)))  # noqa: B023
            tr1.append(timed(lambda: ref_route(msgs, keep_all_logits=False)))  # noqa: B023
            tg.append(timed(lambda: nocache.route(req)))  # noqa: B023
        r, r1, g = min(tr), min(tr1), min(tg)
        print(f"{tok_len(format_transcript(msgs)):>7} {r:>12.3f} {r1:>17.3f} {g:>10.3f} {g / r:>6.2f} {g / r1:>20.2f}")

    # (b) 5-turn run with ~500-token replies
    reply_tokens = 200 if args.quick else 500
    query = [Message("user", text_of(rng, 60, tok_len, "user: "))]
    turns = [query]
    for _ in range(4):
        turns.append([*turns[-1], Message("assistant", text_of(rng, reply_tokens, tok_len, "assistant: "))])
    engine.cache.drop("bench-run")
    per_turn: list[tuple[int, int, float]] = []
    t_run = time.perf_counter()
    for k, msgs in enumerate(turns):
        t = time.perf_counter()
        out = engine.route(RouteRequest("b", k, msgs, run_id="bench-run"))
        per_turn.append((out.token_count, out.cached_tokens, time.perf_counter() - t))
    total = time.perf_counter() - t_run
    last_ref = min(timed(lambda: ref_route(turns[-1])) for _ in range(max(1, args.repeats - 1)))
    nocache_total = sum(timed(lambda: nocache.route(RouteRequest("b", 0, m))) for m in turns)  # noqa: B023
    print(f"\n(b) 5-turn run, ~{reply_tokens}-token replies, routed turn by turn with the prefix cache")
    for k, (n, c, s) in enumerate(per_turn):
        print(f"  turn {k}: {n:>5} tokens, {c:>5} cached, {s:.3f} s")
    print(f"  total {total:.3f} s; plain reference prefill of the last turn {last_ref:.3f} s; "
          f"ratio {total / last_ref:.2f} (goal <= 1.3); without the cache the run takes {nocache_total:.3f} s "
          f"({nocache_total / last_ref:.2f}x)")

    # (c) 16 concurrent requests: batched vs one at a time
    reqs = [RouteRequest(f"c{i}", 0, [Message("user", text_of(rng, rng.randint(24, 96), tok_len, "user: "))])
            for i in range(16)]

    async def batched() -> float:
        rt = RouterRuntime(nocache, window_ms=5.0, max_batch=16)
        await rt.start()
        t = time.perf_counter()
        await asyncio.gather(*(rt.route(r) for r in reqs))
        dt = time.perf_counter() - t
        largest = rt.stats().batcher.largest_batch
        await rt.close()
        assert largest == 16, f"expected one batch of 16, largest was {largest}"
        return dt

    async def serial() -> float:
        rt = RouterRuntime(nocache, window_ms=0.0, max_batch=1)
        await rt.start()
        t = time.perf_counter()
        await asyncio.gather(*(rt.route(r) for r in reqs))
        dt = time.perf_counter() - t
        await rt.close()
        return dt

    tb, ts, tref = [], [], []
    for _ in range(args.repeats):
        tb.append(asyncio.run(batched()))
        ts.append(asyncio.run(serial()))
        tref.append(timed(lambda: [ref_route(list(r.messages)) for r in reqs]))
    b, s, rf = min(tb), min(ts), min(tref)
    lens = sorted(tok_len(format_transcript(r.messages)) for r in reqs)
    print(f"\n(c) 16 concurrent route requests ({lens[0]}-{lens[-1]} tokens)")
    print(f"  one at a time {s:.3f} s ({16 / s:.1f} req/s); batched {b:.3f} s ({16 / b:.1f} req/s); "
          f"throughput ratio {s / b:.2f} (goal >= 1.5); plain reference one at a time {rf:.3f} s "
          f"(batched runtime is {rf / b:.2f}x its throughput)")

    # (d) memory
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n(d) peak RSS {peak:.0f} MiB for the whole benchmark process (runtime engine + reference model + "
          f"activations); the engine's weights added {rss_engine:.0f} MiB at load "
          f"(safetensors are memory-mapped); prefix cache now {engine.cache.stats().bytes / 2**20:.0f} MiB")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
