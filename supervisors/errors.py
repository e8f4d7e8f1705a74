"""Errors raised by the supervision tree.

Every failure kind has its own class so callers can react precisely::

    try:
        await sup.wait()
    except RestartIntensityExceeded as exc:
        log.error("gave up on %s after %d restarts", exc.child, exc.restarts)
"""

from __future__ import annotations


class SupervisorError(Exception):
    """Base class of every error defined by :mod:`supervisors`."""


class ChildSpecError(SupervisorError, ValueError):
    """A :class:`~supervisors.spec.ChildSpec` or supervisor argument is invalid (bad timeout, duplicate name)."""


class SupervisorStateError(SupervisorError, RuntimeError):
    """A lifecycle method was called in the wrong state (e.g. ``wait()`` before ``start()``)."""


class ChildFailure(SupervisorError):
    """A failure the supervisor itself detected in a child (as opposed to an exception the child raised)."""

    def __init__(self, message: str, *, supervisor: str, child: str) -> None:
        super().__init__(message)
        self.supervisor = supervisor
        self.child = child


class ChildHangError(ChildFailure):
    """A child stopped heartbeating for longer than its ``liveness_timeout``; it was cancelled."""

    def __init__(self, *, supervisor: str, child: str, liveness_timeout: float, silent_for: float) -> None:
        super().__init__(
            f"child {child!r} of supervisor {supervisor!r} sent no heartbeat for {silent_for:.3f} s "
            f"(liveness_timeout={liveness_timeout} s); it was cancelled. Call ctx.heartbeat() more often "
            "than liveness_timeout, or raise liveness_timeout in its ChildSpec",
            supervisor=supervisor,
            child=child,
        )
        self.liveness_timeout = liveness_timeout
        self.silent_for = silent_for


class ChildUnhealthyError(ChildFailure):
    """A child's ``health_check`` returned false (or raised); the child was cancelled."""

    def __init__(self, *, supervisor: str, child: str, detail: str) -> None:
        super().__init__(
            f"health check of child {child!r} of supervisor {supervisor!r} failed ({detail}); it was "
            "cancelled. Fix the condition the check reports or relax the check",
            supervisor=supervisor,
            child=child,
        )
        self.detail = detail


class ChildCancelledError(ChildFailure):
    """A child's task was cancelled by someone other than its supervisor; treated as a crash."""

    def __init__(self, *, supervisor: str, child: str) -> None:
        super().__init__(
            f"child {child!r} of supervisor {supervisor!r} was cancelled from outside its supervisor; "
            "stop children through Supervisor.stop() instead of cancelling their tasks",
            supervisor=supervisor,
            child=child,
        )


class RestartIntensityExceeded(SupervisorError):
    """More than ``max_restarts`` restarts happened within ``period`` seconds; the supervisor gave up.

    The supervisor stopped all its children and failed; a parent supervisor treats this like a child crash.
    ``__cause__`` holds the error of the crash that tipped the balance.
    """

    def __init__(self, *, supervisor: str, child: str, max_restarts: int, period: float, last_error: str) -> None:
        super().__init__(
            f"supervisor {supervisor!r} exceeded its restart intensity: more than {max_restarts} restarts "
            f"within {period} s (last crash: child {child!r}: {last_error}). Fix the crashing child or "
            "raise Intensity(max_restarts=..., period=...)"
        )
        self.supervisor = supervisor
        self.child = child
        self.max_restarts = max_restarts
        self.restarts = max_restarts + 1
        self.period = period
        self.last_error = last_error
