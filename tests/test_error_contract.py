"""One error contract for everything that crosses the bus (issue 14, deliverable 7).

Every exception class in ``actors/*/errors.py`` derives from :class:`bus.errors.ContractError` and carries an
:class:`~schemas.wire.ErrorCode` and a ``retryable`` flag; raised by an endpoint handler, it reaches the caller
over a real nats-server as an :class:`~schemas.wire.ErrorReply` with the same code, flag, message and details.
"""

from __future__ import annotations

import importlib
import inspect
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from bus import rpc
from bus.errors import ContractError, Rejected, RemoteError, error_contract
from bus.service import ActorService, Endpoint, RequestContext
from bus.storage import StorageError
from schemas.wire import ErrorCode

ROOT = Path(__file__).resolve().parent.parent
ERROR_MODULES = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts)
                       for p in (ROOT / "actors").glob("*/errors.py"))

# The contract, class by class: a new error class must be added here with the code and flag it maps to.
# (PortError and its subclasses carry the code of the failed call; their class default is ``internal``.)
EXPECTED: dict[str, tuple[ErrorCode, bool]] = {
    "coordinator.CoordinatorError": (ErrorCode.INTERNAL, False),
    "coordinator.PortError": (ErrorCode.INTERNAL, False),
    "coordinator.RouteFailed": (ErrorCode.INTERNAL, False),
    "coordinator.RoleInjectFailed": (ErrorCode.INTERNAL, False),
    "coordinator.AgentCallFailed": (ErrorCode.INTERNAL, False),
    "coordinator.DuplicateRequestConflict": (ErrorCode.INVALID, False),
    "coordinator.CoordinatorConfigError": (ErrorCode.INVALID, False),
    "model_runtime.ModelRuntimeError": (ErrorCode.INTERNAL, False),
    "model_runtime.TranscriptTooShort": (ErrorCode.INVALID, False),
    "model_runtime.EmptyTranscript": (ErrorCode.INVALID, False),
    "model_runtime.ContextTooLong": (ErrorCode.TOO_LARGE, False),
    "model_runtime.HeadShapeMismatch": (ErrorCode.INVALID, False),
    "model_runtime.CheckpointError": (ErrorCode.UNAVAILABLE, False),
    "model_runtime.TokenizerNotFound": (ErrorCode.UNAVAILABLE, False),
    "model_runtime.Overloaded": (ErrorCode.OVERLOADED, True),
    "model_runtime.RuntimeClosed": (ErrorCode.DRAINING, True),
    "model_runtime.AdapterNotServed": (ErrorCode.NOT_FOUND, False),
    "model_runtime.AdapterNotLoaded": (ErrorCode.NOT_FOUND, False),
    "model_runtime.BaseAdapterPinned": (ErrorCode.INVALID, False),
    "model_runtime.AdapterVectorInvalid": (ErrorCode.INVALID, False),
    "model_runtime.AdapterBudgetExceeded": (ErrorCode.TOO_LARGE, True),
    "provider_agents.ProviderError": (ErrorCode.UPSTREAM, False),
    "provider_agents.ProviderTimeout": (ErrorCode.DEADLINE, True),
    "provider_agents.RateLimited": (ErrorCode.OVERLOADED, True),
    "provider_agents.ProviderServerError": (ErrorCode.UPSTREAM, True),
    "provider_agents.ProviderClientError": (ErrorCode.UPSTREAM, False),
    "provider_agents.ProviderAuthError": (ErrorCode.UPSTREAM, False),
    "provider_agents.MalformedProviderResponse": (ErrorCode.UPSTREAM, False),
    "provider_agents.ProviderConnectionError": (ErrorCode.UNAVAILABLE, True),
    "provider_agents.TruncatedResponse": (ErrorCode.UPSTREAM, True),
    "provider_agents.UnknownAgent": (ErrorCode.UNKNOWN_AGENT, False),
    "provider_agents.AgentOverloaded": (ErrorCode.OVERLOADED, True),
    "provider_agents.LocalModelError": (ErrorCode.UNAVAILABLE, False),
    "provider_agents.ProviderConfigError": (ErrorCode.INVALID, False),
    "role_injector.RoleInjectorError": (ErrorCode.INVALID, False),
    "role_injector.RolePackInvalid": (ErrorCode.INVALID, False),
    "role_injector.RolePackFileError": (ErrorCode.INVALID, False),
    "role_injector.UnknownRolePack": (ErrorCode.NOT_FOUND, False),
}

# Arguments by annotation, to build an instance of any error class without knowing it.
_SAMPLE: dict[str, Any] = {"str": "sample", "int": 3, "Path": Path("/tmp/pack.toml"), "list[str]": ["base"],
                           "tuple[int, ...]": (4, 8), "tuple[int, int]": (6, 8)}


