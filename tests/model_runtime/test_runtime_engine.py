"""Engine behaviour on the tiny checkpoint: labels, counts, typed errors, head loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.errors import (
    AdapterNotServed,
    ContextTooLong,
    HeadShapeMismatch,
    TranscriptTooShort,
)
from actors.model_runtime.formatting import format_transcript, transcript_hash
from actors.model_runtime.head import RoutingHead
from actors.model_runtime.tokenizer import RouterTokenizer
from config.model_runtime import ModelRuntimeSettings
from schemas.common import Message
from schemas.routing import RouteRequest, decide
from schemas.sakana import HeadSpec, RuntimeProfile
from schemas.wire import ErrorCode
from tests.model_runtime.support import EngineFactory, Reference

MSGS = [Message("user", "What is 17 + 25? Answer briefly."), Message("assistant", "42")]


def test_route_returns_labelled_logits(tiny_engine: EngineFactory, tokenizer: RouterTokenizer) -> None:
    engine = tiny_engine(profile="cpu-f32", runtime_id="rt-1")
    out = engine.route(RouteRequest("req-1", 2, MSGS))
    assert (out.request_id, out.turn, out.backend, out.adapter, out.profile, out.runtime_id) == (
        "req-1", 2, "torch", "base", "cpu-f32", "rt-1")
    assert len(out.agent_logits) == 7 and len(out.role_logits) == 3
    assert out.token_count == len(tokenizer.encode(format_transcript(MSGS)))
    assert out.transcript_hash == transcript_hash(MSGS)
    assert out.cached_tokens == 0 and out.latency_ms > 0
    assert decide(out, RuntimeProfile()).agent_id in range(7)


def test_logits_are_head_times_reference_state(tiny_engine: EngineFactory, tiny_reference: Reference,
                                               tokenizer: RouterTokenizer) -> None:
    engine = tiny_engine()
    out = engine.route(RouteRequest("r", 0, MSGS))
    h = tiny_reference.hidden(tokenizer.encode(format_transcript(MSGS)))
    want = (engine.head.weight @ h.float()).tolist()
    np.testing.assert_allclose(out.logits, want, rtol=1e-4, atol=1e-4)


def test_state_ignores_the_last_token(tiny_engine: EngineFactory) -> None:
    engine = tiny_engine()
    a = engine.route(RouteRequest("r", 0, [Message("user", "Route this please x")]))
    b = engine.route(RouteRequest("r", 0, [Message("user", "Route this please y")]))
    assert a.token_count == b.token_count
    assert a.logits == b.logits  # the last token never reaches the state at position -2


def test_too_short_transcript_is_typed_error(tiny_engine: EngineFactory, tiny_checkpoint: Path) -> None:
    # Every real "role: content" line has >= 2 Qwen tokens, so use a tokenizer mapping text to one token.
    one_token = RouterTokenizer(Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")), "one-token")
    engine = RouterEngine.load(ModelRuntimeSettings(), checkpoint_dir=tiny_checkpoint, tokenizer=one_token)
    with pytest.raises(TranscriptTooShort) as err:
        engine.prepare(RouteRequest("r", 0, [Message("user", "hi")]))
    assert err.value.code is ErrorCode.INVALID and err.value.token_count == 1


def test_over_context_limit_is_too_large(tiny_engine: EngineFactory) -> None:
    engine = tiny_engine(max_context_tokens=8)
    with pytest.raises(ContextTooLong) as err:
        engine.prepare(RouteRequest("r", 0, MSGS))
    assert err.value.code is ErrorCode.TOO_LARGE and err.value.limit == 8


def test_wrong_adapter_is_not_found(tiny_engine: EngineFactory) -> None:
    engine = tiny_engine()
    with pytest.raises(AdapterNotServed) as err:
        engine.prepare(RouteRequest("r", 0, MSGS, adapter="abcdef0123456789"))
    assert err.value.code is ErrorCode.NOT_FOUND


def test_head_of_wrong_width_is_rejected_at_load(tiny_checkpoint: Path, tokenizer: RouterTokenizer) -> None:
    head = RoutingHead.random(HeadSpec(cols=1024), seed=0)  # full-size head on the 64-wide tiny model
    with pytest.raises(HeadShapeMismatch) as err:
        RouterEngine.load(ModelRuntimeSettings(), checkpoint_dir=tiny_checkpoint, tokenizer=tokenizer, head=head)
    assert err.value.code is ErrorCode.INVALID and err.value.expected == (10, 64)


def test_head_file_shapes(tmp_path: Path) -> None:
    spec = HeadSpec(cols=16)
    np.save(tmp_path / "bad.npy", np.zeros((10, 15), dtype=np.float32))
    with pytest.raises(HeadShapeMismatch):
        RoutingHead.load(tmp_path / "bad.npy", spec)
    vec = np.arange(9 * 16 + 160, dtype=np.float64)  # offsets then a row-major {10, 16} head
    np.save(tmp_path / "vec.npy", vec)
    head = RoutingHead.load(tmp_path / "vec.npy", spec)
    assert head.weight.dtype == torch.float32
    assert head.weight[0, 0].item() == 144.0 and head.weight[9, 15].item() == 303.0


def test_trinity_vector_head_loads() -> None:
    path = Path("/work/shared/anchors/sakana_model_iter_60.npy")
    if not path.is_file():
        pytest.skip("anchor vector not present")
    head = RoutingHead.load(path, HeadSpec())
    vec = np.load(path)
    assert tuple(head.weight.shape) == (10, 1024)
    np.testing.assert_array_equal(head.weight.numpy(), vec[9216:].reshape(10, 1024).astype(np.float32))


def test_head_applies_in_float32() -> None:
    head = RoutingHead.random(HeadSpec(cols=8), seed=1)
    logits = head.apply(torch.ones(2, 8, dtype=torch.bfloat16))
    assert logits.dtype == torch.float32 and tuple(logits.shape) == (2, 10)
    agents, roles = head.split(logits)
    assert len(agents[1]) == 7 and len(roles[1]) == 3
