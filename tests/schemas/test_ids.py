"""Ids, tokens and digests match the whole string: ``$`` also matched before a final newline, so "abc\\n"
passed as a request id (its traces were never stored and its result landed under ``...result.abc``)."""

from __future__ import annotations

import msgspec
import pytest

from schemas import CoordinationRequest, RouteRequest, SchemaError
from schemas.common import check_sha256, check_token
from schemas.fleet import InstanceSpec, Lease, PlacementKey, RuntimeControlReply, RuntimeHeartbeat
from schemas.roles import RoleInjectRequest

BAD = ["abc\n", "abc\r\n", "\n", "a\nb", "a.b", "a b", " ", "*", "a*", ">", "a>", "", "x" * 129, "é", "a\x00", "a\t",
       "a/b", "a:b"]
GOOD = ["a", "abc", "A-z_0-9", "x" * 128, "0"]
SHA = "0123456789abcdef" * 4


@pytest.mark.parametrize("bad", BAD)
def test_bad_request_ids_are_refused_on_decode(bad: str) -> None:
    for type_, fields in ((CoordinationRequest, {"query": "q"}),
                          (RoleInjectRequest, {"turn": 0, "agent_id": 1, "role": 0, "query": "q"}),
                          (RouteRequest, {"turn": 0, "messages": [{"role": "user", "content": "q"}]})):
        data = msgspec.json.encode({"request_id": bad, **fields})
        with pytest.raises(msgspec.ValidationError, match=r"\$\.request_id"):
            msgspec.json.decode(data, type=type_)


@pytest.mark.parametrize("bad", BAD)
def test_bad_tokens_are_refused(bad: str) -> None:
    with pytest.raises(SchemaError, match="subject token"):
        check_token(bad, "x")
    with pytest.raises(SchemaError, match="adapter"):
        CoordinationRequest(request_id="q1", query="q", adapter=bad)
    with pytest.raises(SchemaError, match="backend"):
        PlacementKey(backend=bad)


@pytest.mark.parametrize("good", GOOD)
def test_good_ids_pass(good: str) -> None:
    check_token(good, "x")
    data = msgspec.json.encode({"request_id": good, "query": "q"})
    assert msgspec.json.decode(data, type=CoordinationRequest).request_id == good


def test_sha256_must_be_the_whole_string() -> None:
    check_sha256(SHA, "digest")
    for bad in (SHA + "\n", SHA.upper(), SHA[:-1], SHA + "0", " " + SHA):
        with pytest.raises(SchemaError, match="64 lowercase hex"):
            check_sha256(bad, "digest")


@pytest.mark.parametrize("bad", ["abc\n", "host.example.com-1", "a b", ""])
def test_runtime_ids_are_subject_tokens(bad: str) -> None:
    spec = InstanceSpec(backend_id="torch", base_model="qwen3-0123abcd")
    with pytest.raises(SchemaError, match="runtime_id"):
        RuntimeHeartbeat(runtime_id=bad, spec=spec, warm_adapters=[], queue_depth=0, in_flight=0, rss_mb=1.0, ts=0.0)
    with pytest.raises(SchemaError, match="runtime_id"):
        RuntimeControlReply(runtime_id=bad, op="status", warm_adapters=[])  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match=r"runtimes\[1\]"):
        Lease(lease_id="l1", key=PlacementKey(backend="torch"), owner="c1", runtimes=["rt-1", bad], ttl_s=5.0,
              base_model="b")
    assert RuntimeHeartbeat(runtime_id="rt-1", spec=spec, warm_adapters=[], queue_depth=0, in_flight=0, rss_mb=1.0,
                            ts=0.0).runtime_id == "rt-1"
