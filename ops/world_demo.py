"""What ``make demo`` serves: the trained router bundle in the repository, over the offline world.

The bundle (``routers/offline-world-smollm2/``, written by ``run.py train`` and committed with the command that
reproduces it, see its ``README.md``) is a head trained over the real SmolLM2-135M-Instruct backbone, exported
in the Sakana layout (``vector.npy`` / ``vector.safetensors``: zero SVF offsets, then the head) with its
``manifest.json`` and ``artifact_pin.json``. :func:`load_bundle` checks every file against the pin;
:func:`bundle_settings` turns the manifest into the node's settings, so the node serves exactly what was trained:
the same backbone and dtype, routing profile and decision rule, role pack (the one the episodes injected with:
``trinity-default/2``, not the ``sakana`` profile's default ``sakana-fugu/1``), agents (the ``offline-world``
preset), agent mask, completion cap and turn budget. :func:`world_questions` draws the demo's questions from
the test split of the world's suite (never seen in training); :func:`grade_answer` grades a reply with the
suite's exact grader.

Pure apart from reading files (no torch here: the node's actors load the models).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from config.settings import Settings
from crucible.world.tasks import FAMILIES, Task, build_suite, grade

#: The committed bundle, relative to the repository root.
BUNDLE_DIR = Path("routers") / "offline-world-smollm2"


class BundleError(Exception):
    """The trained router bundle is missing, altered or does not fit this checkout (message says what to do)."""


@dataclass(frozen=True)
class Bundle:
    """A verified trained router bundle."""

    root: Path
    manifest: dict[str, Any]

    @property
    def vector(self) -> Path:
        """The Sakana-layout vector (``head_path`` takes its head)."""
        return self.root / str(self.manifest["files"]["vector_npy"])

    @property
    def max_turns(self) -> int:
        """The turn budget it was trained with."""
        return int(self.manifest["max_turns"])


def load_bundle(repo_root: Path, folder: Path | None = None) -> Bundle:
    """Read and verify the bundle (every file against ``artifact_pin.json``); :class:`BundleError` otherwise."""
    from crucible.registry.errors import RegistryError
    from crucible.registry.pins import load_pin
    from crucible.registry.verify import verify_directory

    root = folder if folder is not None else repo_root / BUNDLE_DIR
    if not (root / "manifest.json").is_file():
        raise BundleError(f"{root}: no trained router bundle (manifest.json); reproduce it with the command in "
                          f"{BUNDLE_DIR}/README.md")
    try:
        pin = load_pin(root / "artifact_pin.json")
    except RegistryError as e:
        raise BundleError(f"{root}: {e}") from None
    report = verify_directory(root, pin, ignore=("artifact_pin.json", "README.md"))
    if not report.ok:
        raise BundleError(f"{root}: the files differ from artifact_pin.json ({report.summary()}); restore them "
                          "with git checkout or retrain")
    manifest = json.loads((root / "manifest.json").read_text())
    if manifest.get("kind") != "trinity-trained-router" or "vector_npy" not in manifest.get("files", {}):
        raise BundleError(f"{root}/manifest.json: not a trained router exported in the Sakana layout")
    if build_suite(int(manifest["suite_seed"])).fingerprint != manifest["suite_fingerprint"]:
        raise BundleError(f"{root}: trained on another task suite than this checkout builds; retrain")
    return Bundle(root, manifest)


def bundle_settings(settings: Settings, bundle: Bundle, backbone_dir: Path) -> Settings:
    """``settings`` with the node serving ``bundle`` over the offline world (see the module docs)."""
    from config.provider_agents import ProviderAgentsSettings

    m = bundle.manifest
    rt = msgspec.structs.replace(settings.model_runtime, checkpoint_dir=str(backbone_dir), head_path=str(bundle.vector),
                                 routing_profile=m["routing_profile"], dtype=m.get("dtype", "float32"),
                                 tied_embedding=None)
    rt = type(rt)(**msgspec.structs.asdict(rt))  # re-validate (resolves the profile's tied-embedding default)
    co = msgspec.structs.replace(settings.coordinator, routing_profile=m["routing_profile"],
                                 route_rule=m["route_rule"], agent_mask=m["agent_mask"],
                                 agent_max_tokens=int(m["agent_max_tokens"]), agent_temperature=0.0,
                                 role_pack=m.get("role_pack"))
    return msgspec.structs.replace(settings, model_runtime=rt, coordinator=co,
                                   provider_agents=ProviderAgentsSettings.offline_world())


def world_questions(per_family: int = 2, seed: int = 0, suite_seed: int = 0) -> list[Task]:
    """``per_family`` tasks of each family from the suite's test split, drawn with ``seed`` (family order)."""
    rng = random.Random(seed)
    test = build_suite(suite_seed).split("test")
    out: list[Task] = []
    for f in FAMILIES:
        pool = [t for t in test if t.family == f]
        out += rng.sample(pool, min(per_family, len(pool)))
    return out


def grade_answer(task: Task, answer: str | None) -> bool:
    """The suite's exact grader (no answer is wrong)."""
    return answer is not None and grade(task, answer)
