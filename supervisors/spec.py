"""Child specifications.

>>> async def idler(ctx: ChildContext) -> None:
...     await ctx.wait_draining()
>>> spec = ChildSpec("idler", idler, restart=RestartType.TRANSIENT, liveness_timeout=5.0)
>>> spec.restart.value
'transient'
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from supervisors.context import ChildContext
from supervisors.errors import ChildSpecError
from supervisors.health import SupervisorHealth

ChildFn = Callable[[ChildContext], Awaitable[object]]
"""A child: an async callable that runs until it returns (normal exit) or raises (crash)."""


class RestartType(StrEnum):
    """When a child that ended gets restarted.

    * ``PERMANENT``: always, even after a normal return.
    * ``TRANSIENT``: only after a crash (exception, hang, failed health check, outside cancellation).
    * ``TEMPORARY``: never; siblings are not affected when it ends.
    """

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


def _check_timeout(field_name: str, value: float | None, *, allow_none: bool, allow_zero: bool) -> None:
    if value is None:
        if not allow_none:
            raise ChildSpecError(f"ChildSpec.{field_name} must be a number of seconds, not None")
        return
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ChildSpecError(f"ChildSpec.{field_name} must be a finite number of seconds {bound}, got {value}")


@dataclass(frozen=True)
class ChildSpec:
    """How to run and supervise one child.

    * ``run``: ``async def run(ctx: ChildContext)``; called anew for every (re)start.
    * ``shutdown_timeout``: seconds a graceful stop waits after setting ``ctx.draining`` before cancelling;
      ``0`` cancels at once, ``None`` waits forever (use for nested supervisors).
    * ``liveness_timeout``: if set, the child must call ``ctx.heartbeat()`` at least this often or it is
      cancelled and handled as a crash (:class:`~supervisors.errors.ChildHangError`).
    * ``health_check``: optional sync predicate polled every ``health_interval`` seconds while the child
      runs; false (or an exception) cancels the child as a crash
      (:class:`~supervisors.errors.ChildUnhealthyError`).
    * ``nested_health``: snapshot provider of a nested supervisor (set by ``Supervisor.as_child``).
    """

    name: str
    run: ChildFn
    restart: RestartType = RestartType.PERMANENT
    shutdown_timeout: float | None = 5.0
    liveness_timeout: float | None = None
    health_check: Callable[[], bool] | None = None
    health_interval: float = 1.0
    nested_health: Callable[[], SupervisorHealth] | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ChildSpecError(f"ChildSpec.name must be non-empty and contain no '/', got {self.name!r}")
        if not callable(self.run):
            raise ChildSpecError(f"ChildSpec.run of {self.name!r} must be an async callable")
        _check_timeout("shutdown_timeout", self.shutdown_timeout, allow_none=True, allow_zero=True)
        _check_timeout("liveness_timeout", self.liveness_timeout, allow_none=True, allow_zero=False)
        _check_timeout("health_interval", self.health_interval, allow_none=False, allow_zero=False)
