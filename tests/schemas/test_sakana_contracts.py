"""The anchor manifest and pin decode unchanged; each kind of broken variant is rejected naming its field."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas import TRINITY_SVF_TENSORS, AdapterRef, ArtifactPin, HeadSpec, RuntimeProfile, SakanaManifest

ANCHORS = Path(__file__).resolve().parents[3] / "shared" / "anchors"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ANCHORS / name).read_text())
    return data


def test_anchor_manifest_decodes_unchanged() -> None:
    raw = (ANCHORS / "sakana_python_reference_manifest.json").read_bytes()
    m = msgspec.json.decode(raw, type=SakanaManifest)
    assert m.is_trinity_layout()
    assert [t.source_name for t in m.selected_tensors] == list(TRINITY_SVF_TENSORS)
    assert m.selected_tensors[0].shape == [151936, 1024] and m.selected_tensors[4].shape == [1024, 2048]
    ranges = [(t.offset_start, t.offset_end) for t in m.selected_tensors]
    assert ranges == [(i * 1024, (i + 1) * 1024) for i in range(9)]
    assert m.offsets_length == 9216
    # re-encoding gives back the same JSON document
    assert json.loads(msgspec.json.encode(m)) == json.loads(raw)


def test_anchor_pin_decodes_unchanged() -> None:
    raw = (ANCHORS / "artifact_pin.json").read_bytes()
    p = msgspec.json.decode(raw, type=ArtifactPin)
    assert p.repo_id == "nshkrdotcom/trinity-coordinator-adapted-qwen3-0.6b" and p.revision == "v1.0.0"
    assert len(p.files) == 11 and p.file("manifest.json").sha256 == p.manifest_sha256
    assert json.loads(msgspec.json.encode(p)) == json.loads(raw)


Mutation = Callable[[dict[str, Any]], None]

MANIFEST_BREAKS: list[tuple[str, Mutation, str]] = [
    ("bad sha", lambda d: d.update(source_vector_sha256="XYZ"), "source_vector_sha256"),
    ("count mismatch", lambda d: d.update(selected_tensor_count=8), "selected_tensor_count"),
    ("total mismatch", lambda d: d.update(selected_singular_value_count=9215), "selected_singular_value_count"),
    ("gap in offsets", lambda d: d["selected_tensors"][3].update(offset_start=3073, offset_end=4097), "offset_start"),
    ("range != singular values", lambda d: d["selected_tensors"][2].update(offset_end=3000), "offset_end"),
    ("too many singular values", lambda d: d["selected_tensors"][1].update(singular_values=4096), "singular_values"),
    ("bad shape", lambda d: d["selected_tensors"][0].update(shape=[151936]), "shape"),
    ("negative dim", lambda d: d["selected_tensors"][0].update(shape=[-1, 1024]), "shape"),
    ("duplicate name", lambda d: d["selected_tensors"][1].update(source_name="model.embed_tokens.weight"),
     "source_name"),
    ("wrong type", lambda d: d.update(selected_tensor_count="9"), "selected_tensor_count"),
    ("missing field", lambda d: d.pop("selected_tensors"), "selected_tensors"),
    ("unknown field", lambda d: d.update(surprise=1), "surprise"),
]


@pytest.mark.parametrize(("label", "mutate", "field"), MANIFEST_BREAKS, ids=[b[0] for b in MANIFEST_BREAKS])
def test_broken_manifest_is_rejected_naming_the_field(label: str, mutate: Mutation, field: str) -> None:
    d = copy.deepcopy(_load("sakana_python_reference_manifest.json"))
    mutate(d)
    with pytest.raises(msgspec.ValidationError) as ei:
        msgspec.json.decode(json.dumps(d).encode(), type=SakanaManifest)
    assert field in str(ei.value), str(ei.value)


PIN_BREAKS: list[tuple[str, Mutation, str]] = [
    ("version", lambda d: d.update(version=2), "version"),
    ("repo id", lambda d: d.update(repo_id="no-slash"), "repo_id"),
    ("empty revision", lambda d: d.update(revision=" "), "revision"),
    ("manifest sha", lambda d: d.update(manifest_sha256="0" * 63), "manifest_sha256"),
    ("no files", lambda d: d.update(files=[]), "files"),
    ("dotdot path", lambda d: d["files"][1].update(path="../etc/passwd"), "path"),
    ("absolute path", lambda d: d["files"][1].update(path="/etc/passwd"), "path"),
    ("unnormalised path", lambda d: d["files"][1].update(path="a//b"), "path"),
    ("file sha", lambda d: d["files"][2].update(sha256="G" * 64), "sha256"),
    ("duplicate path", lambda d: d["files"][2].update(path=d["files"][1]["path"]), "files[2].path"),
    ("manifest sha disagrees", lambda d: d["files"][0].update(sha256="f" * 64), "files[0].sha256"),
]


@pytest.mark.parametrize(("label", "mutate", "field"), PIN_BREAKS, ids=[b[0] for b in PIN_BREAKS])
def test_broken_pin_is_rejected_naming_the_field(label: str, mutate: Mutation, field: str) -> None:
    d = copy.deepcopy(_load("artifact_pin.json"))
    mutate(d)
    with pytest.raises(msgspec.ValidationError) as ei:
        msgspec.json.decode(json.dumps(d).encode(), type=ArtifactPin)
    assert field in str(ei.value), str(ei.value)


def test_head_spec_invariants() -> None:
    h = HeadSpec()
    assert (h.rows, h.cols, h.num_agents, h.num_roles, h.size) == (10, 1024, 7, 3, 10240)
    for kwargs, field in [({"rows": 11}, "rows"), ({"num_roles": 4, "rows": 11}, "num_roles"),
                          ({"role_order": ("thinker", "worker", "verifier")}, "role_order"), ({"bias": True}, "bias")]:
        with pytest.raises(ValueError, match=field):
            HeadSpec(**kwargs)  # type: ignore[arg-type]


def test_runtime_profile_and_adapter_ref() -> None:
    p = RuntimeProfile()
    assert (p.agent_margin_floor, p.role_margin_floor) == (0.24, 1.06)
    with pytest.raises(ValueError, match="role_margin_floor"):
        RuntimeProfile(role_margin_floor=-0.1)
    with pytest.raises(ValueError, match="name"):
        RuntimeProfile(name="has.dot")
    ref = AdapterRef.build("a" * 64, "b" * 64, "c" * 64)
    assert ref == msgspec.json.decode(msgspec.json.encode(ref), type=AdapterRef)
    assert AdapterRef.build("a" * 64, "b" * 64, "d" * 64).digest != ref.digest
    forged = msgspec.structs.asdict(ref) | {"head_sha256": "d" * 64}
    with pytest.raises(msgspec.ValidationError, match="digest"):
        msgspec.json.decode(msgspec.json.encode(forged), type=AdapterRef)
