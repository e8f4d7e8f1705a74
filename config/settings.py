"""Typed settings for a whole node, loaded from defaults, a TOML file, the environment and CLI overrides.

This module (with the rest of ``config/``) is the only place that reads the environment. Everything else
receives a :class:`Settings` (or one of its sections) explicitly.

Precedence, lowest first: built-in defaults < TOML file (``--config`` or ``TRINITY_CONFIG``) < the
convenience variables below < ``TRINITY__SECTION__FIELD=value`` variables < CLI ``--set section.field=value``.
Sources merge FIELD BY FIELD: a higher source replaces only the fields it gives (tables merge key by key;
a list or scalar is replaced whole), so ``--set trace_sink.buffer_size=5000`` keeps the ``TRINITY_TRACE_*``
values and ``TRINITY_AGENTS_PRESET=paper`` survives a ``provider_agents.local.*`` override.
Values from the environment and ``--set`` are parsed as JSON when they parse (numbers, booleans, lists),
else taken as strings. The trace sink's redaction secrets are collected after the last source, from the
final ``nats``, ``provider_agents`` and ``registry`` sections, plus any listed in ``trace_sink.redaction``.

Convenience variables: ``NATS_URL`` (comma-separated servers), ``TRINITY_NATS_USER`` /
``TRINITY_NATS_PASSWORD`` / ``TRINITY_NATS_TOKEN``, provider keys (``OPENAI_API_KEY``,
``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``...; see :mod:`config.provider_agents`) and the trace sink's
``TRINITY_TRACE_*`` variables (see :mod:`config.trace_sink`), and ``TRINITY_TRACING`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_SERVICE_NAME`` for a process's own spans (see :mod:`config.tracing`).

Example:
    >>> s = load_settings(environ={"NATS_URL": "nats://a:4222,nats://b:4222"}, overrides=["node.node_id=n7"])
    >>> (s.nats.servers, s.node.node_id)
    (['nats://a:4222', 'nats://b:4222'], 'n7')
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from config.coordinator import CoordinatorSettings, RoleInjectorSettings
from config.fleet import FleetSettings
from config.gateway import GatewaySettings
from config.model_runtime import ModelRuntimeSettings
from config.nats import NatsSettings
from config.node import NodeSettings
from config.provider_agents import ProviderAgentsSettings, provider_agents_env_doc
from config.registry import RegistrySettings, registry_env_doc
from config.secrets import Secret, secret_dec_hook, secret_enc_hook
from config.trace_sink import TraceSinkSettings, trace_sink_env_doc
from config.tracing import TracingSettings, tracing_env_doc
from schemas.profiles import trained_profile

ENV_PREFIX = "TRINITY__"
SECTIONS: dict[str, type[msgspec.Struct]] = {
    "nats": NatsSettings,
    "node": NodeSettings,
    "coordinator": CoordinatorSettings,
    "role_injector": RoleInjectorSettings,
    "model_runtime": ModelRuntimeSettings,
    "provider_agents": ProviderAgentsSettings,
    "trace_sink": TraceSinkSettings,
    "registry": RegistrySettings,
    "fleet": FleetSettings,
    "gateway": GatewaySettings,
    "tracing": TracingSettings,
}


class SettingsError(ValueError):
    """Settings could not be loaded; the message names the source and the field."""


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """All settings of a node, one section per concern."""

    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    node: NodeSettings = msgspec.field(default_factory=NodeSettings)
    coordinator: CoordinatorSettings = msgspec.field(default_factory=CoordinatorSettings)
    role_injector: RoleInjectorSettings = msgspec.field(default_factory=RoleInjectorSettings)
    model_runtime: ModelRuntimeSettings = msgspec.field(default_factory=ModelRuntimeSettings)
    provider_agents: ProviderAgentsSettings = msgspec.field(default_factory=ProviderAgentsSettings)
    trace_sink: TraceSinkSettings = msgspec.field(default_factory=TraceSinkSettings)
    registry: RegistrySettings = msgspec.field(default_factory=RegistrySettings)
    fleet: FleetSettings = msgspec.field(default_factory=FleetSettings)
    gateway: GatewaySettings = msgspec.field(default_factory=GatewaySettings)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_path(doc: dict[str, Any], path: Sequence[str], value: Any, source: str) -> None:
    if not path or path[0] not in SECTIONS:
        raise SettingsError(f"{source}: unknown section {path[0] if path else ''!r}; sections are "
                            f"{', '.join(SECTIONS)}")
    node = doc
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SettingsError(f"{source}: {'.'.join(path)} goes through a non-table value")
        node = child
    node[path[-1]] = value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"config file {path} is not valid TOML: {e}") from None


def merge_docs(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` laid over ``base``, field by field: tables merge key by key (recursively); any other value of
    ``top`` (a scalar, a list) replaces ``base``'s. Neither argument is changed.

    Example:
        >>> merge_docs({"a": {"x": 1, "y": [1, 2]}, "b": 0}, {"a": {"y": [3]}})
        {'a': {'x': 1, 'y': [3]}, 'b': 0}
    """
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        out[key] = merge_docs(below, value) if isinstance(value, Mapping) and isinstance(below, Mapping) else value
    return out


