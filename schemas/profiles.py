"""Routing profiles: the named conventions under which a router vector routes (a contract, no logic).

Two conventions exist for reading TRINITY's router (see the README's "Routing profiles"):

* ``elixir-port`` — what the known Elixir port does and the 37 anchor cases fix: the router reads
  ``"role: content"`` lines of every message, float32, argmax; ACCEPT/REVISE as a Verifier's first word; the
  *last* ``<suggested_role>`` tag with our role names; a Verifier chosen before any Worker reply runs as a
  Worker; tied embedding: the embedding's offsets (``embed-wins``).
* ``sakana`` — how ``model_iter_60.npy`` was trained (Sakana's ``fugu``: ``Task.step_trinity``,
  ``Task._get_obs``, ``_parse_thinker_response``, ``_parse_verification_response``,
  ``EvaluationManager.get_action``, ``SVDParameterManager.load_model_weights``): the Qwen3 chat template over a
  router system prompt and one user message (the query, then each Worker's thought as
  ``<reference_thought_N>``), bfloat16, a seeded sample from the softmax (or argmax); Sakana's ACCEPT/REJECT
  rule; the *first* ``<suggested_role>`` tag naming ``solver`` or ``verifier``, only together with a
  ``<suggestion>`` tag; a Verifier before any Worker reply ends the run with no call; tied embedding: the
  ``lm_head`` offsets win (``lm_head-wins``).

This module only names them and their defaults; the rules live with their owners
(``actors/coordinator/profiles.py``, ``actors/model_runtime/formatting.py``, ``crucible/registry/adapter.py``).

Example:
    >>> routing_profile("sakana").dtype
    'bfloat16'
    >>> routing_profile("elixir-port").tied_embedding
    'embed-wins'
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.errors import SchemaError

ELIXIR_PORT = "elixir-port"
SAKANA = "sakana"
#: Every routing profile name, the default first.
ROUTING_PROFILES: tuple[str, ...] = (ELIXIR_PORT, SAKANA)
DEFAULT_ROUTING_PROFILE = ELIXIR_PORT

TiedEmbedding = Literal["embed-wins", "lm_head-wins"]
#: The two tied-embedding conventions: which of a vector's two sets of offsets adapts the one tied matrix.
TIED_EMBEDDINGS: tuple[str, ...] = ("embed-wins", "lm_head-wins")
DecisionRule = Literal["argmax", "sample"]


class RoutingProfileSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a routing profile fixes (defaults a deployment may override where a setting exists).

    Attributes:
        name: the profile name.
        observation: how the router's input text is built (``role-lines`` or ``sakana-chat``).
        dtype: the backbone dtype the vector was trained/checked under.
        decision: ``argmax`` or ``sample`` (softmax, seeded) per logit group.
        verdict: how a Verifier reply is read (``first-word`` or ``sakana``).
        suggestion: how a Thinker's suggested role is read (``last-tag`` or ``sakana``).
        verifier_before_worker: ``worker`` (run it as a Worker) or ``end`` (end the run, no call).
        tied_embedding: ``embed-wins`` or ``lm_head-wins``.
    """

    name: str
    observation: str
    dtype: str
    decision: str
    verdict: str
    suggestion: str
    verifier_before_worker: str
    tied_embedding: str


_SPECS: dict[str, RoutingProfileSpec] = {
    ELIXIR_PORT: RoutingProfileSpec(name=ELIXIR_PORT, observation="role-lines", dtype="float32", decision="argmax",
                                    verdict="first-word", suggestion="last-tag", verifier_before_worker="worker",
                                    tied_embedding="embed-wins"),
    SAKANA: RoutingProfileSpec(name=SAKANA, observation="sakana-chat", dtype="bfloat16", decision="sample",
                               verdict="sakana", suggestion="sakana", verifier_before_worker="end",
                               tied_embedding="lm_head-wins"),
}


def check_routing_profile(name: str, field: str = "routing_profile") -> str:
    """``name`` if it is a routing profile, else :class:`SchemaError` naming the choices."""
    if name not in _SPECS:
        raise SchemaError(field, f"must be one of {', '.join(ROUTING_PROFILES)}, got {name!r}")
    return name


def routing_profile(name: str) -> RoutingProfileSpec:
    """The spec of a routing profile (raises :class:`SchemaError` for an unknown name)."""
    return _SPECS[check_routing_profile(name)]


#: Released vectors by file name, and the routing profile each was trained under: a runtime given one as its head
#: routes under that profile unless a profile is set (Sakana's ``sakana_model_iter_60.npy``: fugu's trainer).
TRAINED_UNDER: dict[str, str] = {"sakana_model_iter_60.npy": SAKANA}


def trained_profile(vector_path: str | None) -> str | None:
    """The profile a released vector (by file name) was trained under, else ``None`` (no opinion)."""
    if not vector_path:
        return None
    return TRAINED_UNDER.get(vector_path.replace("\\", "/").rsplit("/", 1)[-1])


__all__ = [
    "DEFAULT_ROUTING_PROFILE",
    "ELIXIR_PORT",
    "ROUTING_PROFILES",
    "SAKANA",
    "TIED_EMBEDDINGS",
    "TRAINED_UNDER",
    "RoutingProfileSpec",
    "check_routing_profile",
    "routing_profile",
    "trained_profile",
]
