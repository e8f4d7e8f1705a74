"""Model runtime actor: Qwen3 routing backbone + TRINITY head, served on ``trinity.route.<backend>.<adapter>``.

Modules (pure logic first, the bus last):

* :mod:`.formatting` — transcript text (``"role: content"`` lines) and the cross-port transcript hash;
* :mod:`.tokenizer` — Qwen's ``tokenizer.json`` without special tokens;
* :mod:`.checkpoints` — synthetic (seeded random) Qwen3 checkpoints of real shapes, built once and cached;
* :mod:`.head` — the bias-free ``{10, 1024}`` routing head, float32;
* :mod:`.prefix_cache` — per-run K/V cache keyed by the longest common prefix of token ids, LRU-bounded;
* :mod:`.engine` — decoder up to the final-norm state at position -2, batched and prefix-cached;
* :mod:`.batcher` / :mod:`.runtime` — dynamic batching on a single worker thread;
* :mod:`.actor` — the nats ``micro`` service with typed error replies;
* :mod:`.errors` — one exception per error kind, each mapped to a wire ``ErrorCode``.

The hidden state never leaves this package: only :class:`schemas.routing.RouteLogits` crosses the bus.
"""
