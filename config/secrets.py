"""A string that never prints: API keys, passwords and tokens travel through settings as :class:`Secret`."""

from __future__ import annotations


class Secret:
    """Wraps a secret value; ``repr``/``str`` show ``'***'`` so it never lands in logs or traces.

    Example:
        >>> s = Secret("sk-live-123")
        >>> (str(s), s.get())
        ('***', 'sk-live-123')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The secret's value: pass it only to the client that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))