def _convenience_doc(env: Mapping[str, str]) -> dict[str, Any]:
    """The partial document of the convenience variables (only those set contribute)."""
    doc: dict[str, Any] = {}
    if url := env.get("NATS_URL"):
        _set_path(doc, ["nats", "servers"], [u.strip() for u in url.split(",") if u.strip()], "NATS_URL")
    for var, field in (("TRINITY_NATS_USER", "user"), ("TRINITY_NATS_PASSWORD", "password"),
                       ("TRINITY_NATS_TOKEN", "token"), ("TRINITY_NATS_CREDS", "creds_file"),
                       ("TRINITY_NATS_NKEYS_SEED", "nkeys_seed")):
        if value := env.get(var):
            _set_path(doc, ["nats", field], value, var)
    try:
        for name, section in (("provider_agents", provider_agents_env_doc(env)),
                              ("trace_sink", trace_sink_env_doc(env)), ("registry", registry_env_doc(env)),
                              ("tracing", tracing_env_doc(env))):
            if section:
                doc[name] = section
    except ValueError as e:
        raise SettingsError(f"environment: {e}") from None
    return doc


def load_settings(*, environ: Mapping[str, str] | None = None, config_file: str | Path | None = None,
                  overrides: Sequence[str] = ()) -> Settings:
    """Load settings; ``environ`` defaults to the process environment (the only read of it).

    Each source gives a partial document; they are merged field by field (:func:`merge_docs`), lowest first:
    defaults < TOML file < convenience variables < ``TRINITY__`` variables < ``overrides`` (``--set``).
    So an override of one field keeps every other field of its section, whichever source gave it. The trace
    sink's redaction secrets are collected from the final settings (see :func:`with_redaction_secrets`).

    Raises :class:`SettingsError` naming the file, variable or override and the bad field.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    layers: list[tuple[str, dict[str, Any]]] = []
    path = config_file or env.get("TRINITY_CONFIG")
    if path:
        toml = _read_toml(Path(path).expanduser())
        for key in toml:
            if key not in SECTIONS:
                raise SettingsError(f"config file {path}: unknown section [{key}]; sections are {', '.join(SECTIONS)}")
        layers.append((f"config file {path}", toml))
    layers.append(("environment", _convenience_doc(env)))
    prefixed: dict[str, Any] = {}
    for key, value in sorted(env.items()):
        if key.startswith(ENV_PREFIX):
            _set_path(prefixed, key[len(ENV_PREFIX):].lower().split("__"), _parse_value(value), key)
    layers.append((f"{ENV_PREFIX}* variables", prefixed))
    cli: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise SettingsError(f"--set {item!r}: expected section.field=value")
        dotted, value = item.split("=", 1)
        _set_path(cli, dotted.strip().split("."), _parse_value(value), f"--set {dotted}")
    layers.append(("--set", cli))
    doc: dict[str, Any] = {}
    sources: dict[str, list[str]] = {}
    for source, layer in layers:
        for name in layer:
            sources.setdefault(name, []).append(source)
        doc = merge_docs(doc, layer)
    return with_redaction_secrets(_build(profile_follows_head(doc), sources))


def profile_follows_head(doc: dict[str, Any]) -> dict[str, Any]:
    """A released vector given as ``model_runtime.head_path`` (``sakana_model_iter_60.npy``) routes under the
    profile it was trained under (:data:`schemas.profiles.TRAINED_UNDER`): ``routing_profile`` is filled in for
    the model runtime and the coordinator where no source set it. A profile set for the runtime is kept (and
    the coordinator then keeps its own setting too)."""
    rt = doc.get("model_runtime") or {}
    trained = trained_profile(rt.get("head_path")) if isinstance(rt, dict) else None
    if trained is None or "routing_profile" in rt:
        return doc
    out = dict(doc)
    for section in ("model_runtime", "coordinator"):
        fields = dict(out.get(section) or {})
        fields.setdefault("routing_profile", trained)
        out[section] = fields
    return out


def _build(doc: dict[str, Any], sources: Mapping[str, list[str]]) -> Settings:
    sections: dict[str, Any] = {}
    for name, type_ in SECTIONS.items():
        raw = doc.get(name)
        if raw is None:
            continue
        try:
            sections[name] = msgspec.convert(raw, type_, strict=False, dec_hook=secret_dec_hook)
        except msgspec.ValidationError as e:
            raise SettingsError(f"settings section [{name}] (from {', '.join(sources.get(name, []))}): {e}") from None
    return Settings(**sections)


def with_redaction_secrets(settings: Settings) -> Settings:
    """``settings`` with every configured secret (NATS password/token, provider keys and secret headers, the
    registry token) added to the trace sink's ``redaction.secrets``, after those listed there.

    Raises :class:`SettingsError` for a configured secret too short to redact safely (under 6 characters).
    """
    redaction = settings.trace_sink.redaction
    values = [s.reveal() for s in redaction.secrets]
    found = [("nats", v) for v in settings.nats.secrets()]
    found += [("provider_agents", v) for v in settings.provider_agents.secrets()]
    if settings.registry.token:
        found.append(("registry.token", settings.registry.token.reveal()))
    for source, value in found:
        if value in values:
            continue
        if len(value) < 6 or value in redaction.marker:
            raise SettingsError(f"{source}: a secret shorter than 6 characters (or part of the redaction marker) "
                                "cannot be redacted from traces without mangling ordinary text; use a longer one")
        values.append(value)
    if len(values) == len(redaction.secrets):
        return settings
    redaction = msgspec.structs.replace(redaction, secrets=[Secret(v) for v in values])
    return msgspec.structs.replace(settings, trace_sink=msgspec.structs.replace(settings.trace_sink,
                                                                                 redaction=redaction))


def redacted(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret shown as ``'***'`` (safe to print or log)."""
    data: dict[str, Any] = msgspec.to_builtins(settings, enc_hook=secret_enc_hook)
    data["nats"] = settings.nats.redacted()
    return data
