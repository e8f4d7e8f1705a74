"""The shared secret scrubber (schemas/redaction.py): each secret shape is removed, ordinary text is kept, and
identifiers are never touched (so scrubbed events and results still decode)."""

from __future__ import annotations

import logging

import pytest

from ops.log_scrub import ScrubLogFilter
from schemas import CoordinationRequest
from schemas.redaction import MARKER, scrub, scrub_text
from schemas.wire import ErrorCode, ErrorReply


@pytest.mark.parametrize(("text", "secret"), [
    ("see https://alice:s3cret-pw@api.example.com/v1", "alice:s3cret-pw"),
    ("nats://ops:pw-123456@10.0.0.5:4222", "ops:pw-123456"),
    ("redis://:only-password@host", ":only-password"),
    ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("DefaultEndpointsProtocol=https;AccountName=x;AccountKey=abcDEF0123456789+/==;", "abcDEF0123456789+/=="),
    ("https://x.blob.core.windows.net/c?sv=2022&sig=AbCdEf0123456789%3D", "AbCdEf0123456789%3D"),
    ("AIzaSyA-abcdefghijklmnopqrstuvwxyz012345", "AIzaSyA-abcdefghijklmnopqrstuvwxyz012345"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("password=hunter2", "hunter2"),
    ('{"password": "p@ss w"}', "p@ss"),
    ("PWD: x9", "x9"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----", "MIIEvQIBADANBg"),
    ("Authorization: Bearer eyJhbGciOi.abc.def", "eyJhbGciOi.abc.def"),
    ("sk-proj-abcdefghijklmnopqrstuvwx", "sk-proj-abcdefghijklmnopqrstuvwx"),
])
def test_each_secret_shape_is_scrubbed(text: str, secret: str) -> None:
    out = scrub_text(text)
    assert secret not in out and MARKER in out


def test_ordinary_text_and_urls_without_userinfo_are_kept() -> None:
    for text in ("What is 17 + 25?", "see https://example.com/a?b=c", "user@example.com wrote", "pass the salt",
                 "the password is strong"):
        assert scrub_text(text) == text
    assert scrub_text("GET https://u:p4ss@h/x") == "GET https://[REDACTED]@h/x"  # the host stays readable


def test_scrub_keeps_identifiers_and_types() -> None:
    req = CoordinationRequest(request_id="AKIAIOSFODNN7EXAMPLE", query="password=hunter2 what?")
    clean = scrub(req)
    assert clean.request_id == "AKIAIOSFODNN7EXAMPLE"  # an id is a validated token, not scrubbed
    assert clean.query == "password=[REDACTED] what?" and type(clean) is CoordinationRequest
    same = CoordinationRequest(request_id="r1", query="nothing secret")
    assert scrub(same) is same


def test_scrub_keeps_length_limits() -> None:
    from schemas.coordination import MAX_QUERY_CHARS
    query = "x" * (MAX_QUERY_CHARS - len(" pwd=ab")) + " pwd=ab"  # at the limit; the marker is longer than "ab"
    clean = scrub(CoordinationRequest(request_id="r1", query=query))
    assert len(clean.query) == MAX_QUERY_CHARS and clean.query.endswith("pwd=[R") and "ab" not in clean.query[-6:]


def test_error_replies_scrub_on_construction_and_decoding() -> None:
    e = ErrorReply(code=ErrorCode.UPSTREAM, message="cannot reach https://a:pw-1@h", details={"url": "https://a:pw-1@h"})
    assert "pw-1" not in e.message and "pw-1" not in e.details["url"]


def test_the_log_filter_scrubs_arguments_and_tracebacks() -> None:
    rec = logging.LogRecord("httpx", logging.INFO, __file__, 1, 'HTTP Request: POST %s "%s"', (
        "https://a:pw-123456@h/v1", "HTTP/1.1 200 OK"), None)
    try:
        raise RuntimeError("boom at nats://u:pw-654321@h")
    except RuntimeError:
        import sys
        rec.exc_info = sys.exc_info()
    assert ScrubLogFilter().filter(rec)
    text = logging.Formatter().format(rec)
    assert "pw-123456" not in text and "pw-654321" not in text and "HTTP/1.1 200 OK" in text
