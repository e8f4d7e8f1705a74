"""Secrets in settings: :class:`Secret` never prints its value, and the msgspec hooks that read and dump it.

API keys, passwords and tokens travel through settings as :class:`Secret`. ``repr``/``str`` give ``***``,
so settings can be logged; :meth:`Secret.reveal` (alias :meth:`Secret.get`) gives the value to the one
place that must send it.
"""

from __future__ import annotations

from typing import Any


class Secret:
    """A secret string that never prints: ``repr``/``str`` give ``***``; :meth:`reveal` gives the value.

    Example:
        >>> s = Secret("sk-abc"); (str(s), s.reveal())
        ('***', 'sk-abc')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value, for the one place that must send it (an HTTP header)."""
        return self._value

    def get(self) -> str:
        """Alias of :meth:`reveal` (the API of ``config.secrets.Secret``)."""
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


def secret_enc_hook(obj: Any) -> Any:
    """msgspec ``enc_hook``: encodes :class:`Secret` as ``"***"`` so dumped settings never carry keys."""
    if isinstance(obj, Secret):
        return "***"
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def secret_dec_hook(type_: type, obj: Any) -> Any:
    """msgspec ``dec_hook``: builds :class:`Secret` from a string when decoding settings."""
    if type_ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError(f"cannot decode {type_!r} from {type(obj).__name__}")
