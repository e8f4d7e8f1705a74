"""Seeded random transcripts for parity tests (mixed scripts, digits, punctuation, several messages)."""

from __future__ import annotations

import random

from schemas.common import Message

_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    "éèàüößçñ",
    "日本語中文字",
    "αβγδεζ",
    ".,;:!?-()[]{}'\"",
]


def random_word(rng: random.Random) -> str:
    """A short word mixing one or two alphabets."""
    alpha = "".join(rng.sample(_ALPHABETS, rng.choice([1, 1, 1, 2])))
    return "".join(rng.choice(alpha) for _ in range(rng.randint(1, 8)))


def random_text(rng: random.Random, words: tuple[int, int]) -> str:
    """Words joined by spaces and the odd newline."""
    n = rng.randint(*words)
    return "".join(random_word(rng) + rng.choice([" ", " ", " ", "\n", ""]) for _ in range(n)).strip()


def random_transcript(rng: random.Random, words: tuple[int, int] = (1, 8), max_replies: int = 2) -> list[Message]:
    """A user query, then 0..max_replies assistant replies (sometimes a system line first)."""
    msgs = [Message("system", random_text(rng, (1, 4)))] if rng.random() < 0.15 else []
    msgs.append(Message("user", random_text(rng, words)))
    msgs.extend(Message("assistant", random_text(rng, words)) for _ in range(rng.randint(0, max_replies)))
    return msgs


def truncated(rng: random.Random, messages: list[Message]) -> list[Message]:
    """An earlier state of a transcript: the last message cut mid-text (often mid-token)."""
    last = messages[-1]
    cut = rng.randint(1, max(1, len(last.content)))
    return [*messages[:-1], Message(last.role, last.content[:cut])]
