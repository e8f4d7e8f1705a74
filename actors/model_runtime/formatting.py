"""Transcript formatting and fingerprint, as TRINITY's router reads them.

The router reads ``"\\n".join(f"{role}: {content}")`` over the messages: no chat template, no BOS/EOS, no
special tokens.

``transcript_hash`` (defined with the other cross-port fingerprints in :mod:`schemas.fingerprint`) matches
the known Elixir port on all 37 anchor cases: the sha256 of Erlang's ``term_to_binary(messages,
[:compressed])``.

Example:
    >>> from schemas.common import Message
    >>> format_transcript([Message("user", "What is 17 + 25? Answer briefly.")])
    'user: What is 17 + 25? Answer briefly.'
    >>> transcript_hash([Message("user", "What is 17 + 25? Answer briefly.")])[:8]
    '05485d3e'
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.common import Message
from schemas.fingerprint import sha256_text, transcript_hash, transcript_term_bytes

__all__ = ["format_transcript", "text_sha256", "transcript_hash", "transcript_term_bytes"]


def format_transcript(messages: Sequence[Message]) -> str:
    """The router's input text: ``"role: content"`` lines joined by ``"\\n"``."""
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


def text_sha256(text: str) -> str:
    """Plain sha256 of the formatted text's UTF-8 bytes (a local, non-port fingerprint)."""
    return sha256_text(text)
