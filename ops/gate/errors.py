"""Errors of the gate (fixtures and router loading); a failed gate is a report, not an exception."""

from __future__ import annotations


class GateError(Exception):
    """Base class of gate errors."""


class FixtureError(GateError):
    """A cases or snapshot file is missing, malformed, or the two do not describe the same cases."""


class RouterLoadError(GateError):
    """The router (checkpoint, head or vector) cannot be loaded as asked."""
