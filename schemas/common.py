"""Small shared types: roles, messages, identifiers and the validation helpers built on them."""

from __future__ import annotations

import enum
import re
from typing import Annotated

import msgspec

from schemas.errors import require

#: Number of agents and roles in TRINITY's routing head.
NUM_AGENTS = 7
NUM_ROLES = 3
HIDDEN_SIZE = 1024
#: Upper bound on agents a head may route over (keeps RouteLogits small: no hidden vector fits).
MAX_AGENTS = 64

# Every pattern matches the whole string: ``^...\Z``, never ``$`` (which also matches before a final "\n",
# so "abc\n" would pass and end a subject early). msgspec's ``pattern`` uses ``re.search``, hence the anchors.
#: Regex source of a lowercase hex sha256 digest.
SHA256_HEX_PATTERN = r"^[0-9a-f]{64}\Z"
#: Regex source of an identifier that travels as one NATS subject token: no dots, spaces, wildcards or
#: control characters; 1-128 characters.
TOKEN_PATTERN = r"^[A-Za-z0-9_\-]{1,128}\Z"
SHA256_HEX = re.compile(SHA256_HEX_PATTERN)
#: Identifiers that travel in NATS subject tokens: no dots, spaces or wildcards.
TOKEN = re.compile(TOKEN_PATTERN)

#: A request id: one subject token (results and traces are stored under ``...<request_id>...`` subjects).
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=TOKEN_PATTERN)]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=SHA256_HEX_PATTERN)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]


class Role(enum.IntEnum):
    """TRINITY roles, valued by their index in the head's raw role order (Worker, Thinker, Verifier)."""

    WORKER = 0
    THINKER = 1
    VERIFIER = 2

    @property
    def label(self) -> str:
        """Capitalised name, as used in prompts and traces (``"Worker"``)."""
        return self.name.capitalize()

    @classmethod
    def parse(cls, text: str) -> Role:
        """Parse a role name case-insensitively (``"thinker"`` -> ``Role.THINKER``)."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}; expected one of worker, thinker, verifier") from None


#: The head's raw role order.
ROLE_ORDER: tuple[Role, ...] = (Role.WORKER, Role.THINKER, Role.VERIFIER)


class Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One transcript entry: ``role`` is ``user``, ``assistant`` or ``system``."""

    role: str
    content: str

    def __post_init__(self) -> None:
        require(self.role in ("user", "assistant", "system"), "role",
                f"must be one of user, assistant, system, not {self.role!r}")


def check_sha256(value: str, field: str) -> None:
    """Require a lowercase hex sha256 digest."""
    require(SHA256_HEX.fullmatch(value) is not None, field, f"must be 64 lowercase hex characters, got {value!r}")


def check_token(value: str, field: str) -> None:
    """Require a value usable as one NATS subject token."""
    require(TOKEN.fullmatch(value) is not None, field,
            f"must be 1-128 characters of A-Z a-z 0-9 _ - (a NATS subject token), got {value!r}")


def check_finite(values: list[float] | tuple[float, ...], field: str) -> None:
    """Require every value to be a finite float."""
    for i, v in enumerate(values):
        require(v == v and v not in (float("inf"), float("-inf")), f"{field}[{i}]", f"must be finite, got {v!r}")
