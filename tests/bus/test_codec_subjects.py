"""Codec limits and strictness; subject builders."""

from __future__ import annotations

import pytest

from bus import subjects
from bus.codec import decode, encode, peek_request_id
from bus.errors import MalformedPayload, PayloadTooLarge
from schemas import CoordinationRequest, Message

#: Not one subject token: "$" matched before a final newline, so "abc\n" used to pass and end the subject early.
BAD_TOKENS = ("abc\n", "abc\r\n", "\n", "a\nb", "a.b", "a b", " ", "*", "a*", ">", "a>", "", "x" * 129, "é", "a\x00",
              "a\t")


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
    for bad in BAD_TOKENS:
        with pytest.raises(subjects.InvalidSubjectToken):
            subjects.route("torch", bad)
        with pytest.raises(subjects.InvalidSubjectToken):
            subjects.coord_result(bad)
        with pytest.raises(subjects.InvalidSubjectToken):
            subjects.trace(bad, "run_started")
    assert subjects.coord_result("x" * 128) == "trinity.coord.result." + "x" * 128


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b'{"request_id":"q1","query":"\xff\xfe"}', "not valid UTF-8"),
        (b'{"request_id":"q1\xc3","query":"hi"}', "not valid UTF-8"),
        (b'{"request_id":"q1","query":"\xed\xa0\x80"}', "not valid UTF-8"),  # a surrogate encoded as UTF-8
        (b'{"request_id":"q1","query":"\\udc00x"}', "not valid JSON"),  # a lone escaped surrogate
        (b'{"request_id":"q1","query":"hi","metadata":{"k":"\xf0\x28\x8c\x28"}}', "not valid UTF-8"),
        (b"\xff", "not valid JSON"),
        (b'{"request_id":"abc\\n","query":"hi"}', "$.request_id"),
        (b'{"request_id":"a.b","query":"hi"}', "$.request_id"),
        (b'{"request_id":"","query":"hi"}', "$.request_id"),
    ],
)
def test_every_decode_failure_is_malformed_payload(data: bytes, detail: str) -> None:
    with pytest.raises(MalformedPayload) as ei:
        decode(data, CoordinationRequest)
    assert detail in str(ei.value) and "CoordinationRequest" in str(ei.value)


def test_peek_request_id_reads_any_object_and_never_raises() -> None:
    assert peek_request_id(b'{"request_id":"abc\\n","anything":[1,{"x":null}]}') == "abc\n"
    assert peek_request_id(encode(CoordinationRequest(request_id="q1", query="hi"))) == "q1"
    for data in (b"", b"\xff", b"[]", b"null", b'{"request_id":5}', b'{"query":"x"}', b'{"request_id":"\xff"}',
                 b"[" * 100_000):
        assert peek_request_id(data) is None
