"""An in-process router on the model runtime engine: checkpoint + head (or TRINITY vector with its SVF adapter).

Choices, in order:

* checkpoint: ``checkpoint`` (a Qwen3 folder: real weights or any synthetic one), else ``tiny`` (the cached
  tiny synthetic preset), else the runtime settings' checkpoint (default: the cached full-size synthetic
  Qwen3-0.6B-shaped checkpoint, built once);
* head: ``vector`` (a TRINITY vector ``.npy``/``.safetensors``: SVF offsets + head; the offsets adapt the
  backbone unless ``adapt`` is False), else ``head`` (a head file), else the settings' ``head_path``, else
  a seeded random head (synthetic).

Example::

    router = load_router(ModelRuntimeSettings(), vector="model_iter_60.npy", factor_cache_dir=cache)
    logits = router([Message("user", "What is 17 + 25?")])
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from actors.model_runtime.checkpoints import ensure_checkpoint, read_metadata, resolve_checkpoint
from actors.model_runtime.engine import RouterEngine
from actors.model_runtime.errors import ModelRuntimeError
from actors.model_runtime.head import RoutingHead
from config.model_runtime import ModelRuntimeSettings
from crucible.errors import CrucibleError
from crucible.registry.adapter import adapt_backbone
from crucible.router_vector import load_router_vector
from ops.gate.errors import RouterLoadError
from schemas.common import Message
from schemas.routing import RouteLogits, RouteRequest
from schemas.sakana import HeadSpec

Progress = Callable[[str], None]


@dataclass
class LoadedRouter:
    """A loaded engine and a description of what it is (for reports and snapshot ``source``)."""

    engine: RouterEngine
    source: dict[str, str]
    load_s: float
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __call__(self, messages: list[Message]) -> RouteLogits:
        """Route one transcript (no prefix cache: every call is a fresh forward pass)."""
        s = self.engine.settings
        req = RouteRequest(request_id=f"cli-{next(self._ids)}", turn=0, messages=messages, backend=s.backend,
                           adapter=s.adapter)
        return self.engine.route(req)


def _hidden_size(ckpt: Path) -> int:
    try:
        return int(json.loads((ckpt / "config.json").read_text())["hidden_size"])
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise RouterLoadError(f"{ckpt}: no readable config.json with hidden_size ({e}); point --checkpoint at a "
                              "Qwen3 checkpoint folder") from None


def load_router(settings: ModelRuntimeSettings, *, checkpoint: str | None = None, tiny: bool = False,
                vector: str | None = None, head: str | None = None, adapt: bool = True,
                factor_cache_dir: str | Path = "~/.cache/trinity-nats/svf-factors",
                progress: Progress | None = None) -> LoadedRouter:
    """Load the engine as described in the module docs (building a synthetic checkpoint when needed).

    Raises:
        RouterLoadError: a file is missing or does not fit the checkpoint.
    """
    say = progress or (lambda _m: None)
    start = time.perf_counter()
    s = settings.expanded()
    s = msgspec.structs.replace(s, cache_max_tokens=0)  # the gate routes each case afresh
    try:
        if checkpoint is not None:
            ckpt = Path(checkpoint).expanduser()
        elif tiny:
            say("using the tiny synthetic checkpoint (built once under the checkpoint cache)")
            ckpt = ensure_checkpoint("qwen3-tiny-synthetic", s.checkpoint_cache_dir, seed=s.checkpoint_seed)
        else:
            say(f"using the {s.checkpoint_preset} checkpoint (built once under {s.checkpoint_cache_dir}; the "
                "full-size one takes a few minutes the first time)")
            ckpt = resolve_checkpoint(s)
        hidden = _hidden_size(ckpt)
        spec = HeadSpec(cols=hidden)
        values = None
        if vector is not None:
            values = load_router_vector(vector)
            routing_head = RoutingHead.from_array(values, spec, source=str(vector))
            head_desc = f"vector {vector}"
        elif head is not None:
            routing_head = RoutingHead.load(head, spec)
            head_desc = f"head {head}"
        elif s.head_path:
            routing_head = RoutingHead.load(s.head_path, spec)
            head_desc = f"head {s.head_path}"
        else:
            routing_head = RoutingHead.random(spec, s.head_seed)
            head_desc = f"random head (seed {s.head_seed}, synthetic)"
        say(f"loading {ckpt}")
        engine = RouterEngine.load(s, checkpoint_dir=ckpt, head=routing_head)
        meta = read_metadata(ckpt)
        source = {"checkpoint": str(ckpt), "synthetic": str(bool(meta.get("synthetic", False))).lower(),
                  "head": head_desc, "dtype": s.dtype or "", "device": str(engine.device),
                  "routing_profile": s.routing_profile, "tied_embedding": s.tied_embedding or ""}
        if meta:
            source["checkpoint_preset"] = str(meta.get("preset", ""))
            source["checkpoint_seed"] = str(meta.get("seed", ""))
        if values is not None and adapt and values.shape[0] > spec.size:
            adaptation = adapt_backbone(engine.model, values, factor_cache_dir=Path(factor_cache_dir).expanduser(),
                                        progress=say, tied_embedding=s.tied_embedding or "embed-wins")
            source["adapter"] = adaptation.adapter_ref.digest
            source["adapter_skipped"] = ", ".join(sorted(adaptation.skipped)) or "none"
        else:
            source["adapter"] = "none (base weights)"
    except (ModelRuntimeError, CrucibleError, OSError, ValueError) as e:
        raise RouterLoadError(f"cannot load the router: {e}") from e
    return LoadedRouter(engine, source, time.perf_counter() - start)