def error_classes(module: str) -> dict[str, type[BaseException]]:
    """Every exception class defined in ``module`` (``actors.<actor>.errors``), by ``<actor>.<Class>``."""
    mod = importlib.import_module(module)
    actor = module.split(".")[1]
    return {f"{actor}.{name}": cls for name, cls in vars(mod).items()
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == module}


def sample(cls: type[BaseException]) -> tuple[BaseException, ErrorCode, bool]:
    """An instance of ``cls`` and the code and flag it must carry. A class taking a ``code`` argument (the
    coordinator's port errors) is built with ``deadline``, retryable, to show the instance's code wins."""
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.default is inspect.Parameter.empty]
    if params and params[0].name == "code":
        return cls(ErrorCode.DEADLINE, "runtime did not answer", retryable=True), ErrorCode.DEADLINE, True
    args = [_SAMPLE[str(p.annotation)] for p in params]
    err = cls(*args)
    return err, getattr(cls, "code"), getattr(cls, "retryable")  # noqa: B009  (class attributes, checked below)


def test_error_modules_are_found() -> None:
    assert ERROR_MODULES == ["actors.coordinator.errors", "actors.model_runtime.errors",
                             "actors.provider_agents.errors", "actors.role_injector.errors"]


@pytest.mark.parametrize("module", ERROR_MODULES)
def test_every_actor_error_derives_from_the_contract(module: str) -> None:
    found = error_classes(module)
    actor = module.split(".")[1]
    assert set(found) == {k for k in EXPECTED if k.startswith(f"{actor}.")}, \
        "an error class was added or removed: list it in EXPECTED with its code and retryable flag"
    for key, cls in found.items():
        assert issubclass(cls, ContractError), f"{key} must derive from bus.errors.ContractError"
        assert isinstance(cls.code, ErrorCode) and isinstance(cls.retryable, bool), key
        assert (cls.code, cls.retryable) == EXPECTED[key], key
        err, code, retryable = sample(cls)
        assert isinstance(err, ContractError)
        reply = err.to_reply()
        assert (reply.code, reply.retryable) == (code, retryable), key
        assert reply.message == err.message and reply.message, key
        assert error_contract(err) == reply, key  # the bus's one mapping agrees


def test_port_error_codes_are_error_codes() -> None:
    from actors.coordinator.errors import RouteFailed

    assert RouteFailed("overloaded", "busy", retryable=True).code is ErrorCode.OVERLOADED
    with pytest.raises(ValueError):
        RouteFailed("no_such_code", "a string that is not an ErrorCode is refused")


def test_bus_errors_with_a_code_are_contract_errors() -> None:
    assert issubclass(Rejected, ContractError) and issubclass(StorageError, ContractError)
    r = Rejected(ErrorCode.INVALID, "transcript is empty", details={"field": "transcript"})
    assert r.reply == r.to_reply()
    assert (r.reply.code, r.reply.retryable, r.reply.details) == (ErrorCode.INVALID, False, {"field": "transcript"})
    assert str(r) == "invalid: transcript is empty"
    assert Rejected.from_reply(r.reply).reply == r.reply  # a stored or received reply is passed on unchanged


class Raise(msgspec.Struct, frozen=True):
    """Which error class the test endpoint raises."""

    name: str


@pytest.mark.parametrize("module", ERROR_MODULES)
async def test_actor_errors_reach_the_caller_over_nats(nc: Client, module: str) -> None:
    """A handler raises each of the actor's errors as it is; the caller gets the same code, flag, message and
    details as a typed error reply from a real nats-server, and nothing else on the way maps it."""
    samples = {key: sample(cls) for key, cls in error_classes(module).items()}

    async def handler(req: Raise, ctx: RequestContext) -> None:
        raise samples[req.name][0]

    subject = f"test.contract.{uuid.uuid4().hex[:8]}"
    svc = ActorService(nc, name="contract-test", endpoints=[Endpoint("raise", subject, Raise, handler)])
    await svc.start()
    try:
        for key, (err, code, retryable) in samples.items():
            assert isinstance(err, ContractError)
            with pytest.raises(RemoteError) as got:
                await rpc.request(nc, subject, Raise(name=key), Raise, timeout=5.0)
            assert (got.value.code, got.value.retryable) == (code, retryable), key
            assert got.value.message == err.message, key
            assert got.value.reply.details == err.details(), key
        assert svc.counters["raise"].rejected == len(samples)
        assert svc.counters["raise"].crashed == 0
    finally:
        await svc.stop()
