"""Transcript formatting and fingerprint, as TRINITY's router reads them.

The router reads ``"\\n".join(f"{role}: {content}")`` over the messages: no chat template, no BOS/EOS, no
special tokens.

``transcript_hash`` matches the known Elixir port (checked on all 37 anchor cases): the lowercase hex
sha256 of Erlang's ``term_to_binary(messages, [:compressed])`` where ``messages`` is the list of maps
``%{role: role, content: content}`` — atom keys, encoded ``role`` first, then ``content``, values as
binaries. ``:compressed`` wraps the term in zlib (level 6) when that is smaller by more than the 4-byte
size field, which is the case for most transcripts.

Example:
    >>> from schemas.common import Message
    >>> format_transcript([Message("user", "What is 17 + 25? Answer briefly.")])
    'user: What is 17 + 25? Answer briefly.'
    >>> transcript_hash([Message("user", "What is 17 + 25? Answer briefly.")])[:8]
    '05485d3e'
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence

from schemas.common import Message

_VERSION = 131
_COMPRESSED = 80
_LIST_EXT = 108
_NIL_EXT = 106
_MAP_EXT = 116
_BINARY_EXT = 109
_SMALL_ATOM_UTF8_EXT = 119
_ZLIB_LEVEL = 6


def format_transcript(messages: Sequence[Message]) -> str:
    """The router's input text: ``"role: content"`` lines joined by ``"\\n"``."""
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


def _atom(name: str) -> bytes:
    raw = name.encode()
    return bytes((_SMALL_ATOM_UTF8_EXT, len(raw))) + raw


def _binary(text: str) -> bytes:
    raw = text.encode()
    return bytes((_BINARY_EXT,)) + struct.pack(">I", len(raw)) + raw


def transcript_term_bytes(messages: Sequence[Message]) -> bytes:
    """Erlang ``term_to_binary(messages, [:compressed])`` bytes of the transcript (see module doc)."""
    items = b"".join(
        bytes((_MAP_EXT,)) + struct.pack(">I", 2) + _atom("role") + _binary(m.role) + _atom("content")
        + _binary(m.content)
        for m in messages
    )
    term = (bytes((_LIST_EXT,)) + struct.pack(">I", len(messages)) + items + bytes((_NIL_EXT,))
            if messages else bytes((_NIL_EXT,)))
    packed = zlib.compress(term, _ZLIB_LEVEL)
    # erts: the compressed form is kept only when 5 + len(zlib) < 1 + len(term) (version byte counted).
    if len(packed) + 4 < len(term):
        return bytes((_VERSION, _COMPRESSED)) + struct.pack(">I", len(term)) + packed
    return bytes((_VERSION,)) + term


def transcript_hash(messages: Sequence[Message]) -> str:
    """Cross-port transcript fingerprint (lowercase hex sha256; see module doc)."""
    return hashlib.sha256(transcript_term_bytes(messages)).hexdigest()


def text_sha256(text: str) -> str:
    """Plain sha256 of the formatted text's UTF-8 bytes (a local, non-port fingerprint)."""
    return hashlib.sha256(text.encode()).hexdigest()
