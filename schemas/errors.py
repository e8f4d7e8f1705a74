"""Errors raised when a contract's invariants do not hold.

Every invariant violation raises :class:`SchemaError` (a ``ValueError``), whose message starts with the
offending field, so msgspec turns it into a ``msgspec.ValidationError`` that names the field on decode.
"""

from __future__ import annotations


class SchemaError(ValueError):
    """A contract was built or decoded with a value that breaks one of its invariants.

    ``field`` is the dotted path of the offending field; the message says what was expected.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def require(condition: bool, field: str, problem: str) -> None:
    """Raise :class:`SchemaError` for ``field`` unless ``condition`` holds."""
    if not condition:
        raise SchemaError(field, problem)
