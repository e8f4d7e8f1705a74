"""Request/reply over NATS with deadlines, provenance headers and typed error replies.

Example:
    >>> result = await request(nc, subjects.coord_request(), req, CoordinationResult,
    ...                        timeout=30.0)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.codec import DEFAULT_MAX_BYTES, decode, encode
from bus.errors import MalformedPayload, NoResponders, RemoteError, RequestTimeout
from bus.provenance import Provenance
from schemas.wire import ErrorCode, ErrorReply

T = TypeVar("T")

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_KIND_HEADER = "Trinity-Error"


def error_headers(reply: ErrorReply) -> dict[str, str]:
    """Headers of a typed error reply (nats micro's error headers plus our error kind)."""
    return {ERROR_HEADER: reply.message[:512], ERROR_CODE_HEADER: str(reply.code.status),
            ERROR_KIND_HEADER: reply.code.value}


def error_from_msg(msg: Msg) -> ErrorReply | None:
    """The typed error a reply carries, or ``None`` when it is a normal reply."""
    return error_from_headers(msg.data, msg.headers)


def error_from_headers(data: bytes, headers: dict[str, str] | None) -> ErrorReply | None:
    """The typed error a message (a reply, or a stored job result) carries, or ``None`` when it is none."""
    headers = headers or {}
    if ERROR_CODE_HEADER not in headers and ERROR_KIND_HEADER not in headers:
        return None
    try:
        return decode(data, ErrorReply, max_bytes=DEFAULT_MAX_BYTES)
    except MalformedPayload:
        kind = headers.get(ERROR_KIND_HEADER, "")
        code = ErrorCode(kind) if kind in ErrorCode._value2member_map_ else ErrorCode.INTERNAL
        return ErrorReply(code=code, message=headers.get(ERROR_HEADER, "error without a description"))


async def request(nc: Client, subject: str, payload: msgspec.Struct, reply_type: type[T], *, timeout: float,
                  provenance: Provenance | None = None, headers: dict[str, str] | None = None,
                  max_reply_bytes: int = 16 * DEFAULT_MAX_BYTES) -> T:
    """Send ``payload`` to ``subject`` and decode the reply as ``reply_type``.

    Raises :class:`RemoteError` for a typed error reply, :class:`RequestTimeout` past ``timeout`` seconds,
    :class:`NoResponders` when nobody serves the subject, :class:`MalformedPayload` for a bad reply.
    With ``provenance``, the active OpenTelemetry span (when there is one) is sent as its ``traceparent``, so
    the handler's spans become its children.
    """
    hdrs = dict(provenance.with_current_trace().to_headers()) if provenance else {}
    if headers:
        hdrs.update(headers)
    try:
        msg = await nc.request(subject, encode(payload), timeout=timeout, headers=hdrs or None)
    except nats.errors.NoRespondersError:
        raise NoResponders(subject) from None
    except nats.errors.TimeoutError:
        raise RequestTimeout(subject, timeout) from None
    err = error_from_msg(msg)
    if err is not None:
        raise RemoteError(err, subject)
    return decode(msg.data, reply_type, max_bytes=max_reply_bytes, subject=subject)


async def publish(nc: Client, subject: str, payload: Any, *, provenance: Provenance | None = None,
                  headers: dict[str, str] | None = None) -> None:
    """Publish ``payload`` (a Struct) on ``subject`` with provenance headers (core NATS, fire and forget); the
    active OpenTelemetry span, when there is one, is the ``traceparent``."""
    hdrs = dict(provenance.with_current_trace().to_headers()) if provenance else {}
    if headers:
        hdrs.update(headers)
    await nc.publish(subject, encode(payload), headers=hdrs or None)
