"""Codec limits and strictness; subject builders."""

from __future__ import annotations

import pytest

from bus import subjects
from bus.codec import decode, encode
from bus.errors import MalformedPayload, PayloadTooLarge
from schemas import CoordinationRequest, Message


def test_round_trip_and_strict_types() -> None:
    req = CoordinationRequest(request_id="q1", query="hi")
    assert decode(encode(req), CoordinationRequest) == req
    with pytest.raises(MalformedPayload, match=r"\$\.budget\.max_turns"):
        decode(b'{"request_id":"q1","query":"hi","budget":{"max_turns":"5"}}', CoordinationRequest)
    with pytest.raises(MalformedPayload, match="unknown field"):
        decode(b'{"role":"user","content":"x","extra":1}', Message)
    with pytest.raises(MalformedPayload, match=r"max_turns: must be in 1\.\.64"):
        decode(b'{"request_id":"q1","query":"hi","budget":{"max_turns":0}}', CoordinationRequest)


def test_size_limit_is_checked_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge) as ei:
        decode(b"x" * 101, Message, max_bytes=100, subject="a.b")
    assert (ei.value.size, ei.value.limit) == (101, 100) and "a.b" in str(ei.value)


def test_subjects() -> None:
    assert subjects.route("torch", "base") == "trinity.route.torch.base"
    assert subjects.agent_call(3) == "trinity.agent.3.call"
    assert subjects.trace("q-1", "route_decided") == "trinity.trace.q-1.route_decided"
    assert subjects.trace_filter(None, "run_finished") == "trinity.trace.*.run_finished"
    for bad in ("a.b", "a b", "*", ">", ""):
        with pytest.raises(subjects.InvalidSubjectToken):
            subjects.route("torch", bad)
