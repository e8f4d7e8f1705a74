"""Transcript formatting, tokenization and fingerprints against the 37 anchor cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actors.model_runtime.formatting import format_transcript, text_sha256, transcript_hash, transcript_term_bytes
from actors.model_runtime.tokenizer import RouterTokenizer, default_tokenizer_path
from schemas.common import Message

ANCHORS = Path("/work/shared/anchors")
if not ANCHORS.is_dir():
    ANCHORS = Path(__file__).resolve().parents[1] / "data" / "anchors"  # vendored copy, if any


def _cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    cases = json.loads((ANCHORS / "qwen_router_prompt_eval_cases.json").read_text())["cases"]
    logits = {c["id"]: c for c in json.loads((ANCHORS / "qwen_router_prompt_eval_logits.json").read_text())["cases"]}
    return [(c, logits[c["id"]]) for c in cases]


pytestmark = pytest.mark.skipif(not ANCHORS.is_dir(), reason="anchor data folder not present")


def _messages(case: dict[str, Any]) -> list[Message]:
    return [Message(m["role"], m["content"]) for m in case["messages"]]


def test_format_joins_role_lines_without_template() -> None:
    msgs = [Message("user", "Q?"), Message("assistant", "A.\nmore")]
    assert format_transcript(msgs) == "user: Q?\nassistant: A.\nmore"


def test_packaged_tokenizer_is_real_qwen(tokenizer: RouterTokenizer) -> None:
    assert default_tokenizer_path().name == "tokenizer.json"
    assert tokenizer.vocab_size == 151669  # 151643 BPE ids + 26 added special tokens; the model pads to 151936
    assert tokenizer.encode("user: What is 17 + 25? Answer briefly.") == [
        872, 25, 3555, 374, 220, 16, 22, 488, 220, 17, 20, 30, 21806, 26753, 13]


def test_anchor_token_counts_match_exactly(tokenizer: RouterTokenizer) -> None:
    pairs = _cases()
    assert len(pairs) == 37
    got = {c["id"]: len(tokenizer.encode(format_transcript(_messages(c)))) for c, _ in pairs}
    want = {c["id"]: ref["token_count"] for c, ref in pairs}
    assert got == want


def test_anchor_transcript_hash_is_elixir_term_hash_not_text_sha() -> None:
    pairs = _cases()
    # The anchors' transcript_hash is not sha256 of the formatted text ...
    assert all(text_sha256(format_transcript(_messages(c))) != ref["transcript_hash"] for c, ref in pairs)
    # ... but sha256 of Erlang's term_to_binary(messages, [:compressed]), which we reproduce for all 37.
    assert {c["id"]: transcript_hash(_messages(c)) for c, _ in pairs} == {
        c["id"]: ref["transcript_hash"] for c, ref in pairs}


def test_term_bytes_compress_only_when_smaller() -> None:
    short = transcript_term_bytes([Message("user", "hi")])
    assert short[:2] == bytes((131, 108))  # plain LIST_EXT: compression would not pay
    long = transcript_term_bytes([Message("user", "word " * 50)])
    assert long[:2] == bytes((131, 80))  # compressed
    assert transcript_term_bytes([]) == bytes((131, 106))
