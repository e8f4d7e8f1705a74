"""Adapter management on the tiny checkpoint: load/unload, idempotency, typed errors, per-request switching,
per-adapter heads, prefix-cache isolation, memory held per adapter, and the runtime's worker-thread loads."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from actors.model_runtime.engine import PreparedRoute, RouterEngine
from actors.model_runtime.errors import (
    AdapterBudgetExceeded,
    AdapterNotLoaded,
    AdapterNotServed,
    AdapterVectorInvalid,
    BaseAdapterPinned,
)
from actors.model_runtime.runtime import RouterRuntime
from actors.model_runtime.tokenizer import RouterTokenizer
from config.model_runtime import ModelRuntimeSettings
from crucible.router_vector import SAFETENSORS_KEY
from schemas.common import Message
from schemas.routing import RouteLogits, RouteRequest
from schemas.wire import ErrorCode
from tests.model_runtime.adapter_vectors import random_adapter_vector

MSGS = [Message("user", "What is 17 + 25? Answer briefly."), Message("assistant", "42")]


@pytest.fixture
def engine(tiny_checkpoint: Path, tokenizer: RouterTokenizer, tmp_path: Path) -> RouterEngine:
    settings = ModelRuntimeSettings(factor_cache_dir=str(tmp_path / "factors"))
    return RouterEngine.load(settings, checkpoint_dir=tiny_checkpoint, tokenizer=tokenizer)


def _route(engine: RouterEngine, adapter: str, msgs: list[Message] = MSGS, run_id: str | None = None) -> RouteLogits:
    return engine.route(RouteRequest("r", 0, msgs, adapter=adapter, run_id=run_id))


def test_load_is_idempotent_and_files_give_the_same_token(engine: RouterEngine, tmp_path: Path) -> None:
    vector = random_adapter_vector(engine, 1).astype(np.float32).astype(np.float64)  # exact in both file formats
    np.save(tmp_path / "v.npy", vector)
    save_file({SAFETENSORS_KEY: vector.astype(np.float32)}, str(tmp_path / "v.safetensors"))
    first = engine.load_adapter(tmp_path / "v.npy")
    assert (first.source, first.skipped) == (str(tmp_path / "v.npy"), ("lm_head.weight",))
    assert first.ref is not None and first.ref.token == first.token and len(first.token) == 16
    assert engine.load_adapter(str(tmp_path / "v.npy")) is first
    assert engine.load_adapter(tmp_path / "v.safetensors") is first
    assert engine.load_adapter(vector) is first
    assert engine.adapter_loads == 1 and engine.warm_adapters() == ["base", first.token]
    assert engine.adapter_info(first.token) is first
    base = engine.adapter_info("base")
    assert (base.token, base.nbytes, base.ref) == ("base", 0, None)


def test_memory_held_per_adapter(engine: RouterEngine) -> None:
    weights = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    infos = [engine.load_adapter(random_adapter_vector(engine, seed)) for seed in range(5)]
    hidden = int(engine.model.config.hidden_size)
    # tiny layout: k = 64 for the embedding, q, o, gate, up, down; 32 for k and v (wide 32 x 64)
    expected = (6 * 64 + 2 * 32 + 8) * 4 + 10 * hidden * 4  # offsets + scales + head, float32
    for info in infos:
        adapter = engine._slots[info.token]
        assert adapter is not None
        held = [*adapter.offsets.values(), *adapter.scales.values(), adapter.head.weight]
        assert info.nbytes == sum(t.numel() * t.element_size() for t in held) == expected == 4384
    # the bases are shared by all adapters, once: 6 x 64^2 + 2 x 32^2 float32 + singular values float64
    assert engine.adapters.shared_nbytes == (6 * 64 * 64 + 2 * 32 * 32) * 4 + (6 * 64 + 2 * 32) * 8
    # the base weights are never modified
    assert all(torch.equal(p, weights[n]) for n, p in engine.model.named_parameters())
    assert len({i.token for i in infos}) == 5


def test_per_request_switching_needs_no_reload(engine: RouterEngine) -> None:
    a = engine.load_adapter(random_adapter_vector(engine, 1)).token
    b = engine.load_adapter(random_adapter_vector(engine, 2)).token
    first = {t: _route(engine, t).logits for t in ("base", a, b)}
    assert len({tuple(v) for v in first.values()}) == 3  # three different routers over one model
    for _ in range(3):
        for t in (b, "base", a):
            out = _route(engine, t)
            assert out.adapter == t
            np.testing.assert_allclose(out.logits, first[t], rtol=1e-5, atol=1e-5)
    assert engine.adapter_loads == 2
    # a mixed batch answers each request with its own adapter and head
    batch = [engine.prepare(RouteRequest(f"m{i}", 0, MSGS, adapter=t)) for i, t in enumerate((a, "base", b, a))]
    outs = engine.run(batch)
    assert [o.adapter for o in outs if isinstance(o, RouteLogits)] == [a, "base", b, a]
    for o in outs:
        assert isinstance(o, RouteLogits)
        np.testing.assert_allclose(o.logits, first[o.adapter], rtol=1e-4, atol=1e-4)


def test_typed_errors(engine: RouterEngine, tmp_path: Path) -> None:
    good = random_adapter_vector(engine, 3)
    bad_vectors = {
        "short": good[:-1],
        "nan offsets": np.where(np.arange(good.size) == 5, np.nan, good),
        "erased spectrum": np.concatenate([np.full(good.size - 640, -1.0), good[-640:]]),
        "2-D": good.reshape(2, -1),
    }
    for what, vector in bad_vectors.items():
        with pytest.raises(AdapterVectorInvalid) as err:
            engine.load_adapter(vector)
        assert err.value.code is ErrorCode.INVALID, what
    np.save(tmp_path / "nan.npy", bad_vectors["nan offsets"])
    (tmp_path / "junk.npy").write_bytes(b"not an npy file")
    for path in (tmp_path / "nan.npy", tmp_path / "junk.npy", tmp_path / "missing.npy", tmp_path / "v.txt"):
        with pytest.raises(AdapterVectorInvalid):
            engine.load_adapter(path)
    assert engine.warm_adapters() == ["base"] and engine.adapter_loads == 0
    with pytest.raises(BaseAdapterPinned) as pinned:
        engine.unload_adapter("base")
    assert pinned.value.code is ErrorCode.INVALID
    for call in (engine.unload_adapter, engine.adapter_info):
        with pytest.raises(AdapterNotLoaded) as missing:
            call("0123456789abcdef")
        assert missing.value.code is ErrorCode.NOT_FOUND
    token = engine.load_adapter(good).token
    engine.unload_adapter(token)
    assert engine.warm_adapters() == ["base"]
    with pytest.raises(AdapterNotServed):
        engine.prepare(RouteRequest("r", 0, MSGS, adapter=token))


def test_unload_fails_requests_prepared_for_it(engine: RouterEngine) -> None:
    token = engine.load_adapter(random_adapter_vector(engine, 4)).token
    batch = [engine.prepare(RouteRequest("x", 0, MSGS, adapter=token)), engine.prepare(RouteRequest("y", 0, MSGS))]
    engine.unload_adapter(token)
    gone, base = engine.run(batch)
    assert isinstance(gone, AdapterNotServed) and isinstance(base, RouteLogits) and base.adapter == "base"


def test_memory_budget(tiny_checkpoint: Path, tokenizer: RouterTokenizer, tmp_path: Path) -> None:
    settings = ModelRuntimeSettings(factor_cache_dir=str(tmp_path / "f"), adapter_memory_budget_mb=6000 / 2**20)
    engine = RouterEngine.load(settings, checkpoint_dir=tiny_checkpoint, tokenizer=tokenizer)
    engine.load_adapter(random_adapter_vector(engine, 1))  # 4384 bytes
    with pytest.raises(AdapterBudgetExceeded) as err:
        engine.load_adapter(random_adapter_vector(engine, 2))
    assert err.value.code is ErrorCode.TOO_LARGE and len(engine.warm_adapters()) == 2


def test_settings_load_vectors_and_pick_the_default(tiny_checkpoint: Path, tokenizer: RouterTokenizer,
                                                    tmp_path: Path, engine: RouterEngine) -> None:
    paths = []
    for seed in (5, 6):
        paths.append(str(tmp_path / f"v{seed}.npy"))
        np.save(paths[-1], random_adapter_vector(engine, seed))
    settings = ModelRuntimeSettings(factor_cache_dir=str(tmp_path / "factors"), adapter_vectors=paths)
    loaded = RouterEngine.load(settings, checkpoint_dir=tiny_checkpoint, tokenizer=tokenizer)
    tokens = loaded.warm_adapters()
    assert len(tokens) == 3 and tokens[0] == "base" and [loaded.adapter_info(t).source for t in tokens[1:]] == paths
    default = RouterEngine.load(msgspec.structs.replace(settings, adapter=tokens[2]), checkpoint_dir=tiny_checkpoint,
                                tokenizer=tokenizer)
    assert _route(default, tokens[2]).logits == _route(loaded, tokens[2]).logits
    with pytest.raises(AdapterNotLoaded):
        RouterEngine.load(msgspec.structs.replace(settings, adapter="0123456789abcdef"),
                          checkpoint_dir=tiny_checkpoint, tokenizer=tokenizer)


def test_prefix_cache_is_never_reused_across_adapters(engine: RouterEngine) -> None:
    a = engine.load_adapter(random_adapter_vector(engine, 7)).token
    longer = [*MSGS, Message("assistant", "Verified: 42 is right.")]
    fresh = {t: _route(engine, t, longer).logits for t in ("base", a)}
    _route(engine, a, MSGS, run_id="run-1")
    switched = _route(engine, "base", longer, run_id="run-1")  # same run, other adapter: computed afresh
    assert switched.cached_tokens == 0 and engine.cache.stats().adapter_mismatches == 1
    np.testing.assert_allclose(switched.logits, fresh["base"], rtol=1e-5, atol=1e-5)
    again = _route(engine, "base", [*longer, Message("user", "thanks")], run_id="run-1")
    assert again.cached_tokens > 0  # the entry is now base's, and base reuses it
    _route(engine, a, MSGS, run_id="run-2")
    reused = _route(engine, a, longer, run_id="run-2")
    assert reused.cached_tokens > 0 and reused.adapter == a
    np.testing.assert_allclose(reused.logits, fresh[a], rtol=1e-4, atol=1e-4)
    engine.unload_adapter(a)
    assert "run-2" not in engine.cache and "run-1" in engine.cache


async def test_runtime_loads_on_the_worker_thread_between_batches(engine: RouterEngine) -> None:
    threads: dict[str, set[str]] = {"load": set(), "run": set()}
    load, run = engine.load_adapter, engine.run

    def traced_load(source: object) -> object:
        threads["load"].add(threading.current_thread().name)
        return load(source)  # type: ignore[arg-type]

    def traced_run(batch: list[PreparedRoute]) -> object:
        threads["run"].add(threading.current_thread().name)
        return run(batch)

    engine.load_adapter = traced_load  # type: ignore[method-assign,assignment]
    engine.run = traced_run  # type: ignore[method-assign,assignment]
    rt = RouterRuntime(engine, window_ms=1.0)
    await rt.start()
    try:
        vectors = [random_adapter_vector(engine, s) for s in (11, 12)]
        base_jobs = [asyncio.ensure_future(rt.route(RouteRequest(f"b{i}", 0, MSGS))) for i in range(8)]
        infos = await asyncio.gather(*(rt.load_adapter(v) for v in vectors))
        mixed = await asyncio.gather(*(rt.route(RouteRequest(f"m{i}", 0, MSGS, adapter=infos[i % 2].token))
                                       for i in range(8)))
        assert [m.adapter for m in mixed] == [infos[i % 2].token for i in range(8)]
        assert all(b.adapter == "base" for b in await asyncio.gather(*base_jobs))
        await rt.unload_adapter(infos[0].token)
        assert engine.warm_adapters() == ["base", infos[1].token]
        with pytest.raises(AdapterNotServed):
            await rt.route(RouteRequest("gone", 0, MSGS, adapter=infos[0].token))
        with pytest.raises(BaseAdapterPinned):
            await rt.unload_adapter("base")
    finally:
        await rt.close()
    assert threads["load"] == threads["run"] and len(threads["run"]) == 1
    assert threads["run"] != {threading.current_thread().name}
