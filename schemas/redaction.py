"""Secret shapes and the scrubber every process applies before anything leaves it (standard library only).

What may cross the bus, be stored or be logged never carries a credential: URL userinfo
(``https://user:pass@host`` keeps ``https://[REDACTED]@host``), API keys (``sk-...``, ``sk-ant-...``, Google
``AIza...``, GitHub ``ghp_...``, Slack ``xox?-...``), cloud keys (AWS ``AKIA``/``ASIA`` key ids and
``aws_secret_access_key=``, Azure ``AccountKey=``/``SharedAccessKey=`` and SAS ``sig=``, PEM private keys),
bearer tokens and ``password=`` / ``api_key:`` / ``token=``-style assignments. The trace sink's redactor uses the
same :data:`SECRET_PATTERNS` (plus configured secret values); the coordinator scrubs results and trace events
before publishing them, error replies scrub their message on construction, and ``run.py`` installs
:class:`ScrubLogFilter` on its log handlers (httpx's request lines included).

Example:
    >>> scrub_text("GET https://bob:hunter22@api.example.com/v1 failed; password=hunter22")
    'GET https://[REDACTED]@api.example.com/v1 failed; password=[REDACTED]'
    >>> scrub_text("key AKIAIOSFODNN7EXAMPLE ok")
    'key [REDACTED] ok'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeVar

import msgspec

MARKER = "[REDACTED]"

#: Built-in secret shapes. A named group ``secret`` redacts only that part of the match.
SECRET_PATTERNS: tuple[str, ...] = (
    r"sk-ant-[A-Za-z0-9_\-]{8,}",
    r"sk-[A-Za-z0-9_\-]{16,}",
    r"AIza[0-9A-Za-z_\-]{30,}",
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",
    r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]+=*",
    # URL userinfo: scheme://user[:password]@host
    r"(?i)\b[a-z][a-z0-9+.\-]*://(?P<secret>[^\s/?#@\"'<>]+)@",
    r"(?i)(?:api[_-]?key|x-api-key|x-goog-api-key|access[_-]?token|auth[_-]?token|secret|client[_-]?secret"
    r"|aws[_-]?secret[_-]?access[_-]?key|account[_-]?key|shared[_-]?access[_-]?key|private[_-]?key)"
    r"[\"']?\s*[:=]\s*[\"']?(?P<secret>[^\s\"',;}&]{6,})",
    r"(?i)\b(?:password|passwd|pwd)[\"']?\s*[:=]\s*[\"']?(?P<secret>[^\s\"',;}&]{1,})",
    r"(?i)[?&](?:key|sig|token|password)=(?P<secret>[^\s&\"'#]{6,})",
)

_COMPILED = tuple(re.compile(p) for p in SECRET_PATTERNS)
#: mapping keys whose values are identifiers or digests, never scrubbed (they are validated tokens or hex)
_KEEP_KEY = re.compile(r"(?:^|_)(?:id|ids|hash|sha256|kind|subject|code|status|role|profile)$")

S = TypeVar("S", bound=msgspec.Struct)


def _spans(text: str, patterns: Iterable[re.Pattern[str]], secrets: Iterable[str]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for s in secrets:
        i = text.find(s) if s else -1
        while i >= 0:
            spans.append((i, i + len(s)))
            i = text.find(s, i + 1)
    for pat in patterns:
        for m in pat.finditer(text):
            span = m.span("secret") if "secret" in pat.groupindex and m.group("secret") is not None else m.span()
            if span[1] > span[0] and text[span[0]:span[1]] != MARKER:
                spans.append(span)
    return spans


def scrub_text(text: str, secrets: Iterable[str] = (), marker: str = MARKER) -> str:
    """``text`` with every :data:`SECRET_PATTERNS` match and every value in ``secrets`` replaced by ``marker``."""
    secrets = tuple(s for s in secrets if s)
    return replace_spans(text, _spans(text, _COMPILED, secrets), marker)


def replace_spans(text: str, spans: list[tuple[int, int]], marker: str = MARKER) -> str:
    """``text`` with each ``(start, end)`` span (overlapping or touching ones merged) replaced by ``marker``."""
    if not spans:
        return text
    spans = sorted(spans)
    out: list[str] = []
    pos = 0
    cur_start, cur_end = spans[0]
    for start, end in spans[1:]:
        if start <= cur_end:
            cur_end = max(cur_end, end)
            continue
        out += [text[pos:cur_start], marker]
        pos = cur_end
        cur_start, cur_end = start, end
    out += [text[pos:cur_start], marker, text[cur_end:]]
    return "".join(out)


def scrub_value(value: Any, secrets: Iterable[str] = (), *, keep_length: bool = False) -> Any:
    """Builtins (``str``, ``dict``, ``list``) with every string scrubbed, except values under identifier keys
    (``request_id``, ``*_hash``, ``kind``...), which are validated tokens. ``keep_length`` cuts a scrubbed
    string that grew (a short secret, a longer marker) to its original length."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        out = scrub_text(value, secrets)
        return out[:len(value)] if keep_length else out
    if isinstance(value, dict):
        return {k: v if isinstance(k, str) and _KEEP_KEY.search(k) else scrub_value(v, secrets, keep_length=keep_length)
                for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_value(v, secrets, keep_length=keep_length) for v in value]
    return value


def scrub(obj: S, secrets: Iterable[str] = ()) -> S:
    """A copy of the msgspec Struct ``obj`` with every string field scrubbed (``obj`` itself when nothing
    changed). When the scrubbed copy breaks a length limit (the marker is longer than a short secret), each
    string is cut to its original length; ``msgspec.ValidationError`` if it still breaks an invariant."""
    data = msgspec.to_builtins(obj)
    clean = scrub_value(data, secrets)
    if clean == data:
        return obj
    try:
        return msgspec.convert(clean, type(obj))
    except msgspec.ValidationError:
        return msgspec.convert(scrub_value(data, secrets, keep_length=True), type(obj))
