"""Export the adapted bundle: SVF-adapted matrices, the routing head, a manifest and a pin.

Bundle layout (the one ``artifact_pin.json`` of the anchors pins)::

    manifest.json                                    SakanaManifest of the layout (decodes unchanged)
    router_head.safetensors                          tensor "head", float32 {10, hidden}
    checkpoints/0001_embedder.token_embedding.kernel.safetensors
    ...                                              one adapted matrix per file, HF orientation, tensor named
    checkpoints/0009_language_modeling_head.output.kernel.safetensors       by its HF name
    artifact_pin.json                                the pin of the 11 files above (not pinned itself)

Every matrix of an untied checkpoint gets its own offsets (``svf-energy-v1``). When the checkpoint ties
``lm_head`` to the embedding, ``tied_embedding`` says what the two files hold: ``per-matrix`` (default, the
Sakana/Elixir bundle layout: each file its own offsets; a loader that copies the files in order into the tied
parameter ends with lm_head-wins), or one convention written into both files: ``embed-wins`` (``d[0:1024]``)
or ``lm_head-wins`` (``d[8192:9216]``, Sakana's trainer). The choice is written in every file's metadata
(``tied_embedding``), in :attr:`ExportResult.tied_embedding`, and in the adapter ref's formula (see
:func:`crucible.registry.adapter.tied_formula`). Factors come from :class:`crucible.factor_cache.FactorCache`, so a
second export of the same base costs only the reconstruction. A lineage record goes to the registry cache.

Example::

    result = export_bundle("ckpt/", "model_iter_60.npy", "bundle/", repo_id="me/trinity-adapted",
                           revision="v1", factor_cache_dir="~/.cache/trinity-nats/svf-factors")
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from crucible.factor_cache import FactorCache
from crucible.factorization import svf_reconstruct
from crucible.hashing import file_sha256
from crucible.registry.adapter import split_for, tied_formula
from crucible.registry.errors import ExportError
from crucible.registry.layout import elixir_name, trinity_slots
from crucible.registry.lineage import BaseModel, LineageRecord, PinRef, VectorSource, write_lineage
from crucible.registry.pins import MANIFEST_FILE, build_pin, encode_manifest, write_pin
from crucible.router_vector import load_router_vector
from crucible.safetensors_io import SafetensorsReader
from schemas.sakana import SVF_FORMULA, AdapterRef, ArtifactPin, SakanaManifest, SelectedTensor

Progress = Callable[[str], None]
HEAD_FILE = "router_head.safetensors"
PIN_FILE = "artifact_pin.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class ExportResult:
    """The written bundle."""

    out_dir: Path
    manifest: SakanaManifest
    pin: ArtifactPin
    adapter_ref: AdapterRef
    lineage_path: Path | None
    factors_from_cache: bool
    tied_embedding: str | None = None


def _weight_map(ckpt: Path) -> dict[str, Path]:
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        return {name: ckpt / file for name, file in data["weight_map"].items()}
    single = ckpt / "model.safetensors"
    if not single.is_file():
        raise ExportError(f"{ckpt}: no model.safetensors or model.safetensors.index.json")
    with SafetensorsReader(single) as r:
        return dict.fromkeys(r.names, single)


def _read(weight_map: dict[str, Path], name: str) -> torch.Tensor:
    with SafetensorsReader(weight_map[name]) as r:
        return r.read_tensor(name)


def export_bundle(checkpoint_dir: str | os.PathLike[str], vector_path: str | os.PathLike[str],
                  out_dir: str | os.PathLike[str], *, repo_id: str, revision: str,
                  factor_cache_dir: str | os.PathLike[str], dtype: str = "float32",
                  lineage_cache_dir: str | os.PathLike[str] | None = None, overwrite: bool = False,
                  progress: Progress | None = None, tied_embedding: str = "per-matrix") -> ExportResult:
    """Write the adapted bundle of ``checkpoint_dir`` + ``vector_path`` into ``out_dir`` (see module docs).

    Raises:
        ExportError: bad checkpoint, vector that does not fit, existing ``out_dir`` without ``overwrite``.
        crucible errors from reading, factoring or reconstructing.
    """
    say = progress or (lambda _msg: None)
    if tied_embedding != "per-matrix":
        tied_formula(tied_embedding)  # rejects an unknown convention before any work
    if dtype not in _DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    ckpt, out = Path(checkpoint_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass overwrite to replace it")
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except FileNotFoundError:
        raise ExportError(f"{ckpt}: no config.json; point at a Qwen3 checkpoint folder") from None
    num_layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
    weight_map = _weight_map(ckpt)
    tied = "lm_head.weight" not in weight_map
    if tied and not config.get("tie_word_embeddings", False):
        raise ExportError(f"{ckpt}: no lm_head.weight and tie_word_embeddings is false")
    shapes: dict[str, tuple[int, int]] = {}
    for name in weight_map:
        with SafetensorsReader(weight_map[name]) as r:
            shape = r.info(name).shape
        if len(shape) == 2:
            shapes[name] = (shape[0], shape[1])
    if tied:
        shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]
    vector = load_router_vector(vector_path)
    parts = split_for(vector, shapes, num_layers, hidden)
    slots = trinity_slots(shapes, num_layers)

    say(f"reading {len(slots)} base matrices from {ckpt}")
    base: dict[str, torch.Tensor] = {}
    for name, _, _, _ in slots:
        source = "model.embed_tokens.weight" if tied and name == "lm_head.weight" else name
        if source not in base:
            base[source] = _read(weight_map, source)
    distinct = list(base.items())
    cache = FactorCache(Path(factor_cache_dir).expanduser())
    say("SVF factors (cached per base weights; the 151936 x 1024 embedding takes minutes on a CPU)")
    factor_set = cache.get_or_compute(distinct)
    ref = AdapterRef.build(factor_set.key, parts.offsets_sha256, parts.head_sha256,
                           tied_formula(tied_embedding) if tied and tied_embedding != "per-matrix" else SVF_FORMULA)
    winner = "lm_head.weight" if tied_embedding == "lm_head-wins" else "model.embed_tokens.weight"

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoints").mkdir(parents=True)
    files: list[str] = [MANIFEST_FILE, HEAD_FILE]
    selected: list[SelectedTensor] = []
    meta = {"format": "pt", "formula": ref.formula, "adapter_ref": ref.digest,
            "tied_embedding": tied_embedding if tied else "untied"}
    for i, (name, shape, start, end) in enumerate(slots):
        source = "model.embed_tokens.weight" if tied and name == "lm_head.weight" else name
        say(f"[{i + 1}/{len(slots)}] adapting {name} {shape[0]}x{shape[1]}")
        shared = tied and tied_embedding != "per-matrix" and name in ("model.embed_tokens.weight", "lm_head.weight")
        adapted = svf_reconstruct(base[source], factor_set.factors[source],
                                  parts.offsets[winner if shared else name], out_dtype=_DTYPES[dtype])
        rel = f"checkpoints/{i + 1:04d}_{elixir_name(name)}.safetensors"
        save_file({name: adapted.contiguous()}, str(tmp / rel), metadata={**meta, "source_name": name})
        files.append(rel)
        selected.append(SelectedTensor(source_name=name, shape=[shape[0], shape[1]], singular_values=end - start,
                                       offset_start=start, offset_end=end, elixir_name=elixir_name(name)))
        del adapted
    head = torch.from_numpy(parts.head).to(torch.float32).contiguous()
    save_file({"head": head}, str(tmp / HEAD_FILE), metadata={**meta, "rows": "agents then roles (worker, "
                                                                             "thinker, verifier)"})
    vector_sha = file_sha256(vector_path)
    manifest = SakanaManifest(source_vector_sha256=vector_sha, selected_tensor_count=len(selected),
                              selected_singular_value_count=slots[-1][3], selected_tensors=selected)
    (tmp / MANIFEST_FILE).write_bytes(encode_manifest(manifest))
    pin = build_pin(tmp, files, repo_id=repo_id, revision=revision, progress=say)
    write_pin(pin, tmp / PIN_FILE)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)

    lineage_path = None
    if lineage_cache_dir is not None:
        record = LineageRecord(
            adapter=ref,
            base=BaseModel(path=str(ckpt.resolve()), files={p.name: file_sha256(p) for p in sorted(set(
                weight_map.values()))}, weights_sha256=factor_set.key,
                synthetic=bool(config.get("trinity_synthetic"))),
            vector=VectorSource(path=str(Path(vector_path).resolve()), sha256=vector_sha, length=int(vector.shape[0])),
            pin=PinRef(repo_id=pin.repo_id, revision=pin.revision, manifest_sha256=pin.manifest_sha256),
            bundle_dir=str(out.resolve()), dtype=dtype)
        lineage_path = write_lineage(lineage_cache_dir, record)
    return ExportResult(out, manifest, pin, ref, lineage_path, factor_set.from_cache,
                        tied_embedding if tied else None)
