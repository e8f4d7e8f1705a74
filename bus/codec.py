"""msgspec codec for bus payloads: JSON on the wire, strict typed decoding, bounded size.

Encoders and decoders are cached per type (msgspec's fast path).

Example:
    >>> from schemas import Message
    >>> decode(encode(Message(role="user", content="hi")), Message, max_bytes=1024)
    Message(role='user', content='hi')
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import msgspec

from bus.errors import MalformedPayload, PayloadTooLarge

T = TypeVar("T")

#: Default per-message limit for decoded payloads (NATS' own max_payload is larger).
DEFAULT_MAX_BYTES = 1_048_576

_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    """Encode a Struct (or any msgspec-encodable value) as JSON bytes."""
    return _encoder.encode(value)


@functools.lru_cache(maxsize=256)
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decode(data: bytes, type_: type[T], *, max_bytes: int = DEFAULT_MAX_BYTES, subject: str = "") -> T:
    """Decode ``data`` strictly as ``type_``.

    Raises :class:`PayloadTooLarge` before parsing anything over ``max_bytes``, and
    :class:`MalformedPayload` (naming the field) for anything else that keeps ``data`` from decoding: bad
    JSON, invalid UTF-8 inside a string, nesting too deep, wrong types or broken invariants. No other
    exception leaves this function for any input bytes.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(len(data), max_bytes, subject)
    name = getattr(type_, "__name__", str(type_))
    try:
        result: T = _decoder(type_).decode(data)  # type: ignore[arg-type]
    except msgspec.ValidationError as e:
        raise MalformedPayload(name, str(e)) from None
    except msgspec.DecodeError as e:
        raise MalformedPayload(name, f"not valid JSON ({e})") from None
    except UnicodeDecodeError as e:  # msgspec checks UTF-8 while it decodes a string
        raise MalformedPayload(name, f"not valid UTF-8 ({e.reason}); send JSON encoded as UTF-8") from None
    except RecursionError:
        raise MalformedPayload(name, "nested too deeply to decode") from None
    except Exception as e:  # an invariant that raised something else: still the payload's fault
        raise MalformedPayload(name, f"rejected while decoding ({type(e).__name__}: {e})") from e
    return result


class _RequestIdOnly(msgspec.Struct):
    request_id: Any = None


def peek_request_id(data: bytes) -> str | None:
    """The ``request_id`` string of a JSON object that need not decode as any contract, or ``None`` when
    ``data`` is not such an object or its ``request_id`` is missing or not a string. Never raises."""
    try:
        rid = _decoder(_RequestIdOnly).decode(data).request_id
    except Exception:  # noqa: BLE001 - unreadable in any way means "no id"
        return None
    return rid if isinstance(rid, str) else None
