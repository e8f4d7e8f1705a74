"""Supervised asyncio actors: an Erlang/OTP-style supervision tree.

>>> import asyncio
>>> async def worker(ctx: ChildContext) -> None:
...     await ctx.wait_draining()              # a real child would process work until draining
>>> async def main() -> str:
...     async with Supervisor("demo", [ChildSpec("worker", worker)]) as sup:
...         state = sup.health().child("worker").state
...     return state.value
>>> asyncio.run(main())
'running'

Modules: :mod:`~supervisors.spec` (ChildSpec, RestartType), :mod:`~supervisors.strategy` (Strategy,
Intensity), :mod:`~supervisors.backoff` (Backoff), :mod:`~supervisors.supervisor` (Supervisor),
:mod:`~supervisors.health` (snapshots), :mod:`~supervisors.signals` (run_until_signal),
:mod:`~supervisors.errors`.
"""

from __future__ import annotations

from supervisors.backoff import NO_BACKOFF, Backoff
from supervisors.context import ChildContext
from supervisors.errors import (
    ChildCancelledError,
    ChildFailure,
    ChildHangError,
    ChildSpecError,
    ChildUnhealthyError,
    RestartIntensityExceeded,
    SupervisorError,
    SupervisorStateError,
)
from supervisors.health import ChildHealth, ChildState, SupervisorHealth, SupervisorState
from supervisors.signals import run_until_signal
from supervisors.spec import ChildFn, ChildSpec, RestartType
from supervisors.strategy import Intensity, RestartWindow, Strategy
from supervisors.supervisor import Supervisor

__all__ = [
    "NO_BACKOFF",
    "Backoff",
    "ChildCancelledError",
    "ChildContext",
    "ChildFailure",
    "ChildFn",
    "ChildHangError",
    "ChildHealth",
    "ChildSpec",
    "ChildSpecError",
    "ChildState",
    "ChildUnhealthyError",
    "Intensity",
    "RestartIntensityExceeded",
    "RestartType",
    "RestartWindow",
    "Strategy",
    "Supervisor",
    "SupervisorError",
    "SupervisorHealth",
    "SupervisorState",
    "SupervisorStateError",
    "run_until_signal",
]
