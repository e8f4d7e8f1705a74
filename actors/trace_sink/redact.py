"""Redaction: nothing reaches a file or a span before secrets are removed and content is hashed.

Two steps on every :data:`~schemas.trace.TraceEvent`:

1. Content fields (the query, prompts, agent replies, verifier excerpts, the answer) are replaced by their
   sha256 (``sha256:<hex>``, or dropped where the event already has a ``*_sha256`` field) unless
   ``store_full_text`` is set. The hash is taken over the *redacted* text, so a hash never confirms a
   guessed secret.
2. Every remaining string (values and mapping keys, at any depth) has configured secret values, built-in
   key patterns (:data:`schemas.redaction.SECRET_PATTERNS`: URL userinfo, ``sk-...``, ``AIza...``, AWS/Azure keys,
   bearer tokens, ``api_key=...``, ``password=...``) and configured
   patterns replaced by the marker. If a secret could still be found after that (a secret crafted to
   re-form across the marker), the whole string is replaced by the marker.

Example:
    >>> from config.trace_sink import RedactionSettings
    >>> r = Redactor(RedactionSettings())
    >>> r.redact_text("key sk-proj-abcdefghijklmnopqrstuvwx and Bearer eyJhbGciOi.x.y done")
    'key [REDACTED] and [REDACTED] done'
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from config.trace_sink import RedactionSettings
from schemas.fingerprint import sha256_text
from schemas.redaction import SECRET_PATTERNS, replace_spans
from schemas.trace import TraceEvent

#: Built-in secret shapes, shared with every other process (:mod:`schemas.redaction`): URL userinfo, API and
#: cloud keys, bearer tokens, ``password=``-style assignments. A named group ``secret`` redacts only that part.
BUILTIN_PATTERNS: tuple[str, ...] = SECRET_PATTERNS

_CONTENT_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "run_started": (("query_text",),),
    "agent_call_started": (("prompt_text",),),
    "agent_call_finished": (("receipt", "content"),),
    "verdict_recorded": (("verdict", "excerpt"),),
    "run_finished": (("answer_text",),),
}



class UnsafeEvent(ValueError):
    """An event cannot be stored safely: redaction broke one of its invariants (e.g. a secret in an id)."""


class Redactor:
    """Applies :class:`~config.trace_sink.RedactionSettings` to text and trace events."""

    def __init__(self, settings: RedactionSettings) -> None:
        self.settings = settings
        self.marker = settings.marker
        self._secrets = sorted({s.reveal() for s in settings.secrets if s}, key=len, reverse=True)
        sources = list(BUILTIN_PATTERNS if settings.builtin_patterns else ()) + list(settings.patterns)
        try:
            self._patterns = [re.compile(p) for p in sources]
        except re.error as exc:
            raise ValueError(f"redaction.patterns: invalid regular expression ({exc})") from exc

    def _spans(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for s in self._secrets:
            i = text.find(s)
            while i >= 0:
                spans.append((i, i + len(s)))
                i = text.find(s, i + 1)
        markers: list[tuple[int, int]] = []
        i = text.find(self.marker)
        while i >= 0:
            markers.append((i, i + len(self.marker)))
            i = text.find(self.marker, i + 1)
        for pat in self._patterns:
            for m in pat.finditer(text):
                span = m.span("secret") if "secret" in pat.groupindex and m.group("secret") is not None else m.span()
                # a match lying inside an earlier redaction (``api_key: "[REDACTED]"``) is already done
                if span[1] > span[0] and not any(a <= span[0] and span[1] <= b for a, b in markers):
                    spans.append(span)
        return spans

    def _leaks(self, text: str) -> bool:
        return any(s in text for s in self._secrets)

    def redact_text(self, text: str) -> str:
        """``text`` with every secret and pattern match replaced by the marker."""
        for _ in range(3):
            spans = self._spans(text)
            if not spans:
                return text
            text = replace_spans(text, spans, self.marker)
        return self.marker if self._leaks(text) or self._spans(text) else text

    def content(self, text: str) -> str:
        """A content field as stored: redacted full text if configured, else ``sha256:<hex>`` of it."""
        clean = self.redact_text(text)
        return clean if self.settings.store_full_text else f"sha256:{sha256_text(clean)}"

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {self._walk(k): self._walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        return value

    def redact_event(self, event: TraceEvent) -> TraceEvent:
        """The event as it may be stored: content hashed (unless configured), secrets removed.

        Raises :class:`UnsafeEvent` when the redacted event no longer satisfies its contract (a secret
        inside an identifier): such an event must be dropped, not stored.
        """
        data: dict[str, Any] = msgspec.to_builtins(event)
        kind = str(data.get("kind", ""))
        for path in _CONTENT_PATHS.get(kind, ()):
            parent: Any = data
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if not isinstance(parent, dict):
                continue
            leaf = path[-1]
            value = parent.get(leaf)
            if not isinstance(value, str):
                continue
            if kind == "run_finished" and not self.settings.store_full_text:
                if not data.get("answer_sha256"):
                    data["answer_sha256"] = sha256_text(self.redact_text(value))
                parent[leaf] = None
            elif leaf.endswith("_text") and not self.settings.store_full_text:
                parent[leaf] = None  # the event already carries the *_sha256 of this text
            else:
                parent[leaf] = self.content(value)
        data = self._walk(data)
        try:
            clean: TraceEvent = msgspec.convert(data, TraceEvent)
        except msgspec.ValidationError as exc:
            rid = self.redact_text(event.request_id)
            raise UnsafeEvent(f"redacted {kind} event for request {rid!r} breaks its contract ({exc}); dropped "
                              f"rather than stored") from exc
        return clean
