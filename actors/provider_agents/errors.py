"""Typed provider failures. Each kind maps to a :class:`schemas.wire.ErrorCode` and says whether retrying helps.

Example:
    >>> e = RateLimited("openai: 429 Too Many Requests", provider="openai", retry_after_s=2.0)
    >>> (e.code.value, e.retryable)
    ('overloaded', True)
"""

from __future__ import annotations

from bus.errors import ContractError
from schemas.wire import ErrorCode


class ProviderError(ContractError):
    """Base of every provider failure: ``code`` for the error reply, ``retryable`` for callers.

    ``attempts`` is how many HTTP attempts were made before giving up; ``status`` the last HTTP status;
    ``retry_after_s`` the server's ``Retry-After`` (429 and 5xx), already capped.
    """

    code = ErrorCode.UPSTREAM
    retryable = False

    def __init__(self, message: str, *, provider: str = "", attempts: int = 1, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.attempts = attempts
        self.status = status
        self.retry_after_s = retry_after_s

    def details(self) -> dict[str, str]:
        """Safe details for an error reply (no secrets: provider name, attempts, status)."""
        out = {"provider": self.provider, "attempts": str(self.attempts), "kind": type(self).__name__}
        if self.status is not None:
            out["status"] = str(self.status)
        return out


class ProviderTimeout(ProviderError):
    """The provider did not answer within the timeout (or the intent's deadline). Raise the timeout or retry."""

    code = ErrorCode.DEADLINE
    retryable = True


class RateLimited(ProviderError):
    """HTTP 429: the provider throttled us; wait ``retry_after_s`` (when given) or lower concurrency."""

    code = ErrorCode.OVERLOADED
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None, provider: str = "", attempts: int = 1,
                 status: int | None = 429) -> None:
        super().__init__(message, provider=provider, attempts=attempts, status=status, retry_after_s=retry_after_s)


class ProviderServerError(ProviderError):
    """HTTP 5xx from the provider: its side failed; retrying later may help."""

    code = ErrorCode.UPSTREAM
    retryable = True


class ProviderClientError(ProviderError):
    """HTTP 4xx (not 429): the request was refused (bad model name, bad parameters). Fix the request/config."""

    code = ErrorCode.UPSTREAM
    retryable = False


class ProviderAuthError(ProviderClientError):
    """HTTP 401/403: the API key is missing, wrong or lacks access. Check the provider's key in the settings."""


class MalformedProviderResponse(ProviderError):
    """The provider answered 2xx with a body that is not the expected JSON shape."""

    code = ErrorCode.UPSTREAM
    retryable = False


class ProviderConnectionError(ProviderError):
    """The provider could not be reached (refused, reset, DNS). Check ``base_url`` and that the server runs."""

    code = ErrorCode.UNAVAILABLE
    retryable = True


class TruncatedResponse(ProviderError):
    """The connection closed before the whole response body arrived (Content-Length not reached)."""

    code = ErrorCode.UPSTREAM
    retryable = True


class UnknownAgent(ProviderError):
    """No agent with this id is configured. Add it to the roster (``ProviderAgentsSettings.agents``)."""

    code = ErrorCode.UNKNOWN_AGENT
    retryable = False


class AgentOverloaded(ProviderError):
    """Too many calls are already waiting for this agent (``max_waiting``); retry later or raise the limit."""

    code = ErrorCode.OVERLOADED
    retryable = True


class LocalModelError(ProviderError):
    """The in-process local model could not be loaded or failed to generate."""

    code = ErrorCode.UNAVAILABLE
    retryable = False


class ProviderConfigError(ProviderError):
    """The provider settings are inconsistent (missing key, unknown kind). Fix the settings and restart."""

    code = ErrorCode.INVALID
    retryable = False


__all__ = [
    "AgentOverloaded",
    "LocalModelError",
    "MalformedProviderResponse",
    "ProviderAuthError",
    "ProviderClientError",
    "ProviderConfigError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderServerError",
    "ProviderTimeout",
    "RateLimited",
    "TruncatedResponse",
    "UnknownAgent",
]
