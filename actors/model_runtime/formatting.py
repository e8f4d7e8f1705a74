"""Transcript formatting and fingerprint, as TRINITY's router reads them, per routing profile.

``elixir-port`` (:func:`format_transcript`): the router reads ``"\\n".join(f"{role}: {content}")`` over the
messages: no chat template, no BOS/EOS, no special tokens.

``sakana`` (:func:`sakana_router_text`, after ``fugu``'s ``Task._get_obs`` / ``_format_router_messages`` and
``EvaluationManager.get_action``): the Qwen3 chat template (``add_generation_prompt=True``,
``enable_thinking=False``) over the router system prompt (:data:`SAKANA_ROUTER_SYSTEM_PROMPT` with the number
of agents) and one user message, ``fugu``'s shared context (:func:`schemas.fugu.context`): the query,
``"\\n"`` and the collaboration sentence, then for each Worker reply (the coordinator sends only those)
``"\\n<reference_thought_N>thought</reference_thought_N>"``, N counting from 0 over the thoughts appended.
The thought is the stripped text inside the first ``<idea>...</idea>`` when the reply has one, else the
reply with ``<idea>``/``</idea>`` removed (not stripped); an empty thought is not appended. The agents see
the same context (the role injector's ``fugu`` pack).

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

from schemas import fugu
from schemas.common import Message
from schemas.fingerprint import sha256_text, transcript_hash, transcript_term_bytes
from schemas.profiles import ELIXIR_PORT, check_routing_profile

__all__ = [
    "SAKANA_ROUTER_SYSTEM_PROMPT",
    "format_transcript",
    "router_text",
    "sakana_router_text",
    "sakana_thought",
    "text_sha256",
    "transcript_hash",
    "transcript_term_bytes",
]

#: Sakana's router system prompt (``fugu`` ``Task.DEFAULT_ROUTER_SYSTEM_PROMPT``, trinity mode); ``{num_agents}``
#: is the number of agents the head routes over.
SAKANA_ROUTER_SYSTEM_PROMPT = (
    "You are a message dispatcher whose job is to coordinate {num_agents} agents to solve a problem. "
    "You check the problem and the discussion history and then decide which agent should respond next. "
    "Your first generated token's hidden state will be used as signal for decision making."
)
#: Sakana's thinking tag (``Task.thinking_tag``).
SAKANA_THINKING_TAG = fugu.THINKING_TAG


def format_transcript(messages: Sequence[Message]) -> str:
    """The router's input text: ``"role: content"`` lines joined by ``"\\n"``."""
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


def text_sha256(text: str) -> str:
    """Plain sha256 of the formatted text's UTF-8 bytes (a local, non-port fingerprint)."""
    return sha256_text(text)


def sakana_thought(reply: str) -> str:
    """The thought a Worker reply contributes to Sakana's router input (:func:`schemas.fugu.thought`)."""
    return fugu.thought(reply)


def qwen3_chat_text(system: str, user: str) -> str:
    """Qwen3's chat template over one system and one user message, generation prompt added, thinking off.

    Equal to ``tokenizer.apply_chat_template([...], tokenize=False, add_generation_prompt=True,
    enable_thinking=False)`` with Qwen3's template (a test checks it against the real template).
    """
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def sakana_router_text(messages: Sequence[Message], num_agents: int) -> str:
    """Sakana's router input: ``messages`` are the query (first, ``user``) and the Worker replies, in order."""
    user = fugu.context(messages[0].content, (m.content for m in messages[1:]))
    return qwen3_chat_text(SAKANA_ROUTER_SYSTEM_PROMPT.format(num_agents=num_agents), user)


def router_text(messages: Sequence[Message], profile: str = ELIXIR_PORT, num_agents: int = 7) -> str:
    """The router's input text under ``profile`` (``elixir-port`` or ``sakana``)."""
    if check_routing_profile(profile) == ELIXIR_PORT:
        return format_transcript(messages)
    return sakana_router_text(messages, num_agents)
