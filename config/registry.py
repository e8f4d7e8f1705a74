"""Settings of the model registry (artifact fetch, verification and cache).

A frozen msgspec Struct with defaults; the token is a :class:`config.secrets.Secret` so it never prints.
Nothing here reads the environment: :func:`registry_env_doc` takes the mapping it reads
(``config.settings`` passes ``os.environ``).

Example:
    >>> s = registry_settings_from_env({"HF_TOKEN": "hf_abc", "HF_HUB_OFFLINE": "1"})
    >>> (s.token, s.offline, s.endpoint)
    (***, True, 'https://huggingface.co')
"""

from __future__ import annotations

import os.path
from collections.abc import Mapping
from typing import Any

import msgspec

from config.secrets import Secret

DEFAULT_ENDPOINT = "https://huggingface.co"


class RegistrySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where artifacts come from and where verified copies are kept.

    Attributes:
        endpoint: Hugging Face Hub endpoint (or a compatible mirror) used by ``huggingface_hub``.
        token: read token sent to the endpoint (``None``: anonymous; never the library's stored token).
        cache_dir: root of the artifact cache: verified files under ``artifacts/``, downloads in progress
            under ``staging/``, lineage records under ``lineage/``.
        offline: serve only verified cached files; never contact the endpoint.
        anchors_dir: folder of the project's anchor data (pin, eval cases, logits snapshot); ``None`` uses
            ``../shared/anchors`` beside the repository.
        etag_timeout_s: seconds to wait for the Hub's metadata (HEAD) reply.
    """

    endpoint: str = DEFAULT_ENDPOINT
    token: Secret | None = None
    cache_dir: str = "~/.cache/trinity-nats/registry"
    offline: bool = False
    anchors_dir: str | None = None
    etag_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint: must be an http(s) URL, got {self.endpoint!r}")
        if self.etag_timeout_s <= 0:
            raise ValueError(f"etag_timeout_s: must be positive, got {self.etag_timeout_s}")

    def expanded(self) -> RegistrySettings:
        """A copy with ``~`` expanded in the path settings."""
        anchors = None if self.anchors_dir is None else os.path.expanduser(self.anchors_dir)
        return msgspec.structs.replace(self, cache_dir=os.path.expanduser(self.cache_dir), anchors_dir=anchors)


def registry_dec_hook(type_: type, obj: Any) -> Any:
    """msgspec ``dec_hook`` building :class:`Secret` from a string (for TOML/``--set`` values)."""
    if type_ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError(f"cannot decode {type_!r} from {type(obj).__name__}")


def registry_enc_hook(obj: Any) -> Any:
    """msgspec ``enc_hook`` writing :class:`Secret` as ``"***"``."""
    if isinstance(obj, Secret):
        return "***"
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def registry_env_doc(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``[registry]`` fields ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` give, as a partial document
    (only the variables that are set; the token as a plain string).

    Example:
        >>> registry_env_doc({"HF_HUB_OFFLINE": "1"})
        {'offline': True}
    """
    doc: dict[str, Any] = {}
    if endpoint := env.get("HF_ENDPOINT"):
        doc["endpoint"] = endpoint.rstrip("/")
    if token := env.get("HF_TOKEN"):
        doc["token"] = token
    if (offline := env.get("HF_HUB_OFFLINE")) is not None:
        doc["offline"] = offline.strip().lower() in ("1", "true", "yes", "on")
    return doc


def registry_settings_from_env(env: Mapping[str, str], base: RegistrySettings | None = None) -> RegistrySettings:
    """``base`` (default: defaults) updated from :func:`registry_env_doc` of ``env``."""
    s = base or RegistrySettings()
    changes = registry_env_doc(env)
    if "token" in changes:
        changes["token"] = Secret(changes["token"])
    return msgspec.structs.replace(s, **changes) if changes else s
