"""The ``sakana`` routing profile in the runtime: chat-template text, its tokens, bfloat16, and the label."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from actors.model_runtime.formatting import (
    SAKANA_ROUTER_SYSTEM_PROMPT,
    qwen3_chat_text,
    router_text,
    sakana_thought,
)
from actors.model_runtime.tokenizer import RouterTokenizer
from config.model_runtime import ModelRuntimeSettings
from schemas.common import Message
from schemas.routing import RouteRequest
from tests.model_runtime.support import EngineFactory, Reference

QUERY = "What is 17 + 25? Answer briefly."


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer: RouterTokenizer):  # type: ignore[no-untyped-def]
    """transformers' tokenizer over the same files, with Qwen3's own chat template."""
    return AutoTokenizer.from_pretrained(str(Path(tokenizer.source).parent))


@pytest.mark.parametrize("system,user", [("S", "U"), (SAKANA_ROUTER_SYSTEM_PROMPT.format(num_agents=7), QUERY),
                                         ("", "multi\nline <idea>x</idea>")])
def test_chat_text_equals_qwen3_template(hf_tokenizer, system: str, user: str) -> None:  # type: ignore[no-untyped-def]
    ref = hf_tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                           tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert qwen3_chat_text(system, user) == ref


def test_sakana_text_and_tokens(hf_tokenizer, tokenizer: RouterTokenizer) -> None:  # type: ignore[no-untyped-def]
    msgs = [Message("user", QUERY), Message("assistant", "Sure. <idea> 17+25=42 </idea> 42"),
            Message("assistant", "<idea></idea>"), Message("assistant", " plain 42 ")]
    text = router_text(msgs, "sakana", 7)
    collaboration = ("You may see other agents' reference thought in <reference_thought> tag. In that case, you "
                     "should analyse those infomation, and then give response to the query. ")  # fugu's, verbatim
    user = f"{QUERY}\n{collaboration}\n<reference_thought_0>17+25=42</reference_thought_0>\n<reference_thought_1> " \
           "plain 42 </reference_thought_1>"
    assert text == qwen3_chat_text(SAKANA_ROUTER_SYSTEM_PROMPT.format(num_agents=7), user)
    ids = tokenizer.encode(text)
    assert ids == hf_tokenizer(text)["input_ids"]  # special tokens encode as themselves
    assert ids[0] == hf_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-2] == hf_tokenizer.convert_tokens_to_ids("</think>")  # the position the router reads
    assert router_text(msgs, "elixir-port") == "\n".join(f"{m.role}: {m.content}" for m in msgs)


def test_sakana_thought_rules() -> None:
    assert sakana_thought("a <idea> x </idea> b <idea>y</idea>") == "x"
    assert sakana_thought("a <idea> unclosed") == "a  unclosed"
    assert sakana_thought(" no tag ") == " no tag "


def test_settings_resolve_profile_defaults() -> None:
    s = ModelRuntimeSettings(routing_profile="sakana")
    assert (s.dtype, s.tied_embedding) == ("bfloat16", "lm_head-wins")
    e = ModelRuntimeSettings()
    assert (e.dtype, e.tied_embedding) == ("float32", "embed-wins")
    o = ModelRuntimeSettings(routing_profile="sakana", dtype="float32", tied_embedding="embed-wins")
    assert (o.dtype, o.tied_embedding) == ("float32", "embed-wins")
    with pytest.raises(ValueError, match="routing_profile"):
        ModelRuntimeSettings(routing_profile="fugu")
    with pytest.raises(ValueError, match="tied_embedding"):
        ModelRuntimeSettings(tied_embedding="both")


def test_sakana_engine_routes_in_bfloat16_on_the_template(tiny_engine: EngineFactory, tiny_reference: Reference,
                                                         tokenizer: RouterTokenizer) -> None:
    engine = tiny_engine(routing_profile="sakana")
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    msgs = [Message("user", QUERY), Message("assistant", "<idea>add</idea> 42")]
    out = engine.route(RouteRequest("s1", 1, msgs))
    assert out.routing_profile == "sakana"
    ids = tokenizer.encode(router_text(msgs, "sakana", 7))
    assert out.token_count == len(ids)
    # the reference reads the same ids at -2 in float32; bfloat16 stays close
    ref = engine.head.apply(tiny_reference.hidden(ids)[None].to(engine.device))[0]
    got = torch.tensor(out.logits)
    cos = torch.nn.functional.cosine_similarity(got, ref.to(torch.float64).cpu().to(got.dtype), dim=0)
    assert cos > 0.99, cos
