"""Health snapshots of a supervision tree, cheap to build and JSON-friendly.

>>> h = ChildHealth(name="db", state=ChildState.RUNNING, restart_type="permanent", restarts=2,
...                 last_error="ValueError('boom')", uptime_s=1.5)
>>> h.to_dict()["state"]
'running'
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ChildState(StrEnum):
    """Lifecycle state of one child as seen by its supervisor."""

    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class SupervisorState(StrEnum):
    """Lifecycle state of a supervisor."""

    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class ChildHealth:
    """One child: state, how often it was restarted, its last error (``repr``) and current uptime.

    ``nested`` holds the child's own tree when the child is a supervisor.
    """

    name: str
    state: ChildState
    restart_type: str
    restarts: int
    last_error: str | None
    uptime_s: float | None
    nested: SupervisorHealth | None = None

    @property
    def ok(self) -> bool:
        """True when the child is running (or done on purpose) and its nested tree, if any, is ok."""
        if self.state not in (ChildState.RUNNING, ChildState.STOPPED):
            return False
        return self.nested is None or self.nested.ok

    def to_dict(self) -> dict[str, object]:
        """Plain-data form (str/int/float/None/dict/list) for JSON encoders."""
        return {
            "name": self.name,
            "state": self.state.value,
            "restart_type": self.restart_type,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "uptime_s": self.uptime_s,
            "nested": None if self.nested is None else self.nested.to_dict(),
        }


@dataclass(frozen=True)
class SupervisorHealth:
    """A supervisor and, recursively, its children."""

    name: str
    state: SupervisorState
    strategy: str
    restarts_in_window: int
    uptime_s: float | None
    error: str | None
    children: tuple[ChildHealth, ...]

    @property
    def ok(self) -> bool:
        """True when the supervisor runs and every child is ok."""
        return self.state is SupervisorState.RUNNING and all(c.ok for c in self.children)

    def child(self, name: str) -> ChildHealth:
        """The snapshot of the child called ``name`` (``KeyError`` if there is none)."""
        for c in self.children:
            if c.name == name:
                return c
        raise KeyError(f"supervisor {self.name!r} has no child {name!r}")

    def to_dict(self) -> dict[str, object]:
        """Plain-data form (str/int/float/None/dict/list) for JSON encoders."""
        return {
            "name": self.name,
            "state": self.state.value,
            "strategy": self.strategy,
            "restarts_in_window": self.restarts_in_window,
            "uptime_s": self.uptime_s,
            "error": self.error,
            "ok": self.ok,
            "children": [c.to_dict() for c in self.children],
        }
