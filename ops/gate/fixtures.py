"""Gate fixtures in the anchors' own formats.

Cases (``qwen_router_prompt_eval_cases.json``)::

    {"schema_version": 1, "cases": [{"id", "messages": [{"role", "content"}], "expected": {"agent_id", "role_id"},
      "tags", "notes"}], "coverage": {...}}

Snapshot (``qwen_router_prompt_eval_logits.json``)::

    {"schema_version": 1, "generated_at": "...", "cases": [{"id", "agent_id", "role_id", "agent_logits_rounded",
      "role_logits_rounded", "agent_margin", "role_margin", "route_hash", "token_count", "transcript_hash"}]}

A snapshot recorded by ``run.py gate --record`` adds two optional keys the anchor lacks: ``profile`` (a
``RuntimeProfile``: name, backend, device, dtype and the margin floors of that lane) and ``source`` (what
produced it), and ``routing_profile`` (``elixir-port`` or ``sakana``: the convention the router ran under).
Readers of the anchor format ignore them; the anchor itself has no profile (so it is an ``elixir-port``
fixture), and the gate then uses the CUDA reference floors (agent 0.24, role 1.06). Each routing profile has
its own fixtures (``tests/fixtures/gate/`` for ``elixir-port``, ``tests/fixtures/gate/sakana/``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec

from ops.gate.errors import FixtureError
from schemas.common import Message
from schemas.sakana import RuntimeProfile


class Expected(msgspec.Struct, frozen=True):
    """The decision a case expects."""

    agent_id: int
    role_id: int


class EvalCase(msgspec.Struct, frozen=True):
    """One routing case: a transcript and its expected decision."""

    id: str
    messages: list[Message]
    expected: Expected
    tags: list[str] = msgspec.field(default_factory=list)
    notes: str = ""


class EvalCases(msgspec.Struct, frozen=True):
    """The cases file."""

    cases: list[EvalCase]
    schema_version: int = 1
    coverage: dict[str, Any] | None = None


class SnapshotCase(msgspec.Struct, frozen=True):
    """One recorded routing result (logits rounded to 6 decimals, as the route hash rounds them)."""

    id: str
    agent_id: int
    role_id: int
    agent_logits_rounded: list[float]
    role_logits_rounded: list[float]
    agent_margin: float
    role_margin: float
    route_hash: str
    token_count: int
    transcript_hash: str


class Snapshot(msgspec.Struct, frozen=True):
    """The logits snapshot (see module docs)."""

    cases: list[SnapshotCase]
    generated_at: str = ""
    schema_version: int = 1
    profile: RuntimeProfile | None = None
    source: dict[str, str] | None = None
    routing_profile: str | None = None

    def by_id(self) -> dict[str, SnapshotCase]:
        """Cases keyed by id."""
        return {c.id: c for c in self.cases}


def _load(path: str | os.PathLike[str], type_: type[Any], what: str) -> Any:
    p = Path(path)
    try:
        return msgspec.json.decode(p.read_bytes(), type=type_)
    except FileNotFoundError:
        raise FixtureError(f"{p}: {what} file does not exist") from None
    except msgspec.DecodeError as e:
        raise FixtureError(f"{p}: not a valid {what} file: {e}") from None


def load_cases(path: str | os.PathLike[str]) -> EvalCases:
    """Read a cases file; ids must be unique and every case must have messages."""
    cases: EvalCases = _load(path, EvalCases, "eval cases")
    ids = [c.id for c in cases.cases]
    if not ids:
        raise FixtureError(f"{path}: no cases")
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise FixtureError(f"{path}: duplicate case ids {dupes}")
    empty = [c.id for c in cases.cases if not c.messages]
    if empty:
        raise FixtureError(f"{path}: cases without messages: {empty}")
    return cases


def load_snapshot(path: str | os.PathLike[str]) -> Snapshot:
    """Read a logits snapshot (anchor format, optional ``profile``/``source``)."""
    snap: Snapshot = _load(path, Snapshot, "logits snapshot")
    return snap


def _dump(obj: msgspec.Struct, path: str | os.PathLike[str]) -> Path:
    data = msgspec.to_builtins(obj)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if v is not None}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, p)
    return p


def write_snapshot(snapshot: Snapshot, path: str | os.PathLike[str]) -> Path:
    """Write a snapshot in the anchor's layout (sorted keys, 2-space indent)."""
    return _dump(snapshot, path)


def write_cases(cases: EvalCases, path: str | os.PathLike[str]) -> Path:
    """Write a cases file."""
    return _dump(cases, path)
